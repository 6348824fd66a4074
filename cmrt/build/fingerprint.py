"""The identity of a local model folder, for the build key: what decides whether a build is reused."""
from __future__ import annotations

import hashlib
from pathlib import Path

CONTENT_HASH_LIMIT = 64 << 20


def folder_fingerprint(folder: Path) -> str:
    """Identity of a local model folder: the contents of configs and of weights up to 64 MiB,
    and the size and mtime of bigger weight files.

    Hashing gigabytes of weights on every `cmrt build` would make the cache check slow; any
    re-save of a big checkpoint changes its size or modification time, which is what we detect.
    Small models (the shipped ones) are identified by content, so a fresh clone reuses nothing stale.
    """
    h = hashlib.sha256()
    for p in sorted(q for sub in ("unet", "scheduler") for q in (folder / sub).glob("*") if q.is_file()):
        rel = p.relative_to(folder).as_posix()
        h.update(rel.encode())
        st = p.stat()
        if p.suffix == ".json" or st.st_size <= CONTENT_HASH_LIMIT:
            h.update(hashlib.sha256(p.read_bytes()).digest())
        else:
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return "sha256:" + h.hexdigest()

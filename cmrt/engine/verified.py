"""The record of verified files: a folder is hashed once per machine, not once per process, as git's index does.

Why: verifying an engine folder reads every byte of it (ImageNet-64 with its Winograd filters:
2.9 GB), and every new process (a replica, a worker, a CLI call) would read it all again. The
record remembers, per file, the stat identity the file had while its digest was computed
(device, inode, size, mtime_ns, ctime_ns) and that digest; a later verification in any
process hashes only the files whose identity differs:

- any write to a file moves its ctime, which user space cannot set back, so an in-place edit
  is seen even when it restores the size and the mtime; a copy, or a file renamed over it,
  has another inode;
- the hashing side (`cmrt.engine.manifest`) hands over an identity only when it held still
  while the file was read and when the file's ctime was at least `RACY_SECONDS` older than
  the start of the hash (an edit in the same clock tick as the hash would keep the ctime);
- an entry vouches for one digest of one algorithm, and counts only where it equals the
  digest the manifest (or the graph-cache entry's record) asks for: an entry of another file,
  another build or another algorithm makes the file be hashed, never pass;
- a record that is missing, unreadable, malformed or of another folder is ignored (every
  file is hashed), and rewritten after the next verification that passes.

Where: `cache_root() / "verified"`, one JSON file per folder, named by a digest of its real
path (BLAKE2s, 128 bits), so that a folder moved elsewhere starts afresh. Written atomically,
by `cmrt build` for the files it has just hashed (`cmrt.engine.manifest.seed_verified`), and
by a verification that passed whole.

Trust: the record is as trusted as the user's cache directory and cmrt's installed code.
Whoever can write it can forge an entry for a changed file, but could as well replace cmrt
or the ONNX Runtime graphs cached beside it; it guards against damage, edits and copied or
crafted folders, not against someone who can write the user's own files. It relies on the
filesystem reporting a file's ctime as the kernel sets it, as local filesystems do.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
from pathlib import Path
from typing import Any

from .atomic import write_json_atomic
from .paths import cache_root

logger = logging.getLogger(__name__)

__all__ = ["ALGORITHMS", "Identity", "VerifiedRecord", "identity", "record_dir"]

RECORD_FORMAT = 1
MAX_RECORD_BYTES = 1 << 20  # a record holds one short entry per file: a few kB
ALGORITHMS = ("sha256", "blake3")
_HEX64 = re.compile(r"[0-9a-f]{64}")

Identity = tuple[int, int, int, int, int]


def identity(st: os.stat_result) -> Identity:
    """What a write, a copy or a replacement of a file changes: (device, inode, size, mtime_ns, ctime_ns)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def record_dir() -> Path:
    return cache_root() / "verified"


def _entry(value: Any) -> tuple[Identity, dict[str, str]] | None:
    """A record entry as (identity, digests), or None where it is not exactly what `save` writes."""
    if not isinstance(value, dict) or set(value) - {"identity", *ALGORITHMS} or "identity" not in value:
        return None
    ident = value["identity"]
    if not (isinstance(ident, list) and len(ident) == 5
            and all(type(v) is int and 0 <= v < 1 << 64 for v in ident)):  # noqa: E721 - bool is not a stat field
        return None
    digests = {k: v for k, v in value.items() if k != "identity"}
    if not digests or not all(isinstance(v, str) and _HEX64.fullmatch(v) for v in digests.values()):
        return None
    return tuple(ident), digests


class VerifiedRecord:
    """The record of one folder's verified files: read once when made, then asked per file (`vouches`)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = os.path.realpath(folder)
        name = hashlib.blake2s(self.folder.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()
        self.path = record_dir() / f"{name}.json"
        self.entries = self._read()

    def _read(self) -> dict[str, tuple[Identity, dict[str, str]]]:
        """The record's entries; empty (with a debug line) for anything but a well-formed record of this folder."""
        try:
            # O_NONBLOCK: a FIFO planted at the record's name must not hang the load
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return {}
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ValueError("not a regular file")
            with os.fdopen(fd, "rb", closefd=False) as f:
                raw = f.read(MAX_RECORD_BYTES + 1)
            if len(raw) > MAX_RECORD_BYTES:
                raise ValueError("too big")
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT or data.get("folder") != self.folder:
                raise ValueError("of another format or folder")
            files = data.get("files")
            if not isinstance(files, dict):
                raise ValueError("no files")
            entries = {name: _entry(value) for name, value in files.items()}
            if not all(isinstance(n, str) for n in entries) or None in entries.values():
                raise ValueError("a malformed entry")
            return entries
        except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
            logger.debug("ignoring the record of verified files %s (%s): every file is hashed", self.path, e)
            return {}
        finally:
            os.close(fd)

    def vouches(self, name: str, ident: Identity, algorithm: str, digest: str) -> bool:
        """Whether the record says that `name`, with exactly this identity, has `digest` by `algorithm`."""
        entry = self.entries.get(name)
        return entry is not None and entry[0] == ident and entry[1].get(algorithm) == digest

    def save(self, verified: dict[str, tuple[Identity, dict[str, str]]]) -> bool:
        """Make `verified` (name -> (identity, digests) of files that have just passed) the record.

        Written only when it differs from what was read. A failure to write (read-only or full
        cache) is logged and ignored: the record only saves time. Returns whether it wrote.
        """
        if verified == self.entries:
            return False
        data = {"format": RECORD_FORMAT, "folder": self.folder,
                "files": {name: {"identity": list(ident), **digests} for name, (ident, digests) in sorted(verified.items())}}
        try:
            write_json_atomic(self.path, data)
        except OSError as e:
            logger.info("could not write the record of verified files %s (%s)", self.path, e)
            return False
        self.entries = dict(verified)
        prune_records(keep=self.path)
        return True


MAX_PRUNED = 256  # records looked at per write: a bound on what a write costs


def prune_records(keep: Path) -> None:
    """Remove records whose folder no longer exists (temporary folders, removed builds), at most
    `MAX_PRUNED` looked at, so that the record directory does not grow with every folder ever verified."""
    try:
        names = sorted(os.listdir(record_dir()))[:MAX_PRUNED]
    except OSError:
        return
    for name in names:
        path = record_dir() / name
        if path == keep or not name.endswith(".json"):
            continue
        try:
            with open(path, "rb") as f:
                folder = json.loads(f.read(MAX_RECORD_BYTES).decode("utf-8")).get("folder")
        except (OSError, ValueError, UnicodeDecodeError, AttributeError):
            folder = None
        if not isinstance(folder, str) or not os.path.isdir(folder):
            try:
                path.unlink()
            except OSError:
                pass

"""ONNX Runtime's optimized CPU graph, cached per graph, ONNX Runtime version, CPU and session options.

Why: most of an ONNX Runtime CPU session's creation is graph optimization (NCHWc layouts,
constant folding, fusions), which gives the same graph every time for the same exported graph,
ONNX Runtime version, CPU features and session options. ONNX Runtime can save that graph; opened
with optimizations off it starts several times faster, and its weights, which ONNX Runtime
writes page-aligned into the entry's data file, are memory-mapped instead of copied into the
session (docs/benchmarks.md has the figures).

The cache lives under `cmrt.engine.paths.cache_root() / "onnxruntime"`, one folder per key.
An entry is never trusted:
- the key covers the SHA-256 of every file the graph reads (from the engine folder's
  manifest, itself verified before the first image), the ONNX Runtime version, the CPU's
  features and every session option that shapes the graph, so any change makes a new entry;
- the entry's record gives the size and digests (SHA-256, and BLAKE3 where installed) of its
  files, written with them; sizes are checked before it is opened and the hashes in the
  background, joined (`Entry.check`) before the first image, except for the files whose stat
  identity the record of verified files (`cmrt.engine.verified`) vouches for, as for the
  engine folder's files. An entry that fails is deleted and the session reopened from the
  exported graph;
- it is written in a staging folder renamed into place whole (`cmrt.engine.atomic.staging_dir`),
  so a crash or a concurrent writer never leaves half an entry.

Every rebuilt folder, new ONNX Runtime or changed option makes a new entry (ImageNet-64's is
0.8 GB), so the cache is kept to a size: after each write the least recently used entries go
until the rest fit in `$CMRT_GRAPH_CACHE_MAX_GB` (default 16; a hit marks an entry used). The
entry just written always stays. A process that still has a removed entry open keeps its mapping
(Linux frees the file when the last mapping goes); one that finds it half-removed rebuilds it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...engine.atomic import staging_dir, write_json_atomic
from ...engine.manifest import Verification, file_digests
from ...engine.paths import cache_root
from ...engine.verified import VerifiedRecord

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when what an entry holds or how it is opened changes
RECORD_NAME = "entry.json"
GRAPH_NAME = "optimized.onnx"
DATA_NAME = "optimized.onnx.data"
# Session config keys that make ONNX Runtime write the optimized graph's weights beside it.
SAVE_CONFIG = {
    "session.optimized_model_external_initializers_file_name": DATA_NAME,
    "session.optimized_model_external_initializers_min_size_in_bytes": "1024",
}


MAX_GB_ENV = "CMRT_GRAPH_CACHE_MAX_GB"
DEFAULT_MAX_GB = 16.0
_ENTRY_NAME = re.compile(r"[0-9a-f]{32}")  # what cache_key names; staging folders and strays never match


def cache_dir() -> Path:
    return cache_root() / "onnxruntime"


def max_cache_bytes() -> int:
    """The size the cache is kept to: `$CMRT_GRAPH_CACHE_MAX_GB` GB, else DEFAULT_MAX_GB; a value
    that is not a number >= 0 is reported and the default used (pruning must not fail a load)."""
    text = os.environ.get(MAX_GB_ENV, "").strip()
    if text:
        try:
            gb = float(text)
            if gb >= 0 and gb != float("inf"):
                return int(gb * 1e9)
        except ValueError:
            pass
        logger.warning("%s must be a number of GB >= 0, got %r; keeping the graph cache to %g GB",
                       MAX_GB_ENV, text, DEFAULT_MAX_GB)
    return int(DEFAULT_MAX_GB * 1e9)


def _entry_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def prune(keep: Path) -> list[Path]:
    """Remove the least recently used entries until the cache fits `max_cache_bytes()`; never `keep`.
    Returns the removed entries. Errors (a concurrent prune, a read-only cache) are logged, not raised."""
    budget = max_cache_bytes()
    entries = []
    try:
        for folder in cache_dir().iterdir():
            if folder.is_dir() and _ENTRY_NAME.fullmatch(folder.name):
                try:
                    entries.append(((folder / RECORD_NAME).stat().st_mtime, folder, _entry_bytes(folder)))
                except OSError:  # no record: a half-removed entry; find() discards it when asked for it
                    continue
    except OSError as e:
        logger.warning("could not list the ONNX Runtime graph cache %s (%s)", cache_dir(), e)
        return []
    entries.sort(key=lambda e: e[0], reverse=True)  # most recently used first
    used = sum(size for _, folder, size in entries if folder == keep)
    removed = []
    full = False  # once an entry does not fit, every older one goes too: least recently used first
    for _, folder, size in entries:
        if folder == keep:
            continue
        full = full or used + size > budget
        if not full:
            used += size
            continue
        discard(folder)
        removed.append(folder)
    if removed:
        logger.info("ONNX Runtime graph cache: removed %d least recently used entries to stay within %.1f GB",
                    len(removed), budget / 1e9)
    return removed


def _mark_used(folder: Path) -> None:
    try:
        os.utime(folder / RECORD_NAME)
    except OSError:  # a read-only cache still serves its entries
        pass


def cpu_features() -> str:
    """What ONNX Runtime's kernels dispatch on: the architecture and the CPU's instruction-set flags."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = " ".join(sorted(line.split(":", 1)[1].split()))
                    break
    except OSError:  # not Linux: the processor string is what there is
        flags = platform.processor()
    return f"{platform.machine()}:{flags}"


def cache_key(graph_id: str, options: dict[str, Any]) -> str:
    """The entry name for a graph (`graph_id`: digest of the files it reads) under `options`."""
    import onnxruntime as ort

    blob = json.dumps(
        {"format": CACHE_FORMAT, "graph": graph_id, "onnxruntime": ort.__version__, "cpu": cpu_features(), "options": options},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass
class Entry:
    """One cache entry found on disk, its sizes matching its record; its hashes are being checked."""

    folder: Path
    verification: Verification

    @property
    def graph(self) -> Path:
        return self.folder / GRAPH_NAME

    def check(self) -> bool:
        """Wait for the entry's hashes; False (and the entry deleted) when a file does not match."""
        wrong = self.verification.failures()
        if wrong:
            logger.warning("ONNX Runtime graph cache entry %s is corrupt (%s); deleting it", self.folder, wrong[0])
            discard(self.folder)
        return not wrong


def find(key: str) -> Entry | None:
    """The entry for `key` if it is complete and its files have their recorded sizes (hashes start now)."""
    folder = cache_dir() / key
    try:
        record = json.loads((folder / RECORD_NAME).read_text())
        files = record["files"]
        if record.get("format") != CACHE_FORMAT or set(files) != {GRAPH_NAME, DATA_NAME}:
            raise ValueError(f"unexpected record {sorted(record)}")
        for name, rec in files.items():
            if (folder / name).stat().st_size != rec["bytes"]:
                raise ValueError(f"{name} has the wrong size")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("ONNX Runtime graph cache entry %s is unusable (%s); rebuilding it", folder, e)
        discard(folder)
        return None
    _mark_used(folder)
    checks = [(folder / name, rec, f"{folder / name} does not match its recorded digest") for name, rec in files.items()]
    return Entry(folder, Verification(checks, VerifiedRecord(folder)))


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def write(key: str, create_session) -> Any:
    """Create a session with `create_session(optimized_path)`, which makes ONNX Runtime save the
    optimized graph there, and store it as the entry for `key`. Returns the session.

    A failure to write the cache (disk full, read-only home) is logged and the session returned:
    the cache only saves time.
    """
    target = cache_dir() / key
    session = None
    try:
        with staging_dir(target) as stage:
            session = create_session(stage / GRAPH_NAME)
            files = {}
            for name in (GRAPH_NAME, DATA_NAME):
                p = stage / name
                if not p.is_file():
                    raise FileNotFoundError(f"ONNX Runtime did not write {name}")
                files[name] = {"bytes": p.stat().st_size, **file_digests(p)}
            write_json_atomic(stage / RECORD_NAME, {"format": CACHE_FORMAT, "key": key, "files": files})
        logger.info("cached ONNX Runtime's optimized graph in %s", target)
        prune(keep=target)
        return session
    except OSError as e:
        logger.warning("could not cache ONNX Runtime's optimized graph in %s (%s)", target, e)
        return session if session is not None else create_session(None)

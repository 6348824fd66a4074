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
"""
from __future__ import annotations

import hashlib
import json
import logging
import platform
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


def cache_dir() -> Path:
    return cache_root() / "onnxruntime"


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
        return session
    except OSError as e:
        logger.warning("could not cache ONNX Runtime's optimized graph in %s (%s)", target, e)
        return session if session is not None else create_session(None)

"""The engine folder's manifest: the contract between build time and run time.

The runtime reads only this JSON file and the files it lists; it never needs torch or the
original checkpoint. Every file carries a SHA-256 so that a truncated copy or a hand-edited
ONNX file is refused with a clear message instead of producing wrong images.

Hashing a folder means reading every byte of it (over a GB on the real architectures), so it
can run in the background (`start_verification`) while the backend opens, and be joined
before the first image: `cmrt.load` returns only after the join, and a file that does not
match raises there, with the same message as `read_manifest(verify=True)`.

Where the `blake3` package is installed, builds also record each file's BLAKE3, and a load
checks that instead of the SHA-256: another cryptographic hash, several times faster on one
core and multi-threaded on big files. Folders without it, and machines without the package,
are checked by SHA-256 as before.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import EngineFolderError

__all__ = [
    "FORMAT", "FORMAT_VERSION", "MANIFEST_NAME", "EngineFolderError", "Manifest", "Verification", "file_record",
    "read_manifest", "sha256_file", "start_verification",
]

MANIFEST_NAME = "manifest.json"
FORMAT = "cmrt-engine"
FORMAT_VERSION = 1

_HASH_CACHE: dict[tuple, str] = {}


HASH_BLOCK = 1 << 24


def _sha256_of(path: Path, block: int = HASH_BLOCK) -> str:
    """SHA-256 of a file's bytes, read into one reused buffer.

    Not through a memory mapping: mapped pages count in the process's resident memory while
    mapped, so hashing a 1 GB file that way would raise the load's peak RSS by 1 GB. hashlib
    and the reads release the GIL, so a background hash runs beside the main thread's work
    (ONNX Runtime releases it while it creates a session).
    """
    h = hashlib.sha256()
    buf = bytearray(block)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = HASH_BLOCK) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime) so repeated loads in one process are free.

    `chunk`: bytes read at a time.
    """
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    cached = _HASH_CACHE.get(key)
    if cached is not None:
        return cached
    digest = _sha256_of(path, chunk)
    _HASH_CACHE[key] = digest
    return digest


def _blake3():
    try:
        import blake3
    except ImportError:
        return None
    return blake3


def blake3_file(path: str | os.PathLike, block: int = HASH_BLOCK) -> str | None:
    """BLAKE3 of a file (multi-threaded over each block), or None where `blake3` is not installed.
    Read into a reused buffer, like `_sha256_of`, so that the hashed pages are not counted as this
    process's memory."""
    b3 = _blake3()
    if b3 is None:
        return None
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, "blake3")  # remembered like sha256_file's
    cached = _HASH_CACHE.get(key)
    if cached is not None:
        return cached
    h = b3.blake3(max_threads=b3.blake3.AUTO)
    buf = bytearray(block)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    _HASH_CACHE[key] = digest = h.hexdigest()
    return digest


def digest_matches(path: Path, record: dict[str, Any]) -> bool:
    """Whether `path` has the digest `record` gives: its BLAKE3 where recorded and installed, else its SHA-256."""
    if record.get("blake3") and _blake3() is not None:
        return blake3_file(path) == record["blake3"]
    return sha256_file(path) == record["sha256"]


def file_digests(path: str | os.PathLike) -> dict[str, str]:
    """The digests a record holds: SHA-256 always, BLAKE3 where the package is installed."""
    out = {"sha256": sha256_file(path)}
    b3 = blake3_file(path)
    if b3 is not None:
        out["blake3"] = b3
    return out


def hashing_threads() -> int:
    """Files hashed at once: one per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class Verification:
    """The digests of a set of files, computed on background threads; `join` waits and says what failed.

    `checks` are (path, record with "sha256" and maybe "blake3", message if it differs; see
    `digest_matches`). Biggest files start first, one thread per core, so the join waits for
    the largest file at most.
    """

    def __init__(self, checks: list[tuple[Path, dict[str, Any], str]]):
        self.checks = sorted(checks, key=lambda c: -c[0].stat().st_size)
        self.started = time.perf_counter()
        self.finished: float | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=min(len(checks), hashing_threads()) or 1, thread_name_prefix="cmrt-verify")
        self._futures = [self._pool.submit(self._check, c) for c in self.checks]
        self._pool.shutdown(wait=False)

    def _check(self, check: tuple[Path, dict[str, Any], str]) -> str | None:
        path, want, message = check
        try:
            wrong = None if digest_matches(path, want) else message
        except OSError as e:  # removed or unreadable since its size was checked
            wrong = f"{message} ({path} could not be read: {e})"
        with self._lock:
            self.finished = time.perf_counter()
        return wrong

    def failures(self) -> list[str]:
        """Wait for every hash; the messages of the files that do not match, in `checks` order."""
        return [m for m in (f.result() for f in self._futures) if m]

    def join(self) -> float:
        """Wait for every hash and raise EngineFolderError for the first file that does not match.
        Returns the seconds spent waiting here (0 when the hashing had finished already)."""
        t0 = time.perf_counter()
        wrong = self.failures()
        if wrong:
            raise EngineFolderError(wrong[0])
        return time.perf_counter() - t0

    @property
    def seconds(self) -> float | None:
        """Wall time from the start to the last hash finished (None before the join)."""
        return None if self.finished is None else self.finished - self.started


def _checksum_message(p: Path) -> str:
    return (
        f"{p} does not match its checksum in {MANIFEST_NAME}: the file was modified after the build; "
        "rebuild with `cmrt build`"
    )


def start_verification(manifest: "Manifest") -> Verification:
    """Start hashing every file of `manifest` (read with `verify=False`: sizes already checked)."""
    folder = manifest.folder
    return Verification([(folder / name, rec, _checksum_message(folder / name)) for name, rec in manifest.files.items()])


def file_record(folder: Path, name: str) -> dict[str, Any]:
    p = folder / name
    return {**file_digests(p), "bytes": p.stat().st_size}


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest plus the folder it describes."""

    folder: Path
    data: dict[str, Any] = field(repr=False)

    # --- facts the runtime needs -------------------------------------------------------
    @property
    def sample_size(self) -> int:
        return int(self.data["unet"]["sample_size"])

    @property
    def in_channels(self) -> int:
        return int(self.data["unet"]["in_channels"])

    @property
    def num_class_embeds(self) -> int | None:
        n = self.data["unet"].get("num_class_embeds")
        return None if n is None else int(n)

    @property
    def scheduler_config(self) -> dict[str, Any]:
        return dict(self.data["scheduler"])

    @property
    def min_batch(self) -> int:
        return int(self.data["build_options"]["min_batch"])

    @property
    def max_batch(self) -> int:
        return int(self.data["build_options"]["max_batch"])

    @property
    def opt_batch(self) -> int:
        return int(self.data["build_options"]["opt_batch"])

    @property
    def build_options(self) -> dict[str, Any]:
        return dict(self.data["build_options"])

    @property
    def unet(self) -> dict[str, Any]:
        """The UNet's facts (sample size, channels, classes, parameters, ...)."""
        return dict(self.data["unet"])

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        """Every file of the folder with its size and SHA-256."""
        return dict(self.data["files"])

    @property
    def tools(self) -> dict[str, str]:
        return dict(self.data["tools"])

    @property
    def tensorrt(self) -> dict[str, Any] | None:
        """The folder's TensorRT engine entry (see cmrt.engine.tensorrt), or None."""
        entry = self.data.get("tensorrt")
        return dict(entry) if entry else None

    def onnx_entry(self, precision: str) -> dict[str, Any]:
        """The manifest's record of the `precision` ONNX graph (file, opset, I/O, validation)."""
        self.onnx_path(precision)  # the error for a precision the folder does not have
        return dict(self.data["onnx"][precision])

    @property
    def source(self) -> dict[str, Any]:
        return dict(self.data["source"])

    @property
    def precisions(self) -> list[str]:
        return sorted(self.data["onnx"].keys())

    def onnx_path(self, precision: str) -> Path:
        if precision not in self.data["onnx"]:
            raise EngineFolderError(
                f"engine folder {self.folder} has no {precision!r} ONNX model (it has {self.precisions}); "
                f"rebuild it with `cmrt build ... --precision {precision}`"
            )
        return self.folder / self.data["onnx"][precision]["file"]

    @property
    def winograd(self) -> dict[str, Any] | None:
        """The fp32 entry's Winograd CPU-graph record (see engine/cpu_graph.py), or None."""
        return self.data["onnx"].get("fp32", {}).get("winograd")

    def cpu_graph(self, precision: str, winograd: bool | None = None) -> tuple[Path, dict[str, Any] | None]:
        """The graph ONNX Runtime runs on the CPU, and its Winograd record when it is the Winograd one.

        `winograd`: None follows the build's choice, False forces the plain graph, True asks
        for the Winograd one and fails when the folder has none.
        """
        if winograd not in (None, True, False):
            raise TypeError(f"winograd must be None, True or False, got {winograd!r}")
        rec = self.winograd if precision == "fp32" else None
        kept = bool(rec and rec.get("used"))
        if winograd is True and not kept:
            why = rec["reason"] if rec else "it was built without one (or with --winograd never)"
            raise EngineFolderError(
                f"engine folder {self.folder} has no Winograd {precision} graph: {why}; "
                "rebuild with `cmrt build ... --winograd always`, or load with winograd=None"
            )
        if kept and winograd is not False:
            return self.folder / rec["file"], rec
        return self.onnx_path(precision), None

    def io_spec(self, precision: str) -> dict[str, Any]:
        entry = self.onnx_entry(precision)
        return {"inputs": entry["inputs"], "outputs": entry["outputs"]}


_REQUIRED = ("format", "format_version", "source", "unet", "scheduler", "build_options", "onnx", "files", "tools")


def read_manifest(folder: str | os.PathLike, verify: bool = True) -> Manifest:
    """Read and check an engine folder. `verify` re-hashes every listed file (cached per process);
    without it, only presence and sizes are checked (`start_verification` hashes later)."""
    folder = Path(folder)
    if not folder.exists():
        raise EngineFolderError(
            f"engine folder {folder} does not exist; build it with `cmrt build MODEL --out {folder}`"
        )
    mpath = folder / MANIFEST_NAME
    if not mpath.is_file():
        raise EngineFolderError(
            f"{folder} is not a cmrt engine folder (no {MANIFEST_NAME}); build one with `cmrt build MODEL --out {folder}`"
        )
    try:
        data = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EngineFolderError(f"{mpath} is not valid JSON ({e}); rebuild the folder with `cmrt build`") from e
    missing = [k for k in _REQUIRED if k not in data]
    if missing or data.get("format") != FORMAT:
        raise EngineFolderError(f"{mpath} is not a cmrt engine manifest (missing {missing}); rebuild with `cmrt build`")
    if data["format_version"] != FORMAT_VERSION:
        raise EngineFolderError(
            f"{folder} was written by manifest format {data['format_version']}, this cmrt reads {FORMAT_VERSION}; "
            "rebuild it with this cmrt's `cmrt build`"
        )
    for name, rec in data["files"].items():
        p = folder / name
        if not p.is_file():
            raise EngineFolderError(f"engine folder {folder} is incomplete: {name} is missing; rebuild with `cmrt build`")
        size = p.stat().st_size
        if size != rec["bytes"]:
            raise EngineFolderError(
                f"{p} has {size} bytes, the manifest says {rec['bytes']}: the file was changed or truncated; "
                "rebuild with `cmrt build`"
            )
    manifest = Manifest(folder=folder, data=data)
    if verify:
        start_verification(manifest).join()
    return manifest

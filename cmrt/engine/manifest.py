"""The engine folder's manifest: the contract between build time and run time.

The runtime reads only this JSON file and the files it lists; it never needs torch or the
original checkpoint. A folder is untrusted data, so reading one checks, in this order:

- the manifest itself (`parse_manifest`): a bounded, well-formed JSON object of this
  format version whose content matches its own SHA-256 (`manifest_sha256`, written by the
  build through `write_manifest`), so that an edit of any field is refused; then every
  field the runtime reads against the schema (`manifest_schema`), and every file it opens
  is a plain name inside the folder with a checksum in `files`;
- the files (`check_files`): each listed file resolves inside the folder (a symlink out is
  refused), has its recorded size and, with `hashes`, its SHA-256.

`read_manifest` does both. The digest guards against edits and damage, not against someone
who rewrites the manifest and its digest together: such a folder still passes only the
schema and the containment checks, which keep the runtime inside the folder and its reads
typed and bounded.

Hashing a folder means reading every byte of it (over a GB on the real architectures), so it
can run in the background (`start_verification`) while the backend opens, and be joined
before the first image: `cmrt.load` returns only after the join, and a file that does not
match raises there, with the same message as `read_manifest(verify=True)`. Files whose stat
identity the folder's record of verified files (`cmrt.engine.verified`, written by the build
and by earlier verifications on this machine) vouches for are not read at all.

Where the `blake3` package is installed, builds also record each file's BLAKE3, and a load
checks that instead of the SHA-256: another cryptographic hash, several times faster on one
core and multi-threaded on big files. Folders without it, and machines without the package,
are checked by SHA-256.
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
from .manifest_schema import SchemaError, check_manifest_data
from .verified import Identity, VerifiedRecord, identity

__all__ = [
    "DIGEST_KEY", "FORMAT", "FORMAT_VERSION", "MANIFEST_NAME", "EngineFolderError", "Manifest", "Verification",
    "check_files", "file_record", "manifest_digest", "parse_manifest", "read_manifest", "seed_verified", "sha256_file",
    "start_verification", "write_manifest",
]

MANIFEST_NAME = "manifest.json"
FORMAT = "cmrt-engine"
FORMAT_VERSION = 2  # 2: the manifest's own digest, the schema, every opened file checksummed
DIGEST_KEY = "manifest_sha256"
MAX_MANIFEST_BYTES = 4 << 20  # real manifests are a few kB (LSUN-256's Winograd filter list: ~20 kB)
MAX_DEPTH = 16  # real manifests nest 6 deep
REBUILD = "rebuild the folder with `cmrt build`"

# The hash cache: (device, inode, size, mtime_ns, ctime_ns, algorithm) -> digest. Any write to a file
# moves its ctime, which no user-space call can set back, so an in-place edit that keeps
# the size and restores the mtime still misses the cache. A file changed less than
# RACY_SECONDS before its hash began is not cached (the clock tick that stamps ctime is
# coarse: an edit in the same tick would otherwise look unchanged), as git does; nor is one
# whose identity moved while it was read. The same rules decide what the record of verified
# files (`cmrt.engine.verified`, which outlives the process) may keep.
_HASH_CACHE: dict[tuple, str] = {}
RACY_SECONDS = 2.0
HASH_BLOCK = 1 << 24


def _hash(path: str | os.PathLike, algorithm: str, new_hash) -> tuple[str, Identity | None]:
    """A file's digest by `new_hash()`, and the file's identity where it may be remembered (else None).

    Read into one reused buffer, not through a memory mapping: mapped pages count in the
    process's resident memory while mapped, so hashing a 1 GB file that way would raise the
    load's peak RSS by 1 GB. hashlib and the reads release the GIL, so a background hash runs
    beside the main thread's work (ONNX Runtime releases it while it creates a session).
    Remembered per process in `_HASH_CACHE`, so repeated loads in one process are free.
    """
    started = time.time()
    with open(path, "rb", buffering=0) as f:
        st = os.fstat(f.fileno())
        ident = identity(st)
        key = (*ident, algorithm)
        cached = _HASH_CACHE.get(key)
        if cached is not None:
            return cached, ident
        h = new_hash()
        buf = bytearray(HASH_BLOCK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
        held_still = identity(os.fstat(f.fileno())) == ident
    digest = h.hexdigest()
    if not held_still or started - st.st_ctime_ns / 1e9 < RACY_SECONDS:
        return digest, None
    _HASH_CACHE[key] = digest
    return digest, ident


def _hash_file(path: str | os.PathLike, algorithm: str, new_hash) -> str:
    return _hash(path, algorithm, new_hash)[0]


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file (see `_hash_file`)."""
    return _hash_file(path, "sha256", hashlib.sha256)


def _blake3():
    try:
        import blake3
    except ImportError:
        return None
    return blake3


def _blake3_hasher(b3):
    return lambda: b3.blake3(max_threads=b3.blake3.AUTO)


def blake3_file(path: str | os.PathLike) -> str | None:
    """BLAKE3 of a file (multi-threaded over each block), or None where `blake3` is not installed."""
    b3 = _blake3()
    if b3 is None:
        return None
    return _hash_file(path, "blake3", _blake3_hasher(b3))


def expected_digest(record: dict[str, Any]) -> tuple[str, str]:
    """(algorithm, digest) a file is checked by: its BLAKE3 where recorded and installed, else its SHA-256."""
    if record.get("blake3") and _blake3() is not None:
        return "blake3", record["blake3"]
    return "sha256", record["sha256"]


def _hash_by(path: Path, algorithm: str) -> tuple[str, Identity | None]:
    return _hash(path, algorithm, _blake3_hasher(_blake3()) if algorithm == "blake3" else hashlib.sha256)


def file_digests(path: str | os.PathLike) -> dict[str, str]:
    """The digests a record holds: SHA-256 always, BLAKE3 where the package is installed."""
    out = {"sha256": sha256_file(path)}
    b3 = blake3_file(path)
    if b3 is not None:
        out["blake3"] = b3
    return out


def file_record(folder: Path, name: str) -> dict[str, Any]:
    p = folder / name
    return {**file_digests(p), "bytes": p.stat().st_size}


def _canonical(data: dict[str, Any], strict: bool = False) -> bytes:
    """`strict` (writing) refuses NaN and infinities, which are not JSON; reading takes what the parser gave."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=not strict).encode()


def manifest_digest(data: dict[str, Any]) -> str:
    """The SHA-256 of the manifest's content without its own digest (canonical JSON, so formatting does not count)."""
    return hashlib.sha256(_canonical({k: v for k, v in data.items() if k != DIGEST_KEY})).hexdigest()


def write_manifest(folder: str | os.PathLike, data: dict[str, Any]) -> dict[str, Any]:
    """Write `data` as `folder`'s manifest, atomically, with its digest; returns what was written.

    The only way build time writes a manifest (the ONNX build and the TensorRT step), so
    that every manifest a cmrt build leaves is sealed, and never one that `read_manifest`
    would refuse: the data is checked against the schema first.
    """
    from .atomic import write_json_atomic

    sealed = {k: v for k, v in data.items() if k != DIGEST_KEY}
    try:
        if sealed.get("format") != FORMAT or sealed.get("format_version") != FORMAT_VERSION:
            raise SchemaError("format_version", f"must be {FORMAT!r} version {FORMAT_VERSION}")
        check_manifest_data(sealed)
        _canonical(sealed, strict=True)
    except SchemaError as e:
        raise EngineFolderError(f"refusing to write an invalid manifest in {folder}: field `{e.where}` {e.problem}") from None
    except ValueError as e:  # NaN or an infinity in a field the runtime does not read
        raise EngineFolderError(f"refusing to write an invalid manifest in {folder}: {e}") from None
    sealed[DIGEST_KEY] = manifest_digest(sealed)
    write_json_atomic(Path(folder) / MANIFEST_NAME, sealed)
    return sealed


def inside(folder: Path, name: str) -> Path:
    """`folder / name` after following symlinks, or EngineFolderError when that leaves `folder`.

    The error names neither the target nor anything about it: an engine folder must not be
    a way to learn about files outside it.
    """
    base = Path(os.path.realpath(folder))
    path = Path(os.path.realpath(base / name))
    if path.parent != base or path.name in ("", ".", ".."):
        raise EngineFolderError(f"{folder / name} leads outside the engine folder (a symlink?); {REBUILD}")
    return path


def _whole_number(section: str, key: str) -> property:
    """A read-only int accessor of `data[section][key]`, which the schema has checked."""
    return property(lambda self: int(self.data[section][key]), doc=f"manifest {section}.{key}")


def _section_copy(section: str, doc: str) -> property:
    """A read-only accessor returning a copy of `data[section]`, so callers cannot edit the manifest."""
    return property(lambda self: dict(self.data[section]), doc=doc)


@dataclass(frozen=True)
class Manifest:
    """A checked manifest plus the folder it describes: made by `parse_manifest` / `read_manifest`,
    whose schema check is what lets the accessors below index without guarding."""

    folder: Path
    data: dict[str, Any] = field(repr=False)

    # --- facts the runtime needs -------------------------------------------------------
    sample_size = _whole_number("unet", "sample_size")
    in_channels = _whole_number("unet", "in_channels")
    min_batch = _whole_number("build_options", "min_batch")
    max_batch = _whole_number("build_options", "max_batch")
    opt_batch = _whole_number("build_options", "opt_batch")
    unet = _section_copy("unet", "The UNet's facts (sample size, channels, classes, parameters, ...).")
    scheduler_config = _section_copy("scheduler", "The scheduler config the folder was built with.")
    build_options = _section_copy("build_options", "The options the folder was built with.")
    files = _section_copy("files", "Every file of the folder with its size and digests.")
    tools = _section_copy("tools", "The versions of the tools that built the folder.")
    source = _section_copy("source", "What the folder was built from.")

    @property
    def num_class_embeds(self) -> int | None:
        n = self.data["unet"].get("num_class_embeds")
        return None if n is None else int(n)

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
        """The fp32 entry's Winograd CPU-graph record (see cmrt/build/cpu_graph.py), or None."""
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

    def batch_chunk(self, graph: Path) -> int | None:
        """The most images per ONNX Runtime CPU call of `graph` that the build measured worth it
        (cmrt/build/cpu_batching.py), or None for the whole batch in one call: also for a graph the
        build did not measure, and for folders built before it did. A step graph has its UNet
        graph's figure, since the UNet is all of its work."""
        entry = self.data["onnx"].get("fp32")
        if entry is None or graph.parent != self.folder:
            return None
        wino = entry.get("winograd") or {}
        steps = [entry.get("step"), wino.get("step")]
        unet_graph = next((s["from"] for s in steps if s and s["file"] == graph.name), graph.name)
        for rec in (entry.get("batching"), wino.get("batching")):  # each graph's own (the schema checks it)
            if rec and rec["graph"] == unet_graph:
                return None if rec["chunk"] is None else int(rec["chunk"])
        return None

    def io_spec(self, precision: str) -> dict[str, Any]:
        entry = self.onnx_entry(precision)
        return {"inputs": entry["inputs"], "outputs": entry["outputs"]}


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key[:40]!r} appears twice in one object")
        out[key] = value
    return out


def _depth(value: Any) -> int:
    """How deeply `value` nests (iteratively: a crafted manifest must not exhaust the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if deepest > MAX_DEPTH:
                break
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def _load_json(mpath: Path) -> Any:
    try:
        with open(mpath, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise EngineFolderError(f"{mpath} cannot be read ({e.strerror}); {REBUILD}") from e
    if len(raw) > MAX_MANIFEST_BYTES:
        raise EngineFolderError(f"{mpath} is over {MAX_MANIFEST_BYTES >> 20} MiB, no cmrt manifest is; {REBUILD}")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise EngineFolderError(f"{mpath} is not valid JSON ({e}); {REBUILD}") from e


def parse_manifest(folder: str | os.PathLike) -> "Manifest":
    """The manifest of `folder`, checked on its own (format, digest, schema); its files are not looked at.

    What a process that serves the folder's graphs from elsewhere (Triton's `unet=triton`)
    can check; `read_manifest` adds the files.
    """
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
    data = _load_json(inside(folder, MANIFEST_NAME))
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise EngineFolderError(f"{mpath} is not a cmrt engine manifest; {REBUILD}")
    version = data.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise EngineFolderError(
            f"{folder} was written by manifest format {str(version)[:20]}, this cmrt reads {FORMAT_VERSION}; "
            "rebuild it with this cmrt's `cmrt build`"
        )
    if _depth(data) > MAX_DEPTH:
        raise EngineFolderError(f"{mpath} nests deeper than any cmrt manifest ({MAX_DEPTH} levels); {REBUILD}")
    if data.get(DIGEST_KEY) != manifest_digest(data):
        raise EngineFolderError(
            f"{mpath} was changed after the build: its content does not match its {DIGEST_KEY}. "
            f"Edited manifests are refused; {REBUILD}"
        )
    try:
        check_manifest_data(data)
    except SchemaError as e:
        field_name = e.where or "the manifest"
        raise EngineFolderError(f"{mpath}: field `{field_name}` {e.problem}; {REBUILD}") from None
    return Manifest(folder=folder, data=data)


def hashing_threads() -> int:
    """Files hashed at once: one per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class Verification:
    """The digests of a set of files, computed on background threads; `join` waits and says what failed.

    `checks` are (path, record with "sha256" and maybe "blake3", message if it differs; see
    `expected_digest`). Biggest files start first, one thread per core, so the join waits for
    the largest file at most. With a `record` (`cmrt.engine.verified`), a file whose identity
    the record vouches for with the expected digest is not read; when every file passes, the
    record is rewritten with what was verified (the files whose identity may be remembered).
    """

    def __init__(self, checks: list[tuple[Path, dict[str, Any], str]], record: VerifiedRecord | None = None):
        self.checks = sorted(checks, key=lambda c: -c[0].stat().st_size)
        self.record = record
        self.started = time.perf_counter()
        self.finished: float | None = None
        self.hashed_bytes = 0  # what was read to verify (0 when the record vouched for every file)
        self._verified: dict[str, tuple[Identity, dict[str, str]]] = {}
        self._saved = False
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=min(len(checks), hashing_threads()) or 1, thread_name_prefix="cmrt-verify")
        self._futures = [self._pool.submit(self._check, c) for c in self.checks]
        self._pool.shutdown(wait=False)

    def _check(self, check: tuple[Path, dict[str, Any], str]) -> str | None:
        path, want, message = check
        algorithm, digest = expected_digest(want)
        try:
            ident = identity(os.stat(path)) if self.record is not None else None
            if ident is not None and self.record.vouches(path.name, ident, algorithm, digest):
                wrong, remember = None, ident
            else:
                got, remember = _hash_by(path, algorithm)
                wrong = None if got == digest else message
                with self._lock:
                    self.hashed_bytes += path.stat().st_size
        except OSError as e:  # removed or unreadable since its size was checked
            wrong, remember = f"{message} ({path} could not be read: {e})", None
        with self._lock:
            if wrong is None and remember is not None:
                self._verified[path.name] = (remember, {algorithm: digest})
            self.finished = time.perf_counter()
        return wrong

    def failures(self) -> list[str]:
        """Wait for every hash; the messages of the files that do not match, in `checks` order.
        When there are none, the record (if any) learns what was verified."""
        wrong = [m for m in (f.result() for f in self._futures) if m]
        with self._lock:
            save, self._saved = not wrong and not self._saved and self.record is not None, True
        if save:
            self.record.save(self._verified)
        return wrong

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
    return f"{p} does not match its checksum in {MANIFEST_NAME}: the file was modified after the build; {REBUILD}"


def check_files(manifest: "Manifest", hashes: bool = True) -> None:
    """Check every file in the manifest's `files`: inside the folder, its size, and with `hashes` its digest.

    The schema has already made sure that every file the runtime opens is listed here.
    Kept apart from `parse_manifest` so that the hashing can run alongside other work
    (`start_verification`).
    """
    for _ in _checked_files(manifest):
        pass
    if hashes:
        start_verification(manifest).join()


def _checked_files(manifest: "Manifest"):
    """(path inside the folder, record) of every listed file, present and of its recorded size."""
    folder = manifest.folder
    for name, rec in manifest.files.items():
        p = inside(folder, name)
        if not p.is_file():
            raise EngineFolderError(f"engine folder {folder} is incomplete: {name} is missing; {REBUILD}")
        size = p.stat().st_size
        if size != rec["bytes"]:
            raise EngineFolderError(
                f"{folder / name} has {size} bytes, the manifest says {rec['bytes']}: the file was changed or truncated; "
                f"{REBUILD}"
            )
        yield p, rec


def start_verification(manifest: "Manifest") -> Verification:
    """Start hashing every file of `manifest` on background threads (containment and sizes are checked here, now);
    the files that the folder's record of verified files vouches for are not read."""
    folder = manifest.folder
    checks = [(p, rec, _checksum_message(folder / p.name)) for p, rec in _checked_files(manifest)]
    return Verification(checks, VerifiedRecord(folder))


def seed_verified(manifest: "Manifest") -> int:
    """Record as verified the files of `manifest` whose digest is known under their present identity: those
    this process has just hashed (in the hash cache) and those the folder's record vouches for already.
    What `cmrt build` calls once a folder is in place, so that the first load after it reads nothing.
    Returns how many files the record holds.

    Files written less than `RACY_SECONDS` before the build hashed them are left out; the first
    load hashes them, and records them.
    """
    record = VerifiedRecord(manifest.folder)
    verified = {}
    for name, rec in manifest.files.items():
        try:
            ident = identity(os.stat(inside(manifest.folder, name)))
        except (OSError, EngineFolderError):
            continue
        digests = {a: rec[a] for a in ("sha256", "blake3")
                   if rec.get(a) and (_HASH_CACHE.get((*ident, a)) == rec[a] or record.vouches(name, ident, a, rec[a]))}
        if digests:
            verified[name] = (ident, digests)
    record.save(verified)
    return len(verified)


def read_manifest(folder: str | os.PathLike, verify: bool = True) -> "Manifest":
    """Read and check an engine folder: the manifest (`parse_manifest`) and its files (`check_files`).

    `verify` hashes every file (cached per process, and skipped where the folder's record of
    verified files vouches for it); without it only sizes are checked (`start_verification`
    hashes later).
    """
    manifest = parse_manifest(folder)
    check_files(manifest, hashes=verify)
    return manifest

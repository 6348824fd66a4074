"""Crash-safe file and folder writes.

Everything cmrt writes (ONNX files, engines, manifests, engine folders) must either be there
whole or not be there at all: a build killed half-way must never leave something that loads.
The pattern is always the same: write beside the target under a temporary name, flush to disk,
then rename over the target (rename is atomic within one filesystem). A folder cannot be
renamed over a non-empty folder, so folders are swapped with renameat2(RENAME_EXCHANGE),
under a per-target lock that also serializes concurrent builds of one target.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

logger = logging.getLogger(__name__)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


# --- folders: one builder per target, debris collected, swapped in one step ---------------
# Beside a target `name`, a build uses `.name.lock` (its lock, removed when released),
# `.name.building-XXXX` (the folder being built; after a swap, the previous folder on its way
# out) and, only where the system cannot swap two folders in one step, `.name.old-XXXX`
# (the previous folder between two renames). Whatever a killed build leaves under those
# names is collected by the next build of the same target.
STAGING, OLD = "building", "old"
_DEBRIS = r"\.{name}\.({kinds})-[a-z0-9_]+"

# renameat2(2) on Linux: RENAME_EXCHANGE swaps two existing paths atomically.
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


def _renameat2():
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not Linux, or a C library without it
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap the two existing paths `a` and `b` in one atomic step; False where the system or filesystem cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_EXCHANGE:
        return False
    raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))


class _HeldLock:
    """One target's lock in this process: a thread lock (reentrant) over an flock held while depth > 0."""

    def __init__(self) -> None:
        self.thread_lock = threading.RLock()
        self.depth = 0
        self.fd: int | None = None


_LOCKS: dict[str, _HeldLock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


def _flock(path: Path) -> int:
    """An fd holding an exclusive flock on `path`, the file that is at `path` now.

    The holder removes the file when it lets go, so a waiter may wake up holding a file
    that no longer has that name: it then tries again on the current one.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)


@contextlib.contextmanager
def target_lock(target: str | os.PathLike) -> Iterator[None]:
    """Hold the build lock of `target`: one builder at a time across processes and threads.

    Reentrant within a thread (a build holds it around its up-to-date check and its
    staging folder). The kernel releases it when its process dies, however it dies.
    """
    target = Path(os.path.abspath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    with _LOCKS_GUARD:
        held = _LOCKS.setdefault(str(target), _HeldLock())
    with held.thread_lock:
        if held.depth == 0:
            held.fd = _flock(_lock_path(target))
        held.depth += 1
        try:
            yield
        finally:
            held.depth -= 1
            if held.depth == 0:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(_lock_path(target))
                os.close(held.fd)
                held.fd = None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def collect_debris(target: str | os.PathLike) -> list[Path]:
    """Remove what killed builds of `target` left beside it; call with `target_lock` held.

    Holding the lock means no live build of `target` owns any of it. When a kill left no
    target but a previous folder moved aside (possible only without an atomic swap), that
    folder is put back first. Returns what was removed.
    """
    target = Path(target)
    pattern = re.compile(_DEBRIS.format(name=re.escape(target.name), kinds=f"{STAGING}|{OLD}"))
    found: dict[str, list[Path]] = {STAGING: [], OLD: []}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(target.parent):
            m = pattern.fullmatch(entry.name)
            if m:
                found[m.group(1)].append(Path(entry.path))
    olds = sorted(found[OLD], key=lambda p: p.lstat().st_mtime_ns)
    if olds and not os.path.lexists(target):
        previous = olds.pop()
        os.rename(previous, target)
        logger.warning("restored %s, which an interrupted build had moved aside", target)
    removed = found[STAGING] + olds
    for p in removed:
        _remove(p)
    if removed:
        logger.info("removed %d folder(s) left by interrupted builds of %s", len(removed), target)
    return removed


def _debris_dir(target: Path, kind: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.{kind}-", dir=target.parent))


def _commit(stage: Path, target: Path) -> None:
    """Put the complete folder `stage` at `target`; at every instant `target` is the old folder or the new one."""
    if not os.path.lexists(target):
        os.rename(stage, target)  # nothing to replace; the lock keeps other builds from creating it meanwhile
        _fsync_dir(target.parent)
        return
    if exchange(stage, target):
        _fsync_dir(target.parent)
        _remove(stage)  # the previous folder, under a debris name until it is gone
        return
    # No atomic swap here (a filesystem without RENAME_EXCHANGE): two renames. A kill between
    # them leaves the previous folder under the OLD name, which the next build puts back.
    old = _debris_dir(target, OLD)
    old.rmdir()
    os.rename(target, old)
    os.rename(stage, target)
    _fsync_dir(target.parent)
    trash = _debris_dir(target, STAGING)
    trash.rmdir()
    os.rename(old, trash)
    _remove(trash)


@contextlib.contextmanager
def staging_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder beside `target`; on success it replaces `target` in one atomic swap.

    Holds `target`'s build lock throughout, first removing what killed builds left. A kill
    at any point leaves the previous folder or the new one at `target`, never a partial one
    and never none (except, where the filesystem cannot swap folders atomically, between
    two renames: the next build then restores the previous folder). On error the staging
    folder is removed and `target` is left untouched.
    """
    target = Path(target)
    with target_lock(target):
        collect_debris(target)
        stage = _debris_dir(target, STAGING)
        os.chmod(stage, 0o755)  # mkdtemp makes it private; the finished folder should read like any other
        try:
            yield stage
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        _commit(stage, target)

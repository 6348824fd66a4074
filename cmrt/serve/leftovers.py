"""What stopped `cmrt serve`s left behind, and removing it.

What a harder death leaves (all of them killed at once, a power cut) the next start removes:
workspaces (`cmrt-serve-<pid>-*` under the temporary folder) and shared-memory segments
(`/dev/shm/cmrt-<pid>-<hex>-*`) whose owner pid is gone and that no live process names
(`remove_stale`).
A file is left alone while its owner (the pid in its name) runs, or while any live process's
command line names it (the supervisor and tritonserver of a server whose cmrt process just
died, still cleaning up).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

WORKSPACE_PREFIX = "cmrt-serve-"
SHM_DIR = Path("/dev/shm")

_WORKSPACE_RE = re.compile(r"^cmrt-serve-(\d+)-")
_SHM_RE = re.compile(r"^(cmrt-(\d+)-[0-9a-f]{8}-)")


def _process_start(pid: int) -> tuple[str, float] | None:
    """State and start time (seconds since the epoch, 1 s resolution) of `pid`, None if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
        return fields[0], btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def owner_alive(pid: int, made_at: float) -> bool:
    """Whether `pid`, which made a file at `made_at` (epoch seconds), still runs.

    A zombie is dead; a pid that now belongs to a process started after the file was made was
    reused: dead owner. When in doubt (no /proc), alive.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: alive
    st = _process_start(pid)
    if st is None:
        return True
    state, start = st
    return state not in ("Z", "X") and start <= made_at + 2.0  # btime has 1 s resolution


def _cmdlines() -> list[str]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                out.append((d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return out


def remove_stale(tmpdir: str | os.PathLike | None = None, shm_dir: str | os.PathLike = SHM_DIR) -> list[str]:
    """Remove the workspaces and shared-memory segments of `cmrt serve`s that are gone; return them.

    Owner: the pid in the name (`cmrt-serve-<pid>-*` in `tmpdir`, default the temporary folder;
    `cmrt-<pid>-<hex8>-*` in `shm_dir`). Kept when that pid runs (and started before the file
    was made) or when any live process's command line names the folder or the prefix (the
    supervisor and tritonserver of a server whose cmrt process just died, still cleaning up).
    """
    lines = None
    removed = []
    root = Path(tmpdir or tempfile.gettempdir())
    for d in sorted(root.glob(f"{WORKSPACE_PREFIX}*")):
        m = _WORKSPACE_RE.match(d.name)
        try:
            if not m or d.is_symlink() or not d.is_dir() or d.stat().st_uid != os.getuid():
                continue
            if owner_alive(int(m[1]), d.stat().st_ctime):
                continue
        except OSError:
            continue
        lines = _cmdlines() if lines is None else lines
        if any(str(d) in line for line in lines):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(str(d))
    shm = Path(shm_dir)
    for f in sorted(shm.iterdir()) if shm.is_dir() else []:
        m = _SHM_RE.match(f.name)
        try:
            if not m or f.lstat().st_uid != os.getuid() or owner_alive(int(m[2]), f.lstat().st_ctime):
                continue
        except OSError:
            continue
        lines = _cmdlines() if lines is None else lines
        if any(m[1] in line for line in lines):
            continue
        try:
            f.unlink()
            removed.append(str(f))
        except OSError:
            pass
    if removed:
        logger.info("removed what stopped servers left: %s", ", ".join(removed))
    return removed

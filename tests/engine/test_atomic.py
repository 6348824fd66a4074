"""Folder builds that are killed at every step: the target is always a complete folder, and the
next build of it removes what the killed one left.

A subprocess rebuilds a small folder through `staging_dir` and SIGKILLs itself at the k-th
line executed in cmrt/engine/atomic.py (the lock, the debris collection, the staging folder,
the swap and the removal of the previous folder), for every k.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cmrt.engine import atomic

ROOT = Path(__file__).resolve().parents[2]

KILLED_BUILD = r"""
import os, signal, sys
from pathlib import Path
from cmrt.engine import atomic

target, kill_at, version, swap = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
if swap == "renames":
    atomic.exchange = lambda a, b: False  # a filesystem without RENAME_EXCHANGE
lines = 0

def tracer(frame, event, arg):
    global lines
    if frame.f_code.co_filename != atomic.__file__:
        return None
    if event == "line":
        lines += 1
        if lines == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    return tracer

sys.settrace(tracer)
with atomic.staging_dir(target) as stage:
    for name in ("a", "b"):
        (stage / name).write_text(version)
sys.settrace(None)
print(lines)
"""


def build(target: Path, version: str) -> None:
    with atomic.staging_dir(target) as stage:
        for name in ("a", "b"):
            (stage / name).write_text(version)


def state(target: Path) -> str | None:
    """The version of the complete folder at `target`, or None when there is none."""
    if not target.is_dir():
        return None
    versions = {(target / n).read_text() for n in ("a", "b") if (target / n).is_file()}
    assert len(versions) == 1 and len(list(target.iterdir())) == 2, f"a partial folder at {target}: {os.listdir(target)}"
    return versions.pop()


def killed_build(target: Path, kill_at: int, version: str, swap: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", KILLED_BUILD, str(target), str(kill_at), version, swap],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def exchange_works(tmp_path: Path) -> bool:
    a, b = tmp_path / "xa", tmp_path / "xb"
    a.mkdir()
    b.mkdir()
    try:
        return atomic.exchange(a, b)
    finally:
        a.rmdir()
        b.rmdir()


@pytest.mark.parametrize("swap", ["exchange", "renames"])
def test_a_kill_at_any_line_leaves_a_complete_target_and_the_next_build_cleans_up(tmp_path, swap):
    if swap == "exchange" and not exchange_works(tmp_path):
        pytest.skip("this filesystem has no RENAME_EXCHANGE")
    target = tmp_path / "parent" / "engine"
    build(target, "v1")
    r = killed_build(target, 0, "v2", swap)  # no kill: how many lines a whole build runs
    assert r.returncode == 0, r.stderr
    total = int(r.stdout)
    assert state(target) == "v2" and total > 20
    lost = []
    for k in range(1, total + 1):
        before = state(target)
        r = killed_build(target, k, f"k{k}", swap)
        assert r.returncode == -signal.SIGKILL, (k, r.returncode, r.stderr)
        after = state(target)
        if after is None:
            lost.append(k)
        else:
            assert after in (before, f"k{k}"), (k, before, after)
        build(target, f"after{k}")  # the next build of the target: complete, and nothing left beside it
        assert state(target) == f"after{k}"
        assert sorted(os.listdir(target.parent)) == ["engine"], (k, os.listdir(target.parent))
    if swap == "exchange":
        assert lost == [], f"no target after a kill at lines {lost} of {total}"
    else:  # two renames: only the instant between them, which the next build repairs (checked above)
        assert len(lost) <= 2, lost


def test_a_target_lost_between_two_renames_is_restored_by_the_next_build(tmp_path):
    target = tmp_path / "engine"
    build(target, "v1")
    os.rename(target, tmp_path / ".engine.old-keep99")  # what a kill between the two renames leaves
    (tmp_path / ".engine.building-zz11").mkdir()  # beside the new folder
    with atomic.target_lock(target):
        removed = atomic.collect_debris(target)
    assert state(target) == "v1" and [p.name for p in removed] == [".engine.building-zz11"]
    assert sorted(os.listdir(tmp_path)) == ["engine"]


def test_debris_of_another_target_is_left_alone(tmp_path):
    for name in (".engine2.building-abc", ".engine.building.x", ".engine.buildingabc", "engine.building-abc"):
        (tmp_path / name).mkdir()
    build(tmp_path / "engine", "v1")
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["engine", ".engine2.building-abc", ".engine.building.x", ".engine.buildingabc", "engine.building-abc"]
    )


def test_a_failed_build_leaves_the_target_and_nothing_else(tmp_path):
    target = tmp_path / "engine"
    build(target, "v1")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic.staging_dir(target) as stage:
            (stage / "a").write_text("v2")
            raise RuntimeError("boom")
    assert state(target) == "v1" and sorted(os.listdir(tmp_path)) == ["engine"]


def test_the_target_lock_serializes_threads_and_is_reentrant(tmp_path):
    target = tmp_path / "engine"
    inside, overlaps = [], []

    def worker(i):
        with atomic.target_lock(target):
            with atomic.target_lock(target):  # reentrant in one thread
                inside.append(i)
                if len(inside) > 1:
                    overlaps.append(list(inside))
                threading.Event().wait(0.01)
                inside.remove(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [] and not (tmp_path / ".engine.lock").exists()


def test_a_waiter_on_a_removed_lock_file_locks_the_current_one(tmp_path):
    """The holder removes the lock file as it lets go; a waiter that wakes on the removed file tries again."""
    path = tmp_path / ".engine.lock"
    first = atomic._flock(path)
    got = []
    t = threading.Thread(target=lambda: got.append(atomic._flock(path)))  # its own open file: it waits
    t.start()
    t.join(0.2)
    assert got == []
    path.unlink()
    os.close(first)
    t.join(5)
    assert len(got) == 1 and os.fstat(got[0]).st_ino == path.stat().st_ino
    os.close(got[0])

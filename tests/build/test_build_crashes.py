"""Real builds killed with SIGKILL at random points, and concurrent builds of one target.

The builds run in processes forked from a forkserver that has imported torch, diffusers and
onnx once, so that each build costs its export and not a fresh interpreter: the kills land
across the build (loading, export, validation, manifest, swap) within a bounded time.
"""
from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time

import pytest

pytest.importorskip("torch")
# imported here so that the forkserver, which preloads this module, has them: diffusers imports lazily
from diffusers import CMStochasticIterativeScheduler, UNet2DModel  # noqa: E402, F401

from cmrt.engine.manifest import read_manifest  # noqa: E402
from cmrt.engine.options import BuildOptions  # noqa: E402

KILLS = 10
OPTIONS = BuildOptions(precisions=("fp32",), winograd="never", max_batch=4)


def build(model: str, out: str) -> None:
    """One forced build, as `cmrt build MODEL --out OUT --precision fp32 --winograd never --force` runs it."""
    from cmrt.build.folder import build_engine_folder

    build_engine_folder(model, out=out, options=OPTIONS, force=True)


def cli_build(model: str, out: str) -> None:
    """`cmrt build` itself, for its exit code."""
    from cmrt.cli import main

    code = main(["build", model, "--out", out, "--precision", "fp32", "--winograd", "never", "--max-batch", "4",
                 "--backend", "onnxruntime", "--force"])
    raise SystemExit(code)


@pytest.fixture(scope="module")
def forkserver():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "diffusers", "onnx", "onnxruntime", "cmrt.build.folder", "cmrt.cli", __name__])
    assert run(ctx, time.sleep, 0) == 0  # start it (the imports) before anything is timed
    return ctx


def run(ctx, target, *args) -> int:
    p = ctx.Process(target=target, args=args)
    p.start()
    p.join(120)
    return p.exitcode


def leftovers(out) -> list[str]:
    return sorted(n for n in os.listdir(out.parent) if n != out.name)


def test_builds_killed_at_random_points_always_leave_a_loadable_target(forkserver, small_models, tmp_path):
    import cmrt

    model, out = str(small_models["cond"][0]), tmp_path / "engines" / "small"
    t0 = time.perf_counter()
    assert run(forkserver, build, model, str(out)) == 0
    duration = time.perf_counter() - t0  # kills land uniformly over a whole build
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    kills = attempts = 0
    while kills < KILLS and attempts < 2 * KILLS:
        attempts += 1
        p = forkserver.Process(target=build, args=(model, str(out)))
        t0 = time.perf_counter()
        p.start()
        p.join(rng.uniform(0, duration))
        if p.exitcode is None:
            os.kill(p.pid, signal.SIGKILL)
            kills += 1
        else:  # it finished first: builds are slower now than the first one was
            assert p.exitcode == 0
            duration = max(duration, time.perf_counter() - t0)
        p.join(120)
        read_manifest(out, verify=True)  # after every kill: the previous or the new folder, complete
    assert kills >= KILLS, f"only {kills} of {attempts} builds were still running when killed (seed {seed})"
    assert run(forkserver, build, model, str(out)) == 0
    assert leftovers(out) == [], f"debris after the build that followed {kills} kills (seed {seed})"
    pipe = cmrt.load(out, backend="onnxruntime", device="cpu")
    assert pipe(batch_size=2, seed=0, output_type="np").images.shape == (2, 16, 16, 3)


def test_two_concurrent_builds_of_one_target_both_succeed_one_after_the_other(forkserver, small_models, tmp_path):
    model, out = str(small_models["uncond"][0]), tmp_path / "engines" / "small"
    out.parent.mkdir(parents=True)
    procs = [forkserver.Process(target=cli_build, args=(model, str(out))) for _ in range(2)]
    for p in procs:
        p.start()
    most_staging = 0  # staging folders seen at once: one while the builds take turns
    while any(p.is_alive() for p in procs):
        most_staging = max(most_staging, sum(".building" in n for n in os.listdir(out.parent)))
        time.sleep(0.02)
    assert [p.exitcode for p in procs] == [0, 0]
    assert most_staging == 1, f"{most_staging} builds of one target ran at once"
    read_manifest(out, verify=True)
    assert leftovers(out) == []

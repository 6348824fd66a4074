"""Shared fixtures. Slow, GPU and serving tests are skipped *visibly* (with a reason) unless asked for.

Serving tests (marker `serve`) run in their own environment, `.venv-serve` (nvidia-pytriton pins
numpy < 2): `make test-serve`, which sets CMRT_RUN_SERVE=1 and selects `-m serve`.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

# the simulated GPUs (tests/fakes/gpu.py) are fixtures every test folder may use
pytest_plugins = ("tests.fakes.gpu",)


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow (real-size models)")
    parser.addoption("--run-gpu", action="store_true", help="run tests marked gpu (needs an NVIDIA GPU)")
    parser.addoption("--run-serve", action="store_true", help="run tests marked serve (the serving venv: make test-serve)")


def pytest_configure(config):
    """Tests never read or write the user's cache (ONNX Runtime graphs, records of verified files,
    random-weight models): state left there by an earlier run, or by the user, must not decide
    whether a test passes. One fresh cache root per test session, inherited by child processes."""
    config._cmrt_cache = tempfile.mkdtemp(prefix="cmrt-test-cache-")
    os.environ["CMRT_CACHE"] = config._cmrt_cache


def pytest_unconfigure(config):
    root = getattr(config, "_cmrt_cache", None)
    if root:
        shutil.rmtree(root, ignore_errors=True)


def serve_run(config=None) -> bool:
    """This run is the serving tests' (`make test-serve`: CMRT_RUN_SERVE=1, or --run-serve)."""
    return os.environ.get("CMRT_RUN_SERVE") == "1" or bool(config is not None and config.getoption("--run-serve"))


def _gpu_present() -> bool:
    return shutil.which("nvidia-smi") is not None or os.path.exists("/dev/nvidia0")


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--run-slow") or os.environ.get("CMRT_RUN_SLOW") == "1"
    run_gpu = config.getoption("--run-gpu") or os.environ.get("CMRT_RUN_GPU") == "1"
    gpu = _gpu_present()
    run_serve = serve_run(config)
    for item in items:
        if item.get_closest_marker("serve") is not None and not run_serve:
            # first, so that this reason is the one shown (skipif marks are evaluated before skip marks)
            item.add_marker(pytest.mark.skipif(True, reason="serving test: run `make test-serve` (its own venv, numpy < 2)"),
                            append=False)
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow test: run `make test-slow` (pytest --run-slow)"))
        if "gpu" in item.keywords:
            if not gpu:
                item.add_marker(pytest.mark.skip(reason="no NVIDIA GPU on this machine (gpu marker)"))
            elif not run_gpu:
                item.add_marker(pytest.mark.skip(reason="gpu test: run `make test-gpu` (pytest --run-gpu)"))


@pytest.fixture(scope="session")
def small_models(tmp_path_factory):
    """Two small diffusers folders (class-conditional and unconditional) and their fp32 engine folders.

    Built in the default `--winograd auto` mode, so that their manifests carry a Winograd record
    (timings, filters), but with the Winograd graph always dropped: on models this small the
    build's timing of the two graphs is noise, and the tests must not depend on which graph won.
    Tests that need the Winograd graph build their own with `winograd="always"`. The same holds
    for the measured batch per CPU call: every batch runs in one call, whatever the timing said
    (tests that split a batch ask for it with `cmrt.load(..., batch_chunk=N)`).
    """
    pytest.importorskip("torch")
    from cmrt.build import cpu_batching, cpu_graph
    from cmrt.build.folder import build_engine_folder
    from cmrt.engine.options import BuildOptions

    from tests.models import save_small_model

    root = tmp_path_factory.mktemp("small-models")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cpu_graph, "MIN_GAIN", 0.99)  # kept only if 100x faster: never
        mp.setattr(cpu_batching, "MIN_BATCH_GAIN", -1.0)  # a doubling pays unless twice as slow per image: always
        for name, conditional in (("cond", True), ("uncond", False)):
            folder = save_small_model(root / f"{name}-model", conditional, "scale_shift")
            engine = build_engine_folder(
                str(folder), out=root / f"{name}-engine", options=BuildOptions(precisions=("fp32",), max_batch=8)
            )
            out[name] = (folder, engine)
    return out


@pytest.fixture
def engine_copy(small_models, tmp_path):
    """A copy of the conditional small model's engine folder, for a test to change."""
    engine = tmp_path / "engine"
    shutil.copytree(small_models["cond"][1], engine)
    return engine

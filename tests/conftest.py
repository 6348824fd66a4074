"""Shared fixtures. Slow and GPU tests are skipped *visibly* (with a reason) unless asked for."""
from __future__ import annotations

import os
import shutil

import pytest


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow (real-size models)")
    parser.addoption("--run-gpu", action="store_true", help="run tests marked gpu (needs an NVIDIA GPU)")


def _gpu_present() -> bool:
    return shutil.which("nvidia-smi") is not None or os.path.exists("/dev/nvidia0")


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--run-slow") or os.environ.get("CMRT_RUN_SLOW") == "1"
    run_gpu = config.getoption("--run-gpu") or os.environ.get("CMRT_RUN_GPU") == "1"
    gpu = _gpu_present()
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow test: run `make test-slow` (pytest --run-slow)"))
        if "gpu" in item.keywords:
            if not gpu:
                item.add_marker(pytest.mark.skip(reason="no NVIDIA GPU on this machine (gpu marker)"))
            elif not run_gpu:
                item.add_marker(pytest.mark.skip(reason="gpu test: run `make test-gpu` (pytest --run-gpu)"))

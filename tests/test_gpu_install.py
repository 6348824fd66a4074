"""How the GPU stack installs: what pyproject's gpu extras ask for and what the Makefile targets run.

TensorRT's libraries come from NVIDIA's index, so the ONNX Runtime CUDA path must install from
the public index alone (`gpu-ort`, `make setup-gpu-ort`), and cuda-bindings is asked for by name
(the cuda-python 13.4 metapackage pins cuda-bindings 13.4, not the 13.5 cmrt is checked against).
"""
from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def _names(reqs: list[str]) -> dict[str, str]:
    return {re.split(r"[\[<>=!~ ]", r, maxsplit=1)[0].lower(): r for r in reqs}


def test_gpu_extras_depend_on_cuda_bindings_and_onnxruntime_gpu_with_its_libraries():
    extras = _extras()
    assert "cuda-python" not in _names(extras["gpu"]), extras["gpu"]
    ort = _names(extras["gpu-ort"])
    assert "cuda-python" not in ort and "cuda-bindings" in ort
    assert re.search(r">=\s*13\.5", ort["cuda-bindings"]), ort["cuda-bindings"]
    assert ort["onnxruntime-gpu"].startswith("onnxruntime-gpu[cuda,cudnn]")
    assert not [r for r in extras["gpu-ort"] if r.startswith("tensorrt")]  # public index only
    gpu = _names(extras["gpu"])
    assert "cmrt" in gpu and "gpu-ort" in gpu["cmrt"] and "cuda-python" not in gpu
    assert {"tensorrt-cu13", "polygraphy", "onnx-graphsurgeon"} <= set(gpu)
    assert {"polygraphy", "onnx-graphsurgeon"} <= set(_names(extras["export"]))  # the CPU-side sanitize step


def _make_n(target: str, **vars: str) -> str:
    args = ["make", "-n", "-B", target, "VENV_GPU=/tmp/cmrt-make-n-gpu"] + [f"{k}={v}" for k, v in vars.items()]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_make_setup_gpu_names_nvidias_index_and_setup_gpu_ort_only_the_public_one():
    gpu = _make_n("setup-gpu")
    assert "'.[gpu,export,dev]' --extra-index-url https://pypi.nvidia.com" in gpu
    ort = _make_n("setup-gpu-ort")
    assert "'.[gpu-ort,export,dev]'" in ort and "index-url" not in ort


def test_make_test_gpu_runs_in_a_given_python_without_installing():
    out = _make_n("test-gpu", GPU_PY="/opt/some/python")
    assert "pip" not in out and "venv" not in out
    assert "/opt/some/python -m cmrt doctor" in out and "/opt/some/python -m pytest -q -rA --run-gpu -m gpu tests" in out

"""The simulated GPU for the CPU tests: fixtures that install the strict fakes in place of the real stack.

* `simulated_gpu`: cuda-bindings (`cuda.bindings.runtime`, tests/fakes/cuda_sim.py) and TensorRT 11
  (`tensorrt`, tests/fakes/tensorrt_sim.py) on one simulated NVIDIA GPU. polygraphy, imported for
  real, drives the fake TensorRT like the real one.
* `simulated_ort_cuda`: cuda-bindings and onnxruntime-gpu (tests/fakes/ort_cuda_sim.py: the real
  ONNX Runtime for the CPU, a simulated CUDA EP), with no TensorRT installed.

Both yield the `Sim`: its `violations` say which CUDA / TensorRT / ONNX Runtime rule was broken,
`counters` and `measure()` count host synchronizes, graph launches and enqueues. What is checked
is cmrt's own GPU code — build_plan, validate_plan, TensorRTBackend, OrtCudaBackend, the probe,
selection and cmrt.load — against the rules the real stack enforces (see the three modules).
"""
from __future__ import annotations

import sys
import types

import pytest

from .cuda_sim import Sim, build_runtime
from .ort_cuda_sim import build_onnxruntime
from .tensorrt_sim import build_tensorrt


def _forget_imported_tensorrt() -> None:
    """polygraphy imports TensorRT lazily once per process and keeps its logger: make it import again."""
    for name, module in list(sys.modules.items()):
        if not name.startswith("polygraphy"):
            continue
        for value in list(vars(module).values()):
            if type(value).__name__ == "LazyModule":
                object.__setattr__(value, "module", None)
    trt_util = sys.modules.get("polygraphy.backend.trt.util")
    if trt_util is not None:
        trt_util.TRT_LOGGER = None


def _install(monkeypatch, sim: Sim, tensorrt: bool, ort_cuda: bool) -> Sim:
    from cmrt.runtime.backends import cuda, probe

    rt = build_runtime(sim)
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = rt
    pkg = types.ModuleType("cuda")
    pkg.bindings = bindings
    for name, mod in (("cuda", pkg), ("cuda.bindings", bindings), ("cuda.bindings.runtime", rt)):
        monkeypatch.setitem(sys.modules, name, mod)
    sim.cudart = rt
    sim.trt = build_tensorrt(sim) if tensorrt else None
    monkeypatch.setitem(sys.modules, "tensorrt", sim.trt)  # None: `import tensorrt` raises ImportError
    if ort_cuda:
        import onnxruntime

        sim.ort = build_onnxruntime(sim, sys.modules.get("onnxruntime", onnxruntime))
        monkeypatch.setitem(sys.modules, "onnxruntime", sim.ort)
    monkeypatch.setattr(cuda, "_CUDART", None)
    _forget_imported_tensorrt()
    probe.probe_environment.cache_clear()
    return sim


def _simulated(monkeypatch, tensorrt: bool, ort_cuda: bool):
    from cmrt.runtime.backends import probe

    yield _install(monkeypatch, Sim(), tensorrt=tensorrt, ort_cuda=ort_cuda)
    _forget_imported_tensorrt()  # the next test may bring another TensorRT (or none)
    probe.probe_environment.cache_clear()


@pytest.fixture
def simulated_gpu(monkeypatch):
    yield from _simulated(monkeypatch, tensorrt=True, ort_cuda=False)


@pytest.fixture
def simulated_ort_cuda(monkeypatch):
    yield from _simulated(monkeypatch, tensorrt=False, ort_cuda=True)

"""ONNX Runtime on CUDA with IO binding and CUDA graphs: the GPU path where TensorRT is missing.

ONNX Runtime's CUDA graphs need fixed device addresses and fixed shapes per graph, so each
batch size gets its own IO binding over device OrtValues allocated once, and its own graph,
selected with the `gpu_graph_id` run option (ids start at 1: id = batch size; -1 would skip
capture). Inputs are copied in place into the bound device buffers (`OrtValue.update_inplace`)
and the output copied back. Runs are serialized: CUDA graphs do not allow concurrent `run`
on one session.

What this relies on in ONNX Runtime (onnxruntime-gpu 1.31, CUDA EP), and so what
`graph_batches` claims:
  * the CUDA EP's libraries load only after `onnxruntime.preload_dlls()` when CUDA and cuDNN
    come from pip (the `cuda`/`cudnn` extras); without them a session silently runs on the
    CPU, which this backend refuses (it checks `get_providers()`);
  * a graph id is captured only after ordinary runs (`min_num_runs_before_cuda_graph_capture_`
    = 2 in the CUDA EP: two regular runs, then the capturing run, which also replays), and
    ORT keeps the captured graph in the calling thread's context. So a batch size counts as
    captured once one thread has made `RUNS_BEFORE_CAPTURE + 1` runs with its graph id, never
    merely because it was bound.

If the session cannot be created with CUDA graphs (some node not on the CUDA EP), it is
created without them, with a warning.
"""
from __future__ import annotations

import logging
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...engine.io_spec import CLASS_LABELS, SAMPLE, TIMESTEP
logger = logging.getLogger(__name__)

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64, "tensor(int32)": np.int32}

# Regular runs the CUDA EP makes of a graph id before it captures it (min_num_runs_before_cuda_graph_capture_).
RUNS_BEFORE_CAPTURE = 2


def preload_cuda_libraries(ort: Any) -> str | None:
    """`onnxruntime.preload_dlls()`: load pip-installed CUDA / cuDNN before the CUDA EP needs them.

    Returns None, or why it could not (the CUDA EP may still load from system libraries)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return "this onnxruntime has no preload_dlls (onnxruntime-gpu >= 1.21 has it)"
    try:
        preload()
    except Exception as e:  # a missing library is reported, the session check decides
        return f"preload_dlls failed: {type(e).__name__}: {e}".splitlines()[0]
    return None


@dataclass
class _Binding:
    io: Any
    inputs: dict[str, Any]
    output: Any
    run_options: Any


class OrtCudaBackend:
    """One CUDA EP session; `name` 'onnxruntime', `device` 'cuda'."""

    name = "onnxruntime"
    device = "cuda"

    def __init__(
        self,
        onnx_path: str | os.PathLike,
        use_cuda_graph: bool = True,
        device_id: int = 0,
        min_batch: int = 1,
        max_batch: int | None = None,
    ):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("the ONNX Runtime CUDA backend needs onnxruntime-gpu: `pip install 'cmrt[gpu-ort]'`") from e
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(
                "this onnxruntime has no CUDAExecutionProvider; install onnxruntime-gpu (and not onnxruntime) or use device='cpu'"
            )
        self._ort = ort
        self.preload_error = preload_cuda_libraries(ort)
        self.onnx_path = Path(onnx_path)
        self.device_id = int(device_id)
        self.min_batch = int(min_batch)
        self.max_batch = None if max_batch is None else int(max_batch)
        self._lock = threading.Lock()
        self.cuda_graph = bool(use_cuda_graph)
        self.graph_error: str | None = None
        try:
            self.session = self._session(self.cuda_graph)
        except Exception as e:
            if not self.cuda_graph:
                raise
            self.graph_error = str(e).splitlines()[0] if str(e) else type(e).__name__
            msg = f"ONNX Runtime cannot use CUDA graphs for {self.onnx_path.name} ({self.graph_error}); running without them"
            logger.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            self.cuda_graph = False
            self.session = self._session(False)
        active = self.session.get_providers()
        if active[0] != "CUDAExecutionProvider":
            why = f" ({self.preload_error})" if self.preload_error else ""
            raise RuntimeError(
                f"ONNX Runtime could not load its CUDA EP and fell back to {active[0]}{why}: the CUDA or cuDNN "
                "libraries are missing; install `onnxruntime-gpu[cuda,cudnn]` (the gpu extra does)"
            )
        self.provider = active[0]
        self.inputs = {i.name: (np.dtype(_ORT_TYPES[i.type]), tuple(int(d) for d in i.shape[1:])) for i in self.session.get_inputs()}
        out = self.session.get_outputs()[0]
        self.output_name = out.name
        self.output_spec = (np.dtype(_ORT_TYPES[out.type]), tuple(int(d) for d in out.shape[1:]))
        self._bindings: dict[int, _Binding] = {}
        self._graph_runs: dict[tuple[int, int], int] = {}  # (thread id, graph id) -> runs
        logger.info("ONNX Runtime CUDA EP session for %s (CUDA graphs %s)", self.onnx_path.name, "on" if self.cuda_graph else "off")

    def _session(self, cuda_graph: bool):
        ort = self._ort
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        cuda_options = {"device_id": str(self.device_id)}
        if cuda_graph:
            cuda_options["enable_cuda_graph"] = "1"
        return ort.InferenceSession(
            str(self.onnx_path), so, providers=[("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]
        )

    def _binding(self, batch: int) -> _Binding:
        b = self._bindings.get(batch)
        if b is not None:
            return b
        ort = self._ort
        io = self.session.io_binding()
        values = {}
        for name, (dtype, tail) in self.inputs.items():
            v = ort.OrtValue.ortvalue_from_shape_and_type([batch, *tail], dtype, "cuda", self.device_id)
            io.bind_ortvalue_input(name, v)
            values[name] = v
        dtype, tail = self.output_spec
        out = ort.OrtValue.ortvalue_from_shape_and_type([batch, *tail], dtype, "cuda", self.device_id)
        io.bind_ortvalue_output(self.output_name, out)
        ro = ort.RunOptions()
        if self.cuda_graph:
            ro.add_run_config_entry("gpu_graph_id", str(batch))  # one graph per batch size; ids start at 1
        b = self._bindings[batch] = _Binding(io, values, out, ro)
        return b

    @property
    def graph_batches(self) -> list[int]:
        """Batch sizes whose graph ONNX Runtime has captured: those run often enough on one thread
        (see the module docstring); a batch size that was only bound is not among them."""
        if not self.cuda_graph:
            return []
        return sorted({graph_id for (_, graph_id), n in self._graph_runs.items() if n > RUNS_BEFORE_CAPTURE})

    def run(self, sample: np.ndarray, timestep: np.ndarray, class_labels: np.ndarray | None = None) -> np.ndarray:
        batch = int(sample.shape[0])
        if batch < 1 or batch < self.min_batch or (self.max_batch is not None and batch > self.max_batch):
            raise ValueError(f"batch {batch} is outside {self.min_batch}..{self.max_batch}")
        inputs = {SAMPLE: sample, TIMESTEP: timestep, CLASS_LABELS: class_labels}
        with self._lock:
            b = self._binding(batch)
            for name, (dtype, tail) in self.inputs.items():
                arr = inputs.get(name)
                if arr is None:
                    raise ValueError(f"this model needs the input {name!r}")
                arr = np.ascontiguousarray(arr, dtype=dtype)
                if arr.shape != (batch, *tail):
                    raise ValueError(f"input {name!r} has shape {arr.shape}, expected {(batch, *tail)}")
                b.inputs[name].update_inplace(arr)
            self.session.run_with_iobinding(b.io, b.run_options)
            if self.cuda_graph:
                key = (threading.get_ident(), batch)
                self._graph_runs[key] = self._graph_runs.get(key, 0) + 1
            return b.output.numpy()

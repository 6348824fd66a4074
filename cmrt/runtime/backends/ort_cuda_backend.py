"""ONNX Runtime on CUDA with IO binding and CUDA graphs: the GPU path where TensorRT is missing.

ONNX Runtime's CUDA graphs need fixed device addresses and fixed shapes per graph, so each
batch size gets its own IO binding over device OrtValues allocated once, and its own graph,
selected with the `gpu_graph_id` run option (ids start at 1: id = batch size). ONNX Runtime
captures a graph on the first runs of an id and replays it afterwards. Inputs are copied in
place into the bound device buffers (`OrtValue.update_inplace`) and the output copied back.
Runs are serialized: CUDA graphs do not allow concurrent `run` on one session.

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
            raise ImportError("the ONNX Runtime CUDA backend needs onnxruntime-gpu: `pip install 'cmrt[gpu]'`") from e
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(
                "this onnxruntime has no CUDAExecutionProvider; install onnxruntime-gpu (and not onnxruntime) or use device='cpu'"
            )
        self._ort = ort
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
            raise RuntimeError(f"ONNX Runtime fell back to {active[0]} although CUDA was asked for (CUDA libraries missing?)")
        self.provider = active[0]
        self.inputs = {i.name: (np.dtype(_ORT_TYPES[i.type]), tuple(int(d) for d in i.shape[1:])) for i in self.session.get_inputs()}
        out = self.session.get_outputs()[0]
        self.output_name = out.name
        self.output_spec = (np.dtype(_ORT_TYPES[out.type]), tuple(int(d) for d in out.shape[1:]))
        self._bindings: dict[int, _Binding] = {}
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
        return sorted(self._bindings) if self.cuda_graph else []

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
            return b.output.numpy()

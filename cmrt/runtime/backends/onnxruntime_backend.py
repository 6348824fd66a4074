"""ONNX Runtime on the CPU: the portable backend (CUDA is ort_cuda_backend.py's, with IO binding and CUDA graphs)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ...engine.errors import EngineFolderError
from ...engine.io_spec import INPUT_NAMES, feeds

logger = logging.getLogger(__name__)


def physical_cores() -> int:
    """Threads for ONNX Runtime's intra-op pool: one per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class OnnxRuntimeBackend:
    """One InferenceSession on the CPU, created once, run with plain numpy feeds."""

    name = "onnxruntime"
    device = "cpu"

    def __init__(
        self,
        onnx_path: str | os.PathLike,
        threads: int | None = None,
        extra_inputs: dict[str, np.ndarray] | None = None,
    ):
        """`extra_inputs`: constant arrays fed on every call besides the sample (a Winograd
        graph's transformed filters); ONNX Runtime reads them in place, without a copy."""
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError(
                "the ONNX Runtime backend needs onnxruntime: `pip install 'cmrt[cpu]'` "
                "(or 'cmrt[gpu]' for CUDA; never both)"
            ) from e
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = threads or physical_cores()
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(Path(onnx_path)), so, providers=["CPUExecutionProvider"])
        self.provider = self.session.get_providers()[0]
        self.threads = so.intra_op_num_threads
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.extra_inputs = dict(extra_inputs or {})
        missing = [n for n in self.input_names if n not in INPUT_NAMES and n not in self.extra_inputs]
        if missing:
            raise EngineFolderError(
                f"{onnx_path} needs inputs {missing[:3]}{'...' if len(missing) > 3 else ''} that its engine folder "
                "does not provide; rebuild the folder with `cmrt build`"
            )
        self.output_name = self.session.get_outputs()[0].name
        logger.info("ONNX Runtime session on %s (%d threads) for %s", self.provider, self.threads, onnx_path)

    def run(self, sample: np.ndarray, timestep: np.ndarray, class_labels: np.ndarray | None = None) -> np.ndarray:
        inputs = feeds(sample, timestep, class_labels)
        if self.extra_inputs:
            inputs.update(self.extra_inputs)
        return self.session.run([self.output_name], inputs)[0]

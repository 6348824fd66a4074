"""ONNX Runtime on the CPU: the portable backend (CUDA is ort_cuda_backend.py's, with IO binding and CUDA graphs)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ...engine.io_spec import INPUT_NAMES, feeds

logger = logging.getLogger(__name__)


def physical_cores() -> int:
    """Threads for ONNX Runtime's intra-op pool: one per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def max_threads() -> int:
    """The largest intra-op pool cmrt asks for: 4 per core of the machine. More only slows a pool
    down, and a huge one crashes ONNX Runtime and OpenVINO (threads=10**6 segfaults)."""
    return 4 * max(1, os.cpu_count() or 1)


def check_threads(threads) -> int | None:
    """`threads` for ONNX Runtime / OpenVINO: None (one per core) or an integer in 1..max_threads()."""
    if threads is None:
        return None
    limit = max_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= limit:
        raise ValueError(
            f"threads must be an integer in 1..{limit} (4 per core of this machine), or None for one per core; got {threads!r}"
        )
    return threads


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
        threads = check_threads(threads)
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
            raise ValueError(f"{onnx_path} needs inputs {missing[:3]}{'...' if len(missing) > 3 else ''} that were not given")
        self.output_name = self.session.get_outputs()[0].name
        logger.info("ONNX Runtime session on %s (%d threads) for %s", self.provider, self.threads, onnx_path)

    def run(self, sample: np.ndarray, timestep: np.ndarray, class_labels: np.ndarray | None = None) -> np.ndarray:
        inputs = feeds(sample, timestep, class_labels)
        if self.extra_inputs:
            inputs.update(self.extra_inputs)
        return self.session.run([self.output_name], inputs)[0]

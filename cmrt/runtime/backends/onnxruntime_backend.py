"""ONNX Runtime on the CPU: the portable backend (CUDA is ort_cuda_backend.py's, with IO binding and CUDA graphs).

Given a step graph (cmrt/build/step_graph.py) instead of a plain UNet graph, the backend
runs generation step by step through it (`run_steps`), and plain UNet calls through the
same session (its F output), so the weights are in memory once.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ...engine.errors import EngineFolderError
from ...engine.io_spec import (
    CLASS_LABELS,
    INPUT_NAMES,
    OUTPUT,
    SAMPLE,
    STEP_COEF_ORDER,
    STEP_INPUT_NAMES,
    STEP_OUTPUT,
    STEP_X,
    UNET_ONLY_COEFS,
    feeds,
    step_feeds,
)
from ..sampling import through_step_graph

logger = logging.getLogger(__name__)


def physical_cores() -> int:
    """Threads for ONNX Runtime's intra-op pool: one per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class OnnxRuntimeBackend:
    """One InferenceSession on the CPU, created once, run with plain numpy feeds.
    `step_graph` is True when the session runs a step graph (see the module docstring)."""

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
        self.step_graph = STEP_X in self.input_names
        self.extra_inputs = dict(extra_inputs or {})
        known = STEP_INPUT_NAMES if self.step_graph else INPUT_NAMES
        missing = [n for n in self.input_names if n not in known and n not in self.extra_inputs]
        if missing:
            raise EngineFolderError(
                f"{onnx_path} needs inputs {missing[:3]}{'...' if len(missing) > 3 else ''} that its engine folder "
                "does not provide; rebuild the folder with `cmrt build`"
            )
        self.conditional = CLASS_LABELS in self.input_names
        self.output_name = OUTPUT if self.step_graph else self.session.get_outputs()[0].name
        self._unet_only = np.array([UNET_ONLY_COEFS[n] for n in STEP_COEF_ORDER], dtype=np.float32)
        self._zeros: dict[tuple[int, ...], np.ndarray] = {}
        self._zeros_lock = threading.Lock()
        logger.info("ONNX Runtime session on %s (%d threads) for %s%s", self.provider, self.threads, onnx_path,
                    " (step graph)" if self.step_graph else "")

    def _zeros_like(self, a: np.ndarray) -> np.ndarray:
        """A read-only float32 zero array of `a`'s shape, made once per shape (ONNX Runtime never writes inputs)."""
        z = self._zeros.get(a.shape)
        if z is None:
            z = np.zeros(a.shape, dtype=np.float32)
            z.setflags(write=False)
            with self._zeros_lock:
                z = self._zeros.setdefault(a.shape, z)
        return z

    def _feeds(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.extra_inputs:
            inputs.update(self.extra_inputs)
        return inputs

    def run(self, sample: np.ndarray, timestep: np.ndarray, class_labels: np.ndarray | None = None) -> np.ndarray:
        if self.step_graph:  # F of the step graph, with x / 1 as the UNet's input
            inputs = step_feeds(sample, timestep, class_labels, self._unet_only, self._zeros_like(sample))
        else:
            inputs = feeds(sample, timestep, class_labels)
        return self.session.run([self.output_name], self._feeds(inputs))[0]

    def run_step(self, x: np.ndarray, timestep: np.ndarray, class_labels: np.ndarray | None, coefs: np.ndarray,
                 noise_term: np.ndarray | None) -> np.ndarray:
        """One whole consistency step through the step graph: x_next (a new array)."""
        if not self.step_graph:
            raise RuntimeError("this ONNX Runtime session runs a plain UNet graph, not a step graph; load with step_graph=True")
        term = self._zeros_like(x) if noise_term is None else noise_term
        return self.session.run([STEP_OUTPUT], self._feeds(step_feeds(x, timestep, class_labels, coefs, term)))[0]

    def run_steps(self, sample: np.ndarray, timesteps: Sequence[np.ndarray], class_labels: np.ndarray | None,
                  coefs: np.ndarray, renoise: np.ndarray | None,
                  on_step: Callable[[int, np.ndarray], None] | None = None) -> np.ndarray:
        """Every step of a generation through the step graph (the pipeline's loop when `step_graph`)."""
        return through_step_graph(self.run_step, sample, timesteps, class_labels, coefs, renoise, on_step)

    def warmup(self, batch_sizes: Sequence[int]) -> None:
        """One call per batch size, so that the first request does not pay for ONNX Runtime's
        first-run allocations at its shape (one session: the step graph's calls are the same run)."""
        first = STEP_X if self.step_graph else SAMPLE
        shape = next(i.shape[1:] for i in self.session.get_inputs() if i.name == first)
        for b in batch_sizes:
            x = np.zeros((b, *shape), dtype=np.float32)
            labels = np.zeros(b, dtype=np.int64) if self.conditional else None
            t = np.zeros(b, dtype=np.float32)
            if self.step_graph:
                self.run_step(x, t, labels, self._unet_only, None)
            else:
                self.run(x, t, labels)

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
    BATCHED_INPUTS,
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


def import_onnxruntime():
    """onnxruntime, or an ImportError that says which extra installs it."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError(
            "the ONNX Runtime backend needs onnxruntime: `pip install 'cmrt[cpu]'` "
            "(or 'cmrt[gpu]' for CUDA; never both)"
        ) from e
    return ort


def max_threads() -> int:
    """The largest intra-op pool cmrt asks for: 4 per core of the machine. More only slows a pool
    down, and a huge one crashes ONNX Runtime and OpenVINO (threads=10**6 segfaults)."""
    return 4 * max(1, os.cpu_count() or 1)


def check_batch_chunk(batch_chunk) -> int | None:
    """`batch_chunk` for ONNX Runtime on the CPU: None (the whole batch in one call) or an integer >= 1."""
    if batch_chunk is None:
        return None
    if isinstance(batch_chunk, bool) or not isinstance(batch_chunk, int) or batch_chunk < 1:
        raise ValueError(f"batch_chunk must be an integer >= 1 (the most images per call), None for the whole batch "
                         f"in one call, or (in cmrt.load) \"auto\" for what the build measured; got {batch_chunk!r}")
    return batch_chunk


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
    """One InferenceSession on the CPU, created once, run with plain numpy feeds.
    `step_graph` is True when the session runs a step graph (see the module docstring)."""

    name = "onnxruntime"
    device = "cpu"

    def __init__(
        self,
        onnx_path: str | os.PathLike,
        threads: int | None = None,
        extra_inputs: dict[str, np.ndarray] | None = None,
        graph_id: str | None = None,
        batch_chunk: int | None = None,
    ):
        """`extra_inputs`: constant arrays fed on every call besides the sample (a Winograd
        graph's transformed filters, memory-mapped from the folder); ONNX Runtime reads them in
        place, without a copy. `graph_id`: a digest of every file the graph reads (the engine
        folder's checksums); with it the optimized graph is cached (`ort_graph_cache`) and later
        sessions open from the cache. `check_cache` must then be called before the first run.
        `batch_chunk`: the most images per call; a larger batch runs as consecutive calls of at most
        that many, whose outputs are joined (cmrt/build/cpu_batching.py says why). None: one call."""
        ort = import_onnxruntime()
        threads = check_threads(threads)
        self.batch_chunk = check_batch_chunk(batch_chunk)
        self.onnx_path = Path(onnx_path)
        self.threads = threads or physical_cores()
        self.graph_id = graph_id
        self.cache_entry = None
        self.cache = "off"  # "hit", "written" or "off": where the session came from
        self.session = self._open(ort)
        self.provider = self.session.get_providers()[0]
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
        logger.info("ONNX Runtime session on %s (%d threads, graph cache %s) for %s%s", self.provider, self.threads,
                    self.cache, onnx_path, " (step graph)" if self.step_graph else "")

    def _options(self, ort, optimize: bool):
        so = ort.SessionOptions()
        # A cached graph is optimized already: opening it with the optimizers on would only redo work.
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # ONNX Runtime's memory pattern plans one block for a shape's activations at its second
        # call, while the arena still holds the first call's: peak memory then grows by a whole
        # second set of activations, for no measurable speed (docs/benchmarks.md).
        so.enable_mem_pattern = False
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        return so

    def _session_key_options(self) -> dict:
        """Every session option the optimized graph may depend on: part of the cache key."""
        return {"level": "ORT_ENABLE_ALL", "execution_mode": "sequential", "intra_op_threads": self.threads,
                "inter_op_threads": 1, "providers": ["CPUExecutionProvider"]}

    def _open(self, ort):
        providers = ["CPUExecutionProvider"]
        if self.graph_id is None:
            return ort.InferenceSession(str(self.onnx_path), self._options(ort, True), providers=providers)
        from . import ort_graph_cache

        key = ort_graph_cache.cache_key(self.graph_id, self._session_key_options())
        entry = ort_graph_cache.find(key)
        if entry is not None:
            try:
                session = ort.InferenceSession(str(entry.graph), self._options(ort, False), providers=providers)
                self.cache_entry, self.cache = entry, "hit"
                return session
            except Exception as e:  # an entry ONNX Runtime cannot open: rebuild it
                logger.warning("ONNX Runtime could not open its cached graph %s (%s); rebuilding it", entry.graph, e)
                entry.verification.failures()  # let its hashing threads finish before the files go
                ort_graph_cache.discard(entry.folder)

        def create(optimized_path):
            so = self._options(ort, True)
            if optimized_path is not None:
                so.optimized_model_filepath = str(optimized_path)
                for k, v in ort_graph_cache.SAVE_CONFIG.items():
                    so.add_session_config_entry(k, v)
            return ort.InferenceSession(str(self.onnx_path), so, providers=providers)

        self.cache = "written"
        return ort_graph_cache.write(key, create)

    def check_cache(self) -> None:
        """Join the cached graph's hash check: on a mismatch, reopen the session from the exported graph."""
        entry, self.cache_entry = self.cache_entry, None
        if entry is None or entry.check():
            return
        ort = import_onnxruntime()
        self.session = ort.InferenceSession(str(self.onnx_path), self._options(ort, True), providers=["CPUExecutionProvider"])
        self.cache = "off"

    def _zeros_like(self, a: np.ndarray) -> np.ndarray:
        """A read-only float32 zero array of `a`'s shape, made once per shape (ONNX Runtime never writes inputs)."""
        z = self._zeros.get(a.shape)
        if z is None:
            z = np.zeros(a.shape, dtype=np.float32)
            z.setflags(write=False)
            with self._zeros_lock:
                z = self._zeros.setdefault(a.shape, z)
        return z

    def _call(self, output: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """One output of the session on `inputs` (plus the constant inputs), in calls of at most
        `batch_chunk` images: slices of the batched inputs, which are views, not copies."""
        if self.extra_inputs:
            inputs.update(self.extra_inputs)
        calls = self.call_batches(len(inputs[STEP_X if self.step_graph else SAMPLE]))
        if len(calls) == 1:
            return self.session.run([output], inputs)[0]
        parts, start = [], 0
        for n in calls:
            parts.append(self.session.run([output], {k: v[start:start + n] if k in BATCHED_INPUTS else v
                                                     for k, v in inputs.items()})[0])
            start += n
        return np.concatenate(parts)

    def run(self, sample: np.ndarray, timestep: np.ndarray, class_labels: np.ndarray | None = None) -> np.ndarray:
        if self.step_graph:  # F of the step graph, with x / 1 as the UNet's input
            inputs = step_feeds(sample, timestep, class_labels, self._unet_only, self._zeros_like(sample))
        else:
            inputs = feeds(sample, timestep, class_labels)
        return self._call(self.output_name, inputs)

    def run_step(self, x: np.ndarray, timestep: np.ndarray, class_labels: np.ndarray | None, coefs: np.ndarray,
                 noise_term: np.ndarray | None) -> np.ndarray:
        """One whole consistency step through the step graph: x_next (a new array)."""
        if not self.step_graph:
            raise RuntimeError("this ONNX Runtime session runs a plain UNet graph, not a step graph; load with step_graph=True")
        term = self._zeros_like(x) if noise_term is None else noise_term
        return self._call(STEP_OUTPUT, step_feeds(x, timestep, class_labels, coefs, term))

    def run_steps(self, sample: np.ndarray, timesteps: Sequence[np.ndarray], class_labels: np.ndarray | None,
                  coefs: np.ndarray, renoise: np.ndarray | None,
                  on_step: Callable[[int, np.ndarray], None] | None = None) -> np.ndarray:
        """Every step of a generation through the step graph (the pipeline's loop when `step_graph`)."""
        return through_step_graph(self.run_step, sample, timesteps, class_labels, coefs, renoise, on_step)

    def call_batches(self, batch: int) -> list[int]:
        """The batch of each session call that a batch of `batch` images runs as (`batch_chunk`)."""
        chunk = self.batch_chunk
        if chunk is None or batch <= chunk:
            return [batch]
        return [min(chunk, batch - i) for i in range(0, batch, chunk)]

    def warmup(self, batch_sizes: Sequence[int]) -> None:
        """One call per shape the batch sizes' calls run at, so that the first request does not pay
        for ONNX Runtime's first-run allocations at its shape (one session: the step graph's calls
        are the same run; with a `batch_chunk`, batches over it share the chunk's shape)."""
        first = STEP_X if self.step_graph else SAMPLE
        shape = next(i.shape[1:] for i in self.session.get_inputs() if i.name == first)
        shapes = dict.fromkeys(n for b in batch_sizes for n in self.call_batches(b))  # in order, once each
        for b in shapes:
            x = np.zeros((b, *shape), dtype=np.float32)
            labels = np.zeros(b, dtype=np.int64) if self.conditional else None
            t = np.zeros(b, dtype=np.float32)
            if self.step_graph:
                self.run_step(x, t, labels, self._unet_only, None)
            else:
                self.run(x, t, labels)

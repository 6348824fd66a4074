"""TensorRT backend: a deserialized engine driven through cuda-python, with CUDA graphs.

Same contract as the ONNX Runtime backend — `run(sample, timestep, class_labels)` on fp32
/ int64 numpy arrays, returning the fp32 UNet output — so the numpy scheduler stays the
single source of sampling math.

Per batch size b (created on first use, then reused):
  one execution context (user-managed scratch memory shared by all contexts: they run one
  after another on one stream), input shapes set to b, tensor addresses bound to buffers
  allocated once for the profile's max batch (one 256-byte-aligned pool), a warm-up
  `execute_async_v3` that flushes deferred shape updates, then a CUDA graph captured from a
  second enqueue and replayed on every later call. If capture fails, that batch size falls
  back to plain enqueue with a warning. Host data goes through pinned staging buffers.

Threads: every call holds one lock, so a `close()` never frees memory a replay is still using,
and each call first makes the backend's GPU current in the calling thread (the current CUDA
device is per host thread, and a `run()` may come from any thread). The engine's I/O tensors
are checked against the manifest at load (names and dtypes).
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
from . import cuda

logger = logging.getLogger(__name__)

_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}
# TensorRT's DataType members by the manifest's dtype names (TensorRT 11 has no `nptype`).
_TRT_DTYPES = {"float32": "FLOAT", "float16": "HALF", "int64": "INT64", "int32": "INT32"}


@dataclass
class _Slot:
    context: Any
    graph: cuda.CudaGraph | None


class TensorRTBackend:
    """One TensorRT engine on one GPU; `name` 'tensorrt', `device` 'cuda'."""

    name = "tensorrt"
    device = "cuda"

    def __init__(
        self,
        plan_path: str | os.PathLike,
        io_spec: dict[str, Any],
        profile: tuple[int, int, int],
        use_cuda_graph: bool = True,
        device_index: int = 0,
    ):
        """`io_spec`: the manifest's {"inputs": [...], "outputs": [...]} (names, dtypes, shapes with 'batch' first)."""
        try:
            import tensorrt as trt
        except Exception as e:
            raise ImportError(f"the TensorRT backend needs TensorRT 11 (`pip install 'cmrt[gpu]' --extra-index-url https://pypi.nvidia.com`): {e}") from e
        self._closed = True  # until fully constructed
        self._lock = threading.Lock()
        self.plan_path = Path(plan_path)
        self.min_batch, self.opt_batch, self.max_batch = (int(v) for v in profile)
        self.use_cuda_graph = bool(use_cuda_graph)
        self.device_index = int(device_index)
        cuda.set_device(self.device_index)

        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._trt_logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self._engine is None:
            raise RuntimeError(
                f"TensorRT could not deserialize {self.plan_path.name} (built by another TensorRT version or for "
                "another GPU?); rebuild it with `cmrt build ... --backend tensorrt`"
            )
        self.provider = f"TensorRT {trt.__version__}"
        self.input_names = [t["name"] for t in io_spec["inputs"]]
        self.output_names = [t["name"] for t in io_spec["outputs"]]
        engine_names = {self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)}
        if engine_names != set(self.input_names + self.output_names):
            raise RuntimeError(
                f"{self.plan_path.name} has I/O tensors {sorted(engine_names)}, the manifest says "
                f"{sorted(self.input_names + self.output_names)}; rebuild the engine"
            )
        specs = {t["name"]: t for t in io_spec["inputs"] + io_spec["outputs"]}
        self._check_io(trt, specs)
        self._dtypes = {n: np.dtype(_NP_DTYPES[specs[n]["dtype"]]) for n in specs}
        self._tail = {n: tuple(int(d) for d in specs[n]["shape"][1:]) for n in specs}

        self._stream = None
        self._pool = None
        self._scratch = None
        self._host: dict[str, cuda.PinnedArray] = {}
        self._slots: dict[int, _Slot] = {}
        self.graph_failures: dict[int, str] = {}
        try:
            self._stream = cuda.Stream()
            names = self.input_names + self.output_names
            sizes = [self.max_batch * int(np.prod(self._tail[n], dtype=np.int64)) * self._dtypes[n].itemsize for n in names]
            offsets, total = cuda.aligned_layout(sizes)
            self._pool = cuda.DeviceBuffer(total)
            self._addr = {n: self._pool.ptr + off for n, off in zip(names, offsets)}
            for n in names:
                self._host[n] = cuda.PinnedArray((self.max_batch, *self._tail[n]), self._dtypes[n])
            self._scratch = cuda.DeviceBuffer(int(self._engine.device_memory_size_v2))
            self._alloc_strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
        except BaseException:
            self._closed = False
            self.close()
            raise
        self._closed = False
        logger.info(
            "TensorRT engine %s on GPU %d: batch %d..%d, %.1f MiB I/O + %.1f MiB scratch, CUDA graphs %s",
            self.plan_path.name, self.device_index, self.min_batch, self.max_batch, total / 2**20,
            self._scratch.nbytes / 2**20, "on" if self.use_cuda_graph else "off",
        )

    def _check_io(self, trt: Any, specs: dict[str, Any]) -> None:
        """The engine's I/O dtypes must be the manifest's: the pinned staging buffers and the copies
        are sized from the manifest, so a mismatch would corrupt memory instead of failing."""
        problems = []
        for name, spec in specs.items():
            want = _TRT_DTYPES.get(spec["dtype"])
            if want is None:
                problems.append(f"{name!r} has dtype {spec['dtype']!r} in the manifest, which this backend cannot feed")
                continue
            got = self._engine.get_tensor_dtype(name)
            if got != getattr(trt.DataType, want):
                problems.append(f"{name!r} is {getattr(got, 'name', got)} in the engine, {spec['dtype']} in the manifest")
        if problems:
            raise RuntimeError(
                f"{self.plan_path.name} does not match the folder's manifest: " + "; ".join(problems)
                + "; rebuild the engine with `cmrt build ... --backend tensorrt`"
            )

    # --- per batch size -------------------------------------------------------------------
    def _enqueue(self, context: Any) -> None:
        if not context.execute_async_v3(self._stream.ptr):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.plan_path.name}")

    def _slot(self, batch: int) -> _Slot:
        slot = self._slots.get(batch)
        if slot is not None:
            return slot
        ctx = self._engine.create_execution_context(self._alloc_strategy)
        if ctx is None:
            raise RuntimeError(f"TensorRT could not create an execution context for batch {batch}")
        ctx.set_device_memory(self._scratch.ptr, self._scratch.nbytes)
        for n in self.input_names:
            if not ctx.set_input_shape(n, (batch, *self._tail[n])):
                raise RuntimeError(f"TensorRT rejected input shape {(batch, *self._tail[n])} for {n!r}")
        for n in self.input_names + self.output_names:
            if not ctx.set_tensor_address(n, self._addr[n]):
                raise RuntimeError(f"TensorRT rejected the address of {n!r}")
        for n in self.output_names:
            shape = tuple(ctx.get_tensor_shape(n))
            if shape != (batch, *self._tail[n]):
                raise RuntimeError(f"TensorRT output {n!r} has shape {shape} at batch {batch}, expected {(batch, *self._tail[n])}")
        self._enqueue(ctx)  # warm-up: flushes deferred updates so capture records only kernels
        self._stream.synchronize()
        graph = None
        if self.use_cuda_graph:
            try:
                graph = cuda.CudaGraph.capture(self._stream, lambda: self._enqueue(ctx))
            except Exception as e:
                self.graph_failures[batch] = str(e)
                msg = f"CUDA graph capture failed for batch {batch} ({e}); using plain enqueue for it"
                logger.warning(msg)
                warnings.warn(msg, RuntimeWarning, stacklevel=3)
                self._stream.synchronize()
        slot = self._slots[batch] = _Slot(ctx, graph)
        return slot

    @property
    def graph_batches(self) -> list[int]:
        """Batch sizes whose calls replay a captured CUDA graph."""
        return sorted(b for b, s in self._slots.items() if s.graph is not None)

    # --- the contract -----------------------------------------------------------------------
    def run(self, sample: np.ndarray, timestep: np.ndarray, class_labels: np.ndarray | None = None) -> np.ndarray:
        batch = int(sample.shape[0])
        if not self.min_batch <= batch <= self.max_batch:
            raise ValueError(
                f"batch {batch} is outside this TensorRT engine's profile {self.min_batch}..{self.max_batch}; "
                f"rebuild it with `cmrt build ... --backend tensorrt --max-batch {batch}`"
            )
        inputs = {SAMPLE: sample, TIMESTEP: timestep, CLASS_LABELS: class_labels}
        with self._lock:
            if self._closed:
                raise RuntimeError("this TensorRT backend was closed")
            cuda.set_device(self.device_index)  # this thread's current device may be another GPU
            slot = self._slot(batch)
            for n in self.input_names:
                arr = inputs.get(n)
                if arr is None:
                    raise ValueError(f"this engine needs the input {n!r}")
                arr = np.asarray(arr)
                want = (batch, *self._tail[n])
                if arr.shape != want:
                    raise ValueError(f"input {n!r} has shape {arr.shape}, expected {want}")
                host = self._host[n].array[:batch]
                np.copyto(host, arr, casting="same_kind")
                cuda.copy_htod_async(self._addr[n], host, self._stream)
            if slot.graph is not None:
                slot.graph.launch(self._stream)
            else:
                self._enqueue(slot.context)
            out_name = self.output_names[0]
            out = self._host[out_name].array[:batch]
            cuda.copy_dtoh_async(out, self._addr[out_name], self._stream)
            self._stream.synchronize()
            return out.copy()

    def close(self) -> None:
        """Free graphs, contexts and buffers (also done at garbage collection).

        Takes the lock, so it waits for a `run()` in another thread to finish with the memory."""
        lock = getattr(self, "_lock", None)
        if lock is None:  # the constructor failed before the lock existed
            return
        with lock:
            if self._closed:
                return
            self._closed = True
            self._free()

    def _free(self) -> None:
        try:
            cuda.set_device(self.device_index)
            if self._stream is not None and self._stream.handle is not None:
                self._stream.synchronize()
        except Exception:  # pragma: no cover - teardown after a CUDA error
            pass
        for slot in self._slots.values():
            if slot.graph is not None:
                slot.graph.close()
        self._slots.clear()
        for h in self._host.values():
            h.close()
        self._host.clear()
        for buf in (self._scratch, self._pool):
            if buf is not None:
                buf.close()
        if self._stream is not None:
            self._stream.close()

    def __del__(self) -> None:  # pragma: no cover - depends on GC timing
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"TensorRTBackend({self.plan_path.name!r}, batch {self.min_batch}..{self.max_batch}, graphs {self.graph_batches})"

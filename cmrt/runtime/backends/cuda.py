"""Thin helpers over cuda-python's runtime API (cuda-python 13: `cuda.bindings.runtime`).

Only what the GPU backends need: error checks, a non-blocking stream, device and pinned
host buffers, async copies and fills, CUDA events (timing), and CUDA graph capture/replay. cuda-python returns a tuple
`(err, *values)` from every call; `check` turns a non-success `err` into a `CudaError`
and returns the value(s).

Nothing here is imported by `import cmrt` or `import cmrt.runtime`: cuda-python is loaded
on first use, so the module itself imports on any machine (the pure helpers, such as
`aligned_layout`, are unit-tested on the CPU).
"""
from __future__ import annotations

import ctypes
import logging
from typing import Any, Callable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

# TensorRT wants every I/O address 256-byte aligned; cudaMalloc already returns such
# addresses, and sub-allocations from one pool keep it with `aligned_layout`.
ALIGNMENT = 256

_CUDART = None


class CudaError(RuntimeError):
    """A CUDA runtime call failed."""


def cudart_module():
    """`cuda.bindings.runtime`, imported on first use, with a clear message when missing."""
    global _CUDART
    if _CUDART is None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError as e:
            raise ImportError(
                "the GPU path needs cuda-bindings 13 (`from cuda.bindings import runtime`): "
                "`pip install 'cmrt[gpu-ort]'` (cuda-bindings) on a machine with an NVIDIA driver"
            ) from e
        _CUDART = cudart
    return _CUDART


def _error_text(err: Any) -> str:
    cudart = cudart_module()
    try:
        _, name = cudart.cudaGetErrorName(err)
        _, text = cudart.cudaGetErrorString(err)
        name = name.decode() if isinstance(name, bytes) else str(name)
        text = text.decode() if isinstance(text, bytes) else str(text)
        return f"{name}: {text}"
    except Exception:  # pragma: no cover - only on a broken install
        return str(err)


def check(result: Any, what: str = "CUDA call") -> Any:
    """Raise `CudaError` unless `result` (cuda-python's `(err, *values)`) is a success.

    Returns None, the single value, or a tuple of values.
    """
    cudart = cudart_module()
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if err != cudart.cudaError_t.cudaSuccess:
        raise CudaError(f"{what} failed: {_error_text(err)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


# --- pure helpers (no CUDA needed) ------------------------------------------------------
def align_up(n: int, alignment: int = ALIGNMENT) -> int:
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"alignment must be a positive power of two, got {alignment}")
    return (int(n) + alignment - 1) // alignment * alignment


def aligned_layout(sizes: Sequence[int], alignment: int = ALIGNMENT) -> tuple[list[int], int]:
    """Offsets of buffers of `sizes` bytes packed into one pool, each `alignment`-aligned, and the pool size."""
    offsets, total = [], 0
    for size in sizes:
        if size < 0:
            raise ValueError(f"buffer sizes must be >= 0, got {size}")
        offsets.append(total)
        total = align_up(total + max(int(size), 1), alignment)
    return offsets, max(total, alignment)


def version_string(v: int) -> str:
    """CUDA's integer versions (13000, 12080) as '13.0', '12.8'."""
    v = int(v)
    return f"{v // 1000}.{(v % 1000) // 10}"


# --- device facts -------------------------------------------------------------------------
def device_count() -> int:
    cudart = cudart_module()
    return int(check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount"))


def set_device(index: int = 0) -> None:
    cudart = cudart_module()
    check(cudart.cudaSetDevice(int(index)), f"cudaSetDevice({index})")


def device_properties(index: int = 0) -> dict[str, Any]:
    """Name, compute capability and memory of GPU `index`."""
    cudart = cudart_module()
    prop = check(cudart.cudaGetDeviceProperties(int(index)), f"cudaGetDeviceProperties({index})")
    name = prop.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\x00", 1)[0].decode(errors="replace")
    return {
        "index": int(index),
        "name": str(name).strip(),
        "compute_capability": (int(prop.major), int(prop.minor)),
        "total_memory_bytes": int(prop.totalGlobalMem),
    }


def driver_and_runtime_versions() -> tuple[str, str]:
    """(driver's highest supported CUDA version, the CUDA runtime's version), e.g. ('13.0', '13.0')."""
    cudart = cudart_module()
    drv = check(cudart.cudaDriverGetVersion(), "cudaDriverGetVersion")
    rt = check(cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
    return version_string(drv), version_string(rt)


# --- streams, buffers, copies ----------------------------------------------------------
class Stream:
    """A non-blocking CUDA stream (never the legacy default stream)."""

    def __init__(self) -> None:
        cudart = cudart_module()
        self.handle = check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")

    @property
    def ptr(self) -> int:
        """The raw handle, as TensorRT's `execute_async_v3` wants it."""
        return int(self.handle)

    def synchronize(self) -> None:
        cudart = cudart_module()
        check(cudart.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.handle is not None:
            cudart = cudart_module()
            check(cudart.cudaStreamDestroy(self.handle), "cudaStreamDestroy")
            self.handle = None


class DeviceBuffer:
    """`nbytes` of device memory from cudaMalloc (256-byte aligned), freed by `close`."""

    def __init__(self, nbytes: int) -> None:
        cudart = cudart_module()
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(check(cudart.cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes})"))
        if self.ptr % ALIGNMENT:
            raise CudaError(f"cudaMalloc returned an address not {ALIGNMENT}-byte aligned")

    def close(self) -> None:
        if self.ptr:
            cudart = cudart_module()
            check(cudart.cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


class PinnedArray:
    """A numpy array over page-locked host memory (cudaMallocHost), for truly async copies."""

    def __init__(self, shape: Sequence[int], dtype: Any) -> None:
        cudart = cudart_module()
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(s) for s in shape)
        count = int(np.prod(self.shape)) if self.shape else 1
        self.nbytes = max(count * self.dtype.itemsize, 1)
        self.ptr = int(check(cudart.cudaMallocHost(self.nbytes), f"cudaMallocHost({self.nbytes})"))
        raw = (ctypes.c_byte * self.nbytes).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=self.dtype, count=count).reshape(self.shape)

    def close(self) -> None:
        if self.ptr:
            cudart = cudart_module()
            self.array = None
            check(cudart.cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0


def copy_htod_async(dst_ptr: int, host: np.ndarray, stream: Stream) -> None:
    cudart = cudart_module()
    check(
        cudart.cudaMemcpyAsync(dst_ptr, host.ctypes.data, host.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.handle),
        "cudaMemcpyAsync(host to device)",
    )


def copy_dtoh_async(host: np.ndarray, src_ptr: int, stream: Stream) -> None:
    cudart = cudart_module()
    check(
        cudart.cudaMemcpyAsync(host.ctypes.data, src_ptr, host.nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.handle),
        "cudaMemcpyAsync(device to host)",
    )


def copy_dtod_async(dst_ptr: int, src_ptr: int, nbytes: int, stream: Stream) -> None:
    """Device to device on `stream` (legal inside a stream capture: it becomes a graph node)."""
    cudart = cudart_module()
    check(
        cudart.cudaMemcpyAsync(dst_ptr, src_ptr, int(nbytes), cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream.handle),
        "cudaMemcpyAsync(device to device)",
    )


def memset_async(dst_ptr: int, value: int, nbytes: int, stream: Stream) -> None:
    """Fill `nbytes` of device memory with the byte `value` on `stream` (capturable, like a copy)."""
    cudart = cudart_module()
    check(cudart.cudaMemsetAsync(dst_ptr, int(value), int(nbytes), stream.handle), "cudaMemsetAsync")


# --- events ------------------------------------------------------------------------------
class Event:
    """A CUDA event that records timing, for measuring GPU time between two points of a stream.

    `record(stream)` enqueues it; `elapsed_ms(start, end)` reads the time between two recorded
    events once both have completed (after a synchronize that covers them: it never waits)."""

    def __init__(self) -> None:
        cudart = cudart_module()
        self.handle = check(cudart.cudaEventCreateWithFlags(cudart.cudaEventDefault), "cudaEventCreateWithFlags")

    def record(self, stream: Stream) -> None:
        cudart = cudart_module()
        check(cudart.cudaEventRecord(self.handle, stream.handle), "cudaEventRecord")

    @staticmethod
    def elapsed_ms(start: "Event", end: "Event") -> float:
        cudart = cudart_module()
        return float(check(cudart.cudaEventElapsedTime(start.handle, end.handle), "cudaEventElapsedTime"))

    def close(self) -> None:
        if self.handle is not None:
            cudart = cudart_module()
            check(cudart.cudaEventDestroy(self.handle), "cudaEventDestroy")
            self.handle = None


# --- CUDA graphs ------------------------------------------------------------------------
class CudaGraph:
    """One captured and instantiated CUDA graph, replayed with `launch`."""

    def __init__(self, graph: Any, graph_exec: Any) -> None:
        self.graph = graph
        self.graph_exec = graph_exec

    @classmethod
    def capture(cls, stream: Stream, work: Callable[[], None]) -> "CudaGraph":
        """Capture what `work()` enqueues on `stream`. On failure the stream is left usable and the error raised."""
        cudart = cudart_module()
        check(
            cudart.cudaStreamBeginCapture(stream.handle, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
            "cudaStreamBeginCapture",
        )
        try:
            work()
        except BaseException:
            result = cudart.cudaStreamEndCapture(stream.handle)  # end the (invalidated) capture whatever happened
            if result[0] == cudart.cudaError_t.cudaSuccess and result[1] is not None:
                cudart.cudaGraphDestroy(result[1])
            cudart.cudaGetLastError()  # capture errors are not sticky; clear them
            raise
        try:
            graph = check(cudart.cudaStreamEndCapture(stream.handle), "cudaStreamEndCapture")
        except CudaError:
            cudart.cudaGetLastError()
            raise
        try:
            graph_exec = check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        except CudaError:
            cudart.cudaGraphDestroy(graph)
            cudart.cudaGetLastError()
            raise
        return cls(graph, graph_exec)

    def launch(self, stream: Stream) -> None:
        cudart = cudart_module()
        check(cudart.cudaGraphLaunch(self.graph_exec, stream.handle), "cudaGraphLaunch")

    def close(self) -> None:
        cudart = cudart_module()
        if self.graph_exec is not None:
            check(cudart.cudaGraphExecDestroy(self.graph_exec), "cudaGraphExecDestroy")
            self.graph_exec = None
        if self.graph is not None:
            check(cudart.cudaGraphDestroy(self.graph), "cudaGraphDestroy")
            self.graph = None

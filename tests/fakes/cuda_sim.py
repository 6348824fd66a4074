"""A simulated CUDA device and cuda-bindings runtime (`cuda.bindings.runtime`) that enforces CUDA's rules.

Written to the documented semantics of cuda-bindings 13 (every call returns `(cudaError_t, *values)`)
and of the CUDA runtime, and stricter than a GPU wherever a GPU would silently go wrong:

* Device memory is not host memory: `cudaMalloc` hands out addresses in a range of its own, backed by
  byte arrays the host cannot touch; only copies and kernels (the fake TensorRT's) move data.
  Pinned host memory (`cudaMallocHost`) is real host memory, as cmrt maps it into numpy.
* Streams run their work only when synchronized (`cudaStreamSynchronize`, `cudaDeviceSynchronize`,
  `cudaEventSynchronize`): a result read before its synchronize is stale, as on a busy GPU.
* Stream capture (`cudaStreamBeginCapture` .. `cudaStreamEndCapture`) records work instead of running
  it. Calls that are illegal while a capture is under way (per its mode: Global, ThreadLocal, Relaxed)
  fail with cudaErrorStreamCaptureUnsupported and invalidate the capture: `cudaMalloc`, `cudaFree`,
  `cudaMallocHost`, `cudaHostAlloc`, `cudaFreeHost`, synchronous `cudaMemcpy`, `cudaDeviceSynchronize`,
  `cudaStreamSynchronize` of the capturing stream, and `cudaMemcpyAsync` into it from or to pageable
  memory (device-to-device and pinned copies, and `cudaMemsetAsync`, are captured as graph nodes). `cudaStreamEndCapture` of an invalidated capture returns cudaErrorStreamCaptureInvalidated
  and no graph.
* Freed memory is poisoned (0xFF bytes: NaN as float) and never handed out again; work that touches it
  when it runs (a copy, a kernel, a graph replay) raises the sticky cudaErrorIllegalAddress.
* The current device is per host thread (`cudaSetDevice`); streams and allocations remember theirs.

`Sim` keeps what happened: `violations` (the rule each failure broke, in words) and `counters`
(host synchronizes, graph launches, enqueues, copies...), with `Sim.measure()` for the counts of one
call. `tests/fakes/tensorrt_sim.py` and `tests/fakes/ort_cuda_sim.py` build on it; `tests/fakes/gpu.py`
installs them. Nothing here runs outside the tests.
"""
from __future__ import annotations

import bisect
import contextlib
import ctypes
import enum
import itertools
import threading
import types
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400
    cudaErrorIllegalState = 401
    cudaErrorNotReady = 600
    cudaErrorIllegalAddress = 700
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901
    cudaErrorStreamCaptureWrongThread = 908


cudaMemcpyKind = enum.IntEnum("cudaMemcpyKind", "cudaMemcpyHostToHost cudaMemcpyHostToDevice cudaMemcpyDeviceToHost cudaMemcpyDeviceToDevice cudaMemcpyDefault", start=0)


cudaStreamCaptureMode = enum.IntEnum("cudaStreamCaptureMode", "cudaStreamCaptureModeGlobal cudaStreamCaptureModeThreadLocal cudaStreamCaptureModeRelaxed", start=0)


cudaStreamCaptureStatus = enum.IntEnum("cudaStreamCaptureStatus", "cudaStreamCaptureStatusNone cudaStreamCaptureStatusActive cudaStreamCaptureStatusInvalidated", start=0)


class _Handle:
    """cuda-bindings' opaque handle types: `int(h)` and `h.getPtr()` give the raw value."""

    def __init__(self, value: int = 0):
        self._value = int(value)

    def __int__(self) -> int:
        return self._value

    def getPtr(self) -> int:
        return self._value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Handle) and type(other) is type(self) and other._value == self._value

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._value))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._value:#x}>"


class cudaStream_t(_Handle):
    pass


class cudaGraph_t(_Handle):
    pass


class cudaGraphExec_t(_Handle):
    pass


class cudaEvent_t(_Handle):
    pass


ok = cudaError_t.cudaSuccess
DEVICE_BASE = 0x2000_0000_0000  # far from host addresses: device pointers are never host pointers
POISON = 0xFF


class CudaFault(Exception):
    """Raised inside the simulation to return an error code from the API call that hit it."""

    def __init__(self, code: cudaError_t, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class Allocation:
    base: int
    size: int
    kind: str  # "device" | "pinned"
    device: int
    storage: Any  # bytearray (device) or ctypes buffer (pinned)
    freed: bool = False

    def contains(self, addr: int, n: int) -> bool:
        return self.base <= addr and addr + n <= self.base + self.size


@dataclass
class Op:
    """One piece of stream work: `run()` when the stream gets to it; `refs` are the memory ranges it touches."""

    run: Callable[[], None]
    refs: list[tuple[int, int]]
    what: str
    owner: Any = None  # the fake TensorRT context whose work this is, if any
    stream: "StreamState | None" = None
    replay_check: Callable[[], None] | None = None  # raises CudaFault when this captured node may not be replayed


@dataclass
class Capture:
    stream: "StreamState"
    mode: cudaStreamCaptureMode
    thread: int
    nodes: list[Op] = field(default_factory=list)
    invalidated: str | None = None  # why, once invalidated


@dataclass
class StreamState:
    handle: int
    device: int
    queue: list[Op] = field(default_factory=list)
    capture: Capture | None = None
    destroyed: bool = False


@dataclass
class GraphExec:
    handle: int
    nodes: list[Op]
    destroyed: bool = False


@dataclass
class EventState:
    handle: int
    recorded: bool = False
    done: bool = False
    time_ms: float = 0.0
    stream: StreamState | None = None


@dataclass
class DeviceProps:
    name: str = "NVIDIA Simulated GPU"
    major: int = 9
    minor: int = 0
    total_memory: int = 80 << 30


class Counts(Counter):
    """Counter deltas with attribute access: `counts.host_syncs`, `counts.graph_launches`, ..."""

    def __getattr__(self, name: str) -> int:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]


class Sim:
    """The simulated machine: devices, memory, streams, captures, graphs, events, and what happened."""

    def __init__(self, devices: int = 1):
        self.lock = threading.RLock()
        self.devices = [DeviceProps() for _ in range(devices)]
        self.driver_version = 13000
        self.runtime_version = 13000
        self._tls = threading.local()
        self._ids = itertools.count(1)
        self._next_device_addr = DEVICE_BASE
        self._allocs: dict[int, Allocation] = {}
        self._starts: list[int] = []  # sorted allocation bases, for address lookup
        self._graveyard: list[Any] = []  # freed pinned buffers stay mapped (poisoned), never reused
        self.streams: dict[int, StreamState] = {}
        self.captures: list[Capture] = []
        self.graphs: dict[int, list[Op]] = {}
        self.execs: dict[int, GraphExec] = {}
        self.events: dict[int, EventState] = {}
        self.counters = Counts()
        self.violations: list[str] = []
        self.sticky: cudaError_t | None = None
        self.last_error = ok
        self.clock_ms = 0.0
        self.before_sync: Callable[[StreamState], None] | None = None  # tests pause a synchronize here

    # --- bookkeeping -------------------------------------------------------------------
    def violation(self, message: str) -> str:
        with self.lock:
            self.violations.append(message)
        return message

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counters[what] += n

    @contextlib.contextmanager
    def measure(self) -> Iterator[Counts]:
        """`with sim.measure() as c: backend.run(...)`; then `c.host_syncs`, `c.graph_launches`, ..."""
        before = Counts(self.counters)
        counts = Counts()
        try:
            yield counts
        finally:
            for k, v in self.counters.items():
                if v - before.get(k, 0):
                    counts[k] = v - before.get(k, 0)

    @property
    def device(self) -> int:
        """The calling thread's current device (0 until `cudaSetDevice`)."""
        return getattr(self._tls, "device", 0)

    @device.setter
    def device(self, index: int) -> None:
        self._tls.device = int(index)

    def new_id(self) -> int:
        return next(self._ids)

    # --- memory ------------------------------------------------------------------------
    def allocate(self, size: int, kind: str) -> int:
        size = int(size)
        if size <= 0:
            raise CudaFault(cudaError_t.cudaErrorInvalidValue, f"allocation of {size} bytes")
        if size > self.devices[self.device].total_memory:
            raise CudaFault(cudaError_t.cudaErrorMemoryAllocation, f"allocation of {size} bytes exceeds the device's memory")
        with self.lock:
            if kind == "device":
                base = self._next_device_addr
                self._next_device_addr += (size + 4095) // 4096 * 4096 + 4096  # a guard gap after each
                storage: Any = bytearray(size)
            else:
                raw = ctypes.create_string_buffer(size + 256)
                base = (ctypes.addressof(raw) + 255) // 256 * 256
                storage = raw
            self._allocs[base] = Allocation(base, size, kind, self.device, storage)
            bisect.insort(self._starts, base)
            return base

    def lookup(self, addr: int, n: int = 1) -> Allocation | None:
        """The allocation (live or freed) holding [addr, addr + n), None for memory cmrt never allocated."""
        with self.lock:
            i = bisect.bisect_right(self._starts, int(addr)) - 1
            if i < 0:
                return None
            a = self._allocs[self._starts[i]]
            return a if a.contains(int(addr), max(int(n), 1)) else None

    def is_device_address(self, addr: int) -> bool:
        return int(addr) >= DEVICE_BASE and int(addr) < self._next_device_addr

    def free(self, addr: int, kind: str) -> None:
        with self.lock:
            a = self._allocs.get(int(addr))
            if a is None or a.kind != kind:
                raise CudaFault(cudaError_t.cudaErrorInvalidValue, f"{kind} free of {addr:#x}, which is not a {kind} allocation")
            if a.freed:
                raise CudaFault(cudaError_t.cudaErrorInvalidValue, f"double free of {addr:#x}")
            a.freed = True
            if kind == "device":
                a.storage[:] = bytes([POISON]) * a.size
            else:
                ctypes.memset(a.base, POISON, a.size)
                self._graveyard.append(a.storage)

    def check_live(self, refs: list[tuple[int, int]], what: str) -> None:
        for addr, n in refs:
            a = self.lookup(addr, n)
            if a is None and self.is_device_address(addr):
                raise CudaFault(cudaError_t.cudaErrorIllegalAddress,
                                self.violation(f"{what}: device range {addr:#x}+{n} is outside every allocation"))
            if a is not None and a.freed:
                raise CudaFault(cudaError_t.cudaErrorIllegalAddress,
                                self.violation(f"{what}: touches freed {a.kind} memory at {addr:#x} (allocation {a.base:#x})"))

    def read(self, addr: int, n: int) -> bytes:
        a = self.lookup(addr, n)
        if a is not None and a.kind == "device":
            off = addr - a.base
            return bytes(a.storage[off:off + n])
        if self.is_device_address(addr):
            raise CudaFault(cudaError_t.cudaErrorIllegalAddress, self.violation(f"read of unmapped device memory {addr:#x}+{n}"))
        return ctypes.string_at(addr, n)

    def write(self, addr: int, data: bytes) -> None:
        n = len(data)
        a = self.lookup(addr, n)
        if a is not None and a.kind == "device":
            off = addr - a.base
            a.storage[off:off + n] = data
            return
        if self.is_device_address(addr):
            raise CudaFault(cudaError_t.cudaErrorIllegalAddress, self.violation(f"write to unmapped device memory {addr:#x}+{n}"))
        ctypes.memmove(addr, data, n)

    def host_kind(self, addr: int, n: int) -> str:
        """'pinned' for cudaMallocHost memory, else 'pageable' (any other host address)."""
        a = self.lookup(addr, n)
        return "pinned" if a is not None and a.kind == "pinned" else "pageable"

    # --- streams and capture -------------------------------------------------------------
    def stream(self, handle: Any) -> StreamState:
        h = int(handle)
        s = self.streams.get(h)
        if h == 0 or s is None or s.destroyed:
            raise CudaFault(cudaError_t.cudaErrorInvalidResourceHandle,
                            f"stream {h:#x} is {'the legacy default stream' if h == 0 else 'not a live stream'}")
        return s

    def prohibited_by_capture(self, what: str) -> None:
        """A call CUDA calls 'potentially unsafe' during capture: fail it and invalidate the captures it breaks."""
        me = threading.get_ident()
        with self.lock:
            hit = [c for c in self.captures if c.invalidated is None and (
                c.mode == cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
                or (c.mode == cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal and c.thread == me))]
            if not hit:
                return
            msg = self.violation(f"{what} during stream capture (illegal in capture mode {hit[0].mode.name}): capture invalidated")
            for c in hit:
                c.invalidated = msg
        raise CudaFault(cudaError_t.cudaErrorStreamCaptureUnsupported, msg)

    def invalidate(self, cap: Capture, why: str) -> None:
        cap.invalidated = cap.invalidated or self.violation(why)

    def submit(self, stream: StreamState, op: Op) -> None:
        """Queue `op` on `stream`, or record it into the stream's capture."""
        op.stream = stream
        with self.lock:
            if stream.capture is not None:
                if stream.capture.invalidated:
                    raise CudaFault(cudaError_t.cudaErrorStreamCaptureInvalidated, stream.capture.invalidated)
                stream.capture.nodes.append(op)
            else:
                stream.queue.append(op)

    def run_op(self, op: Op) -> None:
        self.check_live(op.refs, op.what)
        op.run()
        self.clock_ms += 0.01

    def drain(self, stream: StreamState) -> None:
        """Run `stream`'s queued work in order (what a synchronize waits for)."""
        while True:
            with self.lock:
                if not stream.queue:
                    return
                op = stream.queue.pop(0)
                try:
                    self.run_op(op)
                except CudaFault as e:
                    if e.code == cudaError_t.cudaErrorIllegalAddress:
                        self.sticky = e.code
                    stream.queue.clear()
                    raise

    def pending_owners(self) -> list[tuple[Any, StreamState]]:
        with self.lock:
            return [(op.owner, s) for s in self.streams.values() for op in s.queue if op.owner is not None]


def build_runtime(sim: Sim) -> types.ModuleType:
    """A `cuda.bindings.runtime` module over `sim`: the subset of the CUDA runtime cmrt and its tests call."""
    rt = types.ModuleType("cuda.bindings.runtime")
    for t in (cudaError_t, cudaMemcpyKind, cudaStreamCaptureMode, cudaStreamCaptureStatus,
              cudaStream_t, cudaGraph_t, cudaGraphExec_t, cudaEvent_t):
        setattr(rt, t.__name__, t)
    rt.cudaStreamDefault = 0
    rt.cudaStreamNonBlocking = 1
    rt.cudaEventDefault = 0
    rt.cudaEventDisableTiming = 2
    rt.cudaHostAllocDefault = 0

    def api(fn: Callable[..., tuple]) -> Callable[..., tuple]:
        """Every call: the sticky error if one happened; a CudaFault becomes its error code."""
        def call(*args, **kwargs):
            if sim.sticky is not None:
                return (sim.sticky,)
            try:
                return fn(*args, **kwargs)
            except CudaFault as e:
                sim.last_error = e.code
                sim.count("errors")
                return (e.code,)
        call.__name__ = fn.__name__
        return call

    def expose(fn: Callable[..., tuple]) -> Callable[..., tuple]:
        setattr(rt, fn.__name__, api(fn))
        return fn

    # --- errors and devices ----------------------------------------------------------------
    rt.cudaGetErrorName = lambda e: (ok, cudaError_t(int(e)).name.encode())
    rt.cudaGetErrorString = lambda e: (ok, f"simulated {cudaError_t(int(e)).name}".encode())

    def cudaGetLastError():
        err, sim.last_error = sim.last_error, ok
        return (err,)

    rt.cudaGetLastError = cudaGetLastError
    rt.cudaPeekAtLastError = lambda: (sim.last_error,)

    @expose
    def cudaGetDeviceCount():
        if not sim.devices:
            raise CudaFault(cudaError_t.cudaErrorNoDevice, "no device")
        return ok, len(sim.devices)

    @expose
    def cudaSetDevice(device):
        if not 0 <= int(device) < len(sim.devices):
            raise CudaFault(cudaError_t.cudaErrorInvalidDevice, f"device {device}")
        sim.device = int(device)
        sim.count("set_device")
        return (ok,)

    @expose
    def cudaGetDevice():
        return ok, sim.device

    @expose
    def cudaGetDeviceProperties(device):
        if not 0 <= int(device) < len(sim.devices):
            raise CudaFault(cudaError_t.cudaErrorInvalidDevice, f"device {device}")
        p = sim.devices[int(device)]
        name = p.name.encode() + b"\x00" * (256 - len(p.name))
        return ok, types.SimpleNamespace(name=name, major=p.major, minor=p.minor, totalGlobalMem=p.total_memory)

    @expose
    def cudaDriverGetVersion():
        return ok, sim.driver_version

    @expose
    def cudaRuntimeGetVersion():
        return ok, sim.runtime_version

    # --- memory ------------------------------------------------------------------------
    @expose
    def cudaMalloc(size):
        sim.prohibited_by_capture("cudaMalloc")
        sim.count("malloc")
        return ok, sim.allocate(size, "device")

    @expose
    def cudaFree(ptr):
        sim.prohibited_by_capture("cudaFree")
        if int(ptr) == 0:
            return (ok,)
        sim.free(int(ptr), "device")
        sim.count("free")
        return (ok,)

    @expose
    def cudaMallocHost(size):
        sim.prohibited_by_capture("cudaMallocHost")
        sim.count("malloc_host")
        return ok, sim.allocate(size, "pinned")

    @expose
    def cudaHostAlloc(size, flags):
        sim.prohibited_by_capture("cudaHostAlloc")
        sim.count("malloc_host")
        return ok, sim.allocate(size, "pinned")

    @expose
    def cudaFreeHost(ptr):
        sim.prohibited_by_capture("cudaFreeHost")
        sim.free(int(ptr), "pinned")
        sim.count("free_host")
        return (ok,)

    def copy_refs(dst: int, src: int, n: int, kind: int) -> tuple[list[tuple[int, int]], str]:
        """Check a copy's directions against the memory it names; return its refs and the host side's kind."""
        k = cudaMemcpyKind(int(kind))
        if k == cudaMemcpyKind.cudaMemcpyDefault:
            k = {(True, False): cudaMemcpyKind.cudaMemcpyDeviceToHost, (False, True): cudaMemcpyKind.cudaMemcpyHostToDevice,
                 (True, True): cudaMemcpyKind.cudaMemcpyDeviceToDevice}.get(
                (sim.is_device_address(src), sim.is_device_address(dst)), cudaMemcpyKind.cudaMemcpyHostToHost)
        want = {cudaMemcpyKind.cudaMemcpyHostToDevice: (False, True), cudaMemcpyKind.cudaMemcpyDeviceToHost: (True, False),
                cudaMemcpyKind.cudaMemcpyDeviceToDevice: (True, True), cudaMemcpyKind.cudaMemcpyHostToHost: (False, False)}[k]
        for addr, on_device, side in ((src, want[0], "source"), (dst, want[1], "destination")):
            if on_device:
                a = sim.lookup(addr, n)
                if a is None or a.kind != "device":
                    raise CudaFault(cudaError_t.cudaErrorInvalidValue,
                                    sim.violation(f"cudaMemcpy {k.name}: the {side} {addr:#x}+{n} is not inside one device allocation"))
            elif sim.is_device_address(addr):
                raise CudaFault(cudaError_t.cudaErrorInvalidValue,
                                sim.violation(f"cudaMemcpy {k.name}: the {side} {addr:#x} is device memory"))
        host = [a for a, d in ((src, want[0]), (dst, want[1])) if not d]
        host_kind = "pinned" if host and all(sim.host_kind(a, n) == "pinned" for a in host) else ("pageable" if host else "device")
        return [(src, n), (dst, n)], host_kind

    @expose
    def cudaMemcpyAsync(dst, src, count, kind, stream):
        dst, src, n = int(dst), int(src), int(count)
        s = sim.stream(stream)
        refs, host_kind = copy_refs(dst, src, n, kind)
        sim.count("memcpy_async")
        if s.capture is not None and host_kind == "pageable":
            msg = f"cudaMemcpyAsync with pageable host memory into capturing stream {s.handle:#x}"
            sim.invalidate(s.capture, msg + ": capture invalidated")
            raise CudaFault(cudaError_t.cudaErrorStreamCaptureUnsupported, msg)
        if host_kind == "pageable" and not sim.is_device_address(dst):
            # device to pageable host: a synchronous copy (waits for the stream), as CUDA documents
            sim.drain(s)
            sim.check_live(refs, "cudaMemcpyAsync")
            sim.write(dst, sim.read(src, n))
            return (ok,)
        if host_kind == "pageable":
            # pageable host to device: CUDA stages the source before returning, so a later host write is harmless
            staged = sim.read(src, n)
            sim.submit(s, Op(lambda: sim.write(dst, staged), [(dst, n)], f"cudaMemcpyAsync {n} B to {dst:#x}"))
            return (ok,)
        sim.submit(s, Op(lambda: sim.write(dst, sim.read(src, n)), refs, f"cudaMemcpyAsync {n} B {src:#x} -> {dst:#x}"))
        return (ok,)

    @expose
    def cudaMemcpy(dst, src, count, kind):
        sim.prohibited_by_capture("synchronous cudaMemcpy")
        refs, _ = copy_refs(int(dst), int(src), int(count), kind)
        for st in list(sim.streams.values()):  # synchronous with respect to the device's other work
            if not st.destroyed and st.capture is None:
                sim.drain(st)
        sim.check_live(refs, "cudaMemcpy")
        sim.write(int(dst), sim.read(int(src), int(count)))
        sim.count("memcpy_sync")
        return (ok,)

    @expose
    def cudaMemsetAsync(dst, value, count, stream):
        """Device memory only (a host pointer is an error, as in CUDA); legal in a capture (a memset node)."""
        dst, n = int(dst), int(count)
        s = sim.stream(stream)
        a = sim.lookup(dst, n)
        if a is None or a.kind != "device":
            raise CudaFault(cudaError_t.cudaErrorInvalidValue,
                            sim.violation(f"cudaMemsetAsync: {dst:#x}+{n} is not inside one device allocation"))
        sim.count("memset_async")
        fill = bytes([int(value) & 0xFF]) * n
        sim.submit(s, Op(lambda: sim.write(dst, fill), [(dst, n)], f"cudaMemsetAsync {n} B at {dst:#x}"))
        return (ok,)

    # --- streams -------------------------------------------------------------------------
    @expose
    def cudaStreamCreateWithFlags(flags):
        h = sim.new_id() << 8
        sim.streams[h] = StreamState(h, sim.device)
        sim.count("stream_create")
        return ok, cudaStream_t(h)

    @expose
    def cudaStreamCreate():
        return cudaStreamCreateWithFlags(0)

    @expose
    def cudaStreamSynchronize(stream):
        s = sim.stream(stream)
        if s.capture is not None:
            msg = f"cudaStreamSynchronize of stream {s.handle:#x} while it is capturing"
            sim.invalidate(s.capture, msg + ": capture invalidated")
            raise CudaFault(cudaError_t.cudaErrorStreamCaptureUnsupported, msg)
        sim.count("host_syncs")
        sim.count("stream_syncs")
        if sim.before_sync is not None:
            sim.before_sync(s)
        sim.drain(sim.stream(stream))  # the stream may have been destroyed while this thread waited
        return (ok,)

    @expose
    def cudaDeviceSynchronize():
        sim.prohibited_by_capture("cudaDeviceSynchronize")
        if any(c.invalidated is None for c in sim.captures):
            msg = "cudaDeviceSynchronize while a stream is capturing"
            for c in sim.captures:
                sim.invalidate(c, msg + ": capture invalidated")
            raise CudaFault(cudaError_t.cudaErrorStreamCaptureUnsupported, msg)
        sim.count("host_syncs")
        sim.count("device_syncs")
        for s in list(sim.streams.values()):
            if not s.destroyed:
                sim.drain(s)
        return (ok,)

    @expose
    def cudaStreamDestroy(stream):
        s = sim.stream(stream)
        if s.capture is not None:
            raise CudaFault(cudaError_t.cudaErrorIllegalState, sim.violation(f"cudaStreamDestroy of capturing stream {s.handle:#x}"))
        # CUDA lets queued work finish after the destroy returns: run it now, against memory as it is now
        sim.drain(s)
        s.destroyed = True
        return (ok,)

    # --- capture and graphs ------------------------------------------------------------------
    @expose
    def cudaStreamBeginCapture(stream, mode):
        s = sim.stream(stream)
        if s.capture is not None:
            raise CudaFault(cudaError_t.cudaErrorIllegalState, f"stream {s.handle:#x} is already capturing")
        cap = Capture(s, cudaStreamCaptureMode(int(mode)), threading.get_ident())
        with sim.lock:
            s.capture = cap
            sim.captures.append(cap)
        sim.count("captures")
        return (ok,)

    @expose
    def cudaStreamIsCapturing(stream):
        s = sim.stream(stream)
        if s.capture is None:
            return ok, cudaStreamCaptureStatus.cudaStreamCaptureStatusNone
        if s.capture.invalidated:
            return ok, cudaStreamCaptureStatus.cudaStreamCaptureStatusInvalidated
        return ok, cudaStreamCaptureStatus.cudaStreamCaptureStatusActive

    @expose
    def cudaStreamEndCapture(stream):
        s = sim.stream(stream)
        cap = s.capture
        if cap is None:
            raise CudaFault(cudaError_t.cudaErrorIllegalState, f"stream {s.handle:#x} is not capturing")
        if cap.mode != cudaStreamCaptureMode.cudaStreamCaptureModeRelaxed and cap.thread != threading.get_ident():
            return (cudaError_t.cudaErrorStreamCaptureWrongThread, None)
        with sim.lock:
            s.capture = None
            sim.captures.remove(cap)
        if cap.invalidated:
            return (cudaError_t.cudaErrorStreamCaptureInvalidated, None)
        h = sim.new_id()
        sim.graphs[h] = list(cap.nodes)
        return ok, cudaGraph_t(h)

    @expose
    def cudaGraphInstantiate(graph, flags=0):
        nodes = sim.graphs.get(int(graph))
        if nodes is None:
            raise CudaFault(cudaError_t.cudaErrorInvalidValue, f"graph {int(graph)} does not exist")
        h = sim.new_id()
        sim.execs[h] = GraphExec(h, list(nodes))
        return ok, cudaGraphExec_t(h)

    @expose
    def cudaGraphLaunch(graph_exec, stream):
        g = sim.execs.get(int(graph_exec))
        if g is None or g.destroyed:
            raise CudaFault(cudaError_t.cudaErrorInvalidResourceHandle, f"graph exec {int(graph_exec)} is not live")
        s = sim.stream(stream)
        for node in g.nodes:  # a node may refuse to be replayed (the fake TensorRT's snapshot check)
            if node.replay_check is not None:
                node.replay_check()

        def replay():
            for node in g.nodes:
                sim.run_op(node)

        refs = [r for node in g.nodes for r in node.refs]
        owners = {node.owner for node in g.nodes if node.owner is not None}
        sim.submit(s, Op(replay, refs, f"graph {g.handle} ({len(g.nodes)} nodes)", owner=next(iter(owners), None)))
        sim.count("graph_launches")
        return (ok,)

    @expose
    def cudaGraphDestroy(graph):
        if sim.graphs.pop(int(graph), None) is None:
            raise CudaFault(cudaError_t.cudaErrorInvalidValue, f"graph {int(graph)} does not exist")
        return (ok,)

    @expose
    def cudaGraphExecDestroy(graph_exec):
        g = sim.execs.get(int(graph_exec))
        if g is None or g.destroyed:
            raise CudaFault(cudaError_t.cudaErrorInvalidValue, f"graph exec {int(graph_exec)} does not exist")
        g.destroyed = True  # a launch already queued still runs, as in CUDA
        return (ok,)

    # --- events (timing) ----------------------------------------------------------------------
    @expose
    def cudaEventCreateWithFlags(flags):
        h = sim.new_id()
        sim.events[h] = EventState(h)
        return ok, cudaEvent_t(h)

    @expose
    def cudaEventCreate():
        return cudaEventCreateWithFlags(0)

    @expose
    def cudaEventRecord(event, stream):
        ev = sim.events.get(int(event))
        if ev is None:
            raise CudaFault(cudaError_t.cudaErrorInvalidResourceHandle, f"event {int(event)}")
        s = sim.stream(stream)
        ev.recorded, ev.done, ev.stream = True, False, s

        def mark():
            ev.done, ev.time_ms = True, sim.clock_ms

        sim.submit(s, Op(mark, [], f"event {ev.handle}"))
        return (ok,)

    @expose
    def cudaEventSynchronize(event):
        ev = sim.events.get(int(event))
        if ev is None or not ev.recorded:
            raise CudaFault(cudaError_t.cudaErrorInvalidResourceHandle, f"event {int(event)} was never recorded")
        sim.count("host_syncs")
        sim.count("event_syncs")
        if not ev.done and ev.stream is not None:
            sim.drain(ev.stream)
        return (ok,)

    @expose
    def cudaEventQuery(event):
        ev = sim.events.get(int(event))
        if ev is None:
            raise CudaFault(cudaError_t.cudaErrorInvalidResourceHandle, f"event {int(event)}")
        return (ok,) if ev.done else (cudaError_t.cudaErrorNotReady,)

    @expose
    def cudaEventElapsedTime(start, end):
        a, b = sim.events.get(int(start)), sim.events.get(int(end))
        if a is None or b is None:
            raise CudaFault(cudaError_t.cudaErrorInvalidResourceHandle, "event")
        if not (a.done and b.done):
            raise CudaFault(cudaError_t.cudaErrorNotReady, "an event has not completed")
        return ok, float(b.time_ms - a.time_ms)

    @expose
    def cudaEventDestroy(event):
        if sim.events.pop(int(event), None) is None:
            raise CudaFault(cudaError_t.cudaErrorInvalidResourceHandle, f"event {int(event)}")
        return (ok,)

    return rt

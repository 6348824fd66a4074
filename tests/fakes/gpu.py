"""A simulated cuda-bindings runtime and TensorRT, for driving cmrt's real GPU glue on a CPU.

Neither can be installed here. These fakes follow the documented call shapes (cuda-bindings'
`(err, value)` tuples, TensorRT's name-based I/O); "device" memory is host memory and the
"engine" runs the ONNX it was built from in ONNX Runtime. What this checks is cmrt's own
glue: build_plan, validate_plan, TensorRTBackend (pooled aligned buffers, pinned staging,
one context + CUDA graph per batch size, capture fallback) and cmrt.load, end to end.
"""
from __future__ import annotations

import ctypes
import enum
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest



class _Sim:
    def __init__(self):
        self.buffers: dict[int, object] = {}
        self.capturing: dict[int, list] = {}
        self.enqueues = self.launches = 0
        self.capture_fails = False
        self.corrupt = 0.0
        self.contexts = 0
        self.next_stream = 1

    def alloc(self, n: int) -> int:
        buf = ctypes.create_string_buffer(int(n) + 256)
        ptr = (ctypes.addressof(buf) + 255) // 256 * 256
        self.buffers[ptr] = buf
        return ptr


def _fake_cudart(sim: _Sim) -> types.ModuleType:
    rt = types.ModuleType("cuda.bindings.runtime")

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorStreamCaptureInvalidated = 901

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStreamCaptureMode(enum.IntEnum):
        cudaStreamCaptureModeGlobal = 0
        cudaStreamCaptureModeThreadLocal = 1

    class cudaStream_t:
        def __init__(self, v):
            self.v = v

        def __int__(self):
            return self.v

    ok = cudaError_t.cudaSuccess

    def stream_id(s):
        return int(s)

    def memcpy(dst, src, n, kind, stream):
        assert kind in (cudaMemcpyKind.cudaMemcpyHostToDevice, cudaMemcpyKind.cudaMemcpyDeviceToHost)
        op = lambda: ctypes.memmove(dst, src, n)  # noqa: E731
        if stream_id(stream) in sim.capturing:
            sim.capturing[stream_id(stream)].append(op)
        else:
            op()
        return (ok,)

    def new_stream(flags):
        assert flags == rt.cudaStreamNonBlocking
        sim.next_stream += 1
        return ok, cudaStream_t(sim.next_stream)

    def end_capture(stream):
        ops = sim.capturing.pop(stream_id(stream))
        if sim.capture_fails:
            return cudaError_t.cudaErrorStreamCaptureInvalidated, None
        return ok, ops

    def launch(graph_exec, stream):
        sim.launches += 1
        for op in graph_exec:
            op()
        return (ok,)

    rt.cudaError_t, rt.cudaMemcpyKind, rt.cudaStreamCaptureMode, rt.cudaStream_t = (
        cudaError_t, cudaMemcpyKind, cudaStreamCaptureMode, cudaStream_t)
    rt.cudaStreamNonBlocking = 1
    rt.cudaGetErrorName = lambda e: (ok, cudaError_t(e).name.encode())
    rt.cudaGetErrorString = lambda e: (ok, b"simulated error")
    rt.cudaGetDeviceCount = lambda: (ok, 1)
    rt.cudaSetDevice = lambda i: (ok,)
    rt.cudaGetDeviceProperties = lambda i: (
        ok, types.SimpleNamespace(name=b"NVIDIA Simulated GPU\x00\x00", major=9, minor=0, totalGlobalMem=80 << 30))
    rt.cudaDriverGetVersion = lambda: (ok, 13000)
    rt.cudaRuntimeGetVersion = lambda: (ok, 13000)
    rt.cudaStreamCreateWithFlags = new_stream
    rt.cudaStreamSynchronize = lambda s: (ok,)
    rt.cudaStreamDestroy = lambda s: (ok,)
    rt.cudaMalloc = lambda n: (ok, sim.alloc(n))
    rt.cudaMallocHost = lambda n: (ok, sim.alloc(n))
    rt.cudaFree = rt.cudaFreeHost = lambda p: (ok,) if sim.buffers.pop(p, None) is not None else (901,)
    rt.cudaMemcpyAsync = memcpy
    rt.cudaStreamBeginCapture = lambda s, mode: (sim.capturing.setdefault(stream_id(s), []), (ok,))[1]
    rt.cudaStreamEndCapture = end_capture
    rt.cudaGraphInstantiate = lambda g, flags: (ok, list(g))
    rt.cudaGraphLaunch = launch
    rt.cudaGraphDestroy = rt.cudaGraphExecDestroy = lambda g: (ok,)
    rt.cudaGetLastError = lambda: (ok,)
    return rt


def _fake_tensorrt(sim: _Sim) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "11.4.0.9"

    class Logger:
        WARNING = 2

        def __init__(self, level=2):
            self.level = level

    class Network:
        onnx_path = None

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            self.network.onnx_path = str(path)
            return Path(path).is_file()

    class OptProfile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, mn, opt, mx):
            assert mn[0] <= opt[0] <= mx[0] and mn[1:] == opt[1:] == mx[1:]
            self.shapes[name] = (list(mn), list(opt), list(mx))

    class TimingCache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+"

    class Config:
        builder_optimization_level = 3

        def __init__(self):
            self.profiles, self.cache, self.flags_cleared = [], None, []

        def add_optimization_profile(self, p):
            self.profiles.append(p)

        def create_timing_cache(self, data):
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

        def clear_flag(self, flag):
            self.flags_cleared.append(flag)

        def set_memory_pool_limit(self, pool, size):
            pass

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            assert flags == 0  # strongly typed is the only kind in TensorRT 11
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return OptProfile()

        def build_serialized_network(self, network, config):
            assert len(config.profiles) == 1
            return json.dumps({"onnx": network.onnx_path, "shapes": config.profiles[0].shapes}).encode()

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addr, self.memory = engine, {}, {}, None
            sim.contexts += 1

        def set_device_memory(self, ptr, size):
            assert ptr % 256 == 0 and size >= self.engine.device_memory_size_v2
            self.memory = ptr
            return None

        def set_input_shape(self, name, shape):
            mn, _, mx = self.engine.profile[name]
            self.shapes[name] = tuple(shape)
            return mn[0] <= shape[0] <= mx[0] and list(shape[1:]) == mn[1:]

        def set_tensor_address(self, name, ptr):
            assert ptr % 256 == 0
            self.addr[name] = ptr
            return True

        def get_tensor_shape(self, name):
            batch = next(iter(self.shapes.values()))[0]
            return (batch, *self.engine.tails[name])

        def execute_async_v3(self, stream):
            assert isinstance(stream, int) and self.memory is not None
            if stream in sim.capturing:
                sim.capturing[stream].append(self._compute)
            else:
                sim.enqueues += 1
                self._compute()
            return True

        def _compute(self):
            feeds = {}
            for i in self.engine.session.get_inputs():
                shape = self.shapes[i.name]
                dt = self.engine.dtypes[i.name]
                n = int(np.prod(shape)) * dt.itemsize
                raw = (ctypes.c_byte * n).from_address(self.addr[i.name])
                feeds[i.name] = np.frombuffer(raw, dtype=dt).reshape(shape).copy()
            out = self.engine.session.run(None, feeds)[0].astype(np.float32) + np.float32(sim.corrupt)
            ctypes.memmove(self.addr[self.engine.output], out.ctypes.data, out.nbytes)

    class Engine:
        device_memory_size_v2 = 4096

        def __init__(self, spec):
            import onnxruntime as ort

            self.session = ort.InferenceSession(spec["onnx"], providers=["CPUExecutionProvider"])
            self.profile = spec["shapes"]
            types_ = {"tensor(float)": np.float32, "tensor(int64)": np.int64}
            ios = list(self.session.get_inputs()) + list(self.session.get_outputs())
            self.names = [t.name for t in ios]
            self.dtypes = {t.name: np.dtype(types_[t.type]) for t in ios}
            self.tails = {t.name: tuple(t.shape[1:]) for t in ios}
            self.output = self.session.get_outputs()[0].name
            self.num_io_tensors = len(self.names)

        def get_tensor_name(self, i):
            return self.names[i]

        def create_execution_context(self, strategy):
            assert strategy == trt.ExecutionContextAllocationStrategy.USER_MANAGED
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            try:
                return Engine(json.loads(bytes(data)))
            except ValueError:
                return None

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    trt.BuilderFlag = types.SimpleNamespace(TF32="TF32")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.ExecutionContextAllocationStrategy = types.SimpleNamespace(STATIC=0, USER_MANAGED=2)
    return trt


@pytest.fixture
def simulated_gpu(monkeypatch):
    from cmrt.runtime.backends import cuda, probe

    sim = _Sim()
    rt = _fake_cudart(sim)
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = rt
    pkg = types.ModuleType("cuda")
    pkg.bindings = bindings
    for name, mod in (("cuda", pkg), ("cuda.bindings", bindings), ("cuda.bindings.runtime", rt), ("tensorrt", _fake_tensorrt(sim))):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(cuda, "_CUDART", None)
    probe.probe_environment.cache_clear()
    yield sim
    probe.probe_environment.cache_clear()



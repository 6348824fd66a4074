"""A simulated TensorRT 11 (`tensorrt` module) on the simulated CUDA device of `tests/fakes/cuda_sim.py`.

Written to TensorRT 11's Python API as documented (strongly typed networks only, no precision builder
flags, name-based I/O, `execute_async_v3`, user-managed context memory, timing caches) and to the calls
polygraphy 0.53.6's loaders make (`network_from_onnx_path`, `create_config`, `engine_bytes_from_network`,
its config printer). The "engine" carries the ONNX it was built from and runs it in ONNX Runtime on the
CPU when the stream gets to its work. It enforces what a GPU and TensorRT enforce, and more strictly
where a GPU would silently compute garbage:

* a plan deserializes only on the GPU model and TensorRT version that built it;
* `set_timing_cache(cache, ignore_mismatch=False)` refuses a cache made on another GPU or by another
  TensorRT version: it returns False and the config then has no cache (`get_timing_cache()` is None);
* the first enqueue after `set_input_shape` / `set_tensor_address` / `set_device_memory` /
  `set_optimization_profile_async` must be outside stream capture (TensorRT does deferred work there
  that a capture cannot hold): inside one it invalidates the capture and fails;
* a captured enqueue snapshots its context's shapes and addresses; replaying it after they changed
  fails (on a GPU it would read and write the old buffers with the old shapes);
* enqueuing on a context while another context on the same optimization profile, or on the same
  device memory, still has work on another stream fails (TensorRT forbids such concurrency);
* the calling thread's current device must be the engine's (the current device is per thread);
* inputs, outputs and scratch memory must be live when the work runs (freed memory is poisoned).
"""
from __future__ import annotations

import enum
import hashlib
import json
import types
from pathlib import Path
from typing import Any

import numpy as np

from .cuda_sim import CudaFault, Op, Sim, cudaError_t

VERSION = "11.4.0.9"
PLAN_MAGIC = b"CMRT-FAKE-TRT-PLAN\n"
CACHE_MAGIC = b"CMRT-FAKE-TRT-CACHE\n"
DEVICE_MEMORY_SIZE = 64 << 10


DataType = enum.IntEnum("DataType", "FLOAT HALF INT8 INT32 BOOL UINT8 FP8 BF16 INT64", start=0)


_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT32: np.int32, DataType.INT64: np.int64,
       DataType.INT8: np.int8, DataType.UINT8: np.uint8, DataType.BOOL: np.bool_}
_FROM_ONNX = {1: DataType.FLOAT, 10: DataType.HALF, 6: DataType.INT32, 7: DataType.INT64, 3: DataType.INT8,
              2: DataType.UINT8, 9: DataType.BOOL, 16: DataType.BF16}


TensorIOMode = enum.IntEnum("TensorIOMode", "NONE INPUT OUTPUT", start=0)


ExecutionContextAllocationStrategy = enum.IntEnum("ExecutionContextAllocationStrategy", "STATIC ON_PROFILE_CHANGE USER_MANAGED", start=0)


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 1  # TensorRT 11: always on; EXPLICIT_BATCH is gone


BuilderFlag = enum.IntEnum("BuilderFlag", "GPU_FALLBACK REFIT DISABLE_TIMING_CACHE TF32 SPARSE_WEIGHTS SAFETY_SCOPE DIRECT_IO VERSION_COMPATIBLE EXCLUDE_LEAN_RUNTIME ERROR_ON_TIMING_CACHE_MISS DISABLE_COMPILATION_CACHE STRIP_PLAN", start=1)  # TensorRT 11: no FP16 / BF16 / INT8 / precision-constraint flags


MemoryPoolType = enum.IntEnum("MemoryPoolType", "WORKSPACE TACTIC_SHARED_MEMORY", start=0)


TacticSource = enum.IntEnum("TacticSource", "CUBLAS CUDNN EDGE_MASK_CONVOLUTIONS JIT_CONVOLUTIONS", start=0)


PreviewFeature = enum.IntEnum("PreviewFeature", "PROFILE_SHARING_0806", start=0)


DeviceType = enum.IntEnum("DeviceType", "GPU DLA", start=0)


EngineCapability = enum.IntEnum("EngineCapability", "STANDARD", start=0)


ProfilingVerbosity = enum.IntEnum("ProfilingVerbosity", "LAYER_NAMES_ONLY NONE DETAILED", start=0)


OnnxParserFlag = enum.IntEnum("OnnxParserFlag", "NATIVE_INSTANCENORM", start=0)


LayerType = enum.IntEnum("LayerType", "SHAPE", start=0)


class HostMemory(bytes):
    """trt.IHostMemory: a buffer (`bytes(h)`), usable as a context manager as polygraphy does."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @property
    def nbytes(self) -> int:
        return len(self)


def build_tensorrt(sim: Sim) -> types.ModuleType:
    """A `tensorrt` module over `sim`."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = VERSION
    for t in (DataType, TensorIOMode, ExecutionContextAllocationStrategy, NetworkDefinitionCreationFlag, BuilderFlag,
              MemoryPoolType, TacticSource, PreviewFeature, DeviceType, EngineCapability, ProfilingVerbosity,
              OnnxParserFlag, LayerType):
        setattr(trt, t.__name__, t)
    trt.IHostMemory = HostMemory
    log: list[str] = []
    trt.log = log  # what the fake TensorRT logged as errors, for the tests

    def error(message: str) -> bool:
        log.append(sim.violation(message))
        return False

    def device_identity() -> dict[str, Any]:
        p = sim.devices[sim.device]
        return {"gpu": p.name, "cc": f"{p.major}.{p.minor}", "tensorrt": VERSION}

    class ILogger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = 0, 1, 2, 3, 4

        def __init__(self, min_severity: int = 2):
            self.min_severity = min_severity

        def log(self, severity, msg):
            pass

    class Logger(ILogger):
        Severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

    trt.ILogger, trt.Logger = ILogger, Logger
    trt.init_libnvinfer_plugins = lambda logger, namespace: True

    # --- building ------------------------------------------------------------------------
    class ITensor:
        def __init__(self, name: str, shape: tuple[int, ...], dtype: DataType):
            self.name, self.shape, self.dtype = name, tuple(shape), dtype
            self.is_shape_tensor = False

    class INetworkDefinition:
        def __init__(self, flags: int):
            self.flags = flags
            self.inputs: list[ITensor] = []
            self.outputs: list[ITensor] = []
            self.model: bytes | None = None
            self.name = "network"

        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))
        num_layers = property(lambda self: 0)

        def get_input(self, i):
            return self.inputs[i]

        def get_output(self, i):
            return self.outputs[i]

        def get_flag(self, flag):
            return bool(self.flags & (1 << int(flag)))

        def __iter__(self):
            return iter(())

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors, self.flags = network, [], 0

        num_errors = property(lambda self: len(self.errors))

        def get_error(self, i):
            return self.errors[i]

        def clear_flag(self, flag):
            self.flags &= ~(1 << int(flag))

        def set_flag(self, flag):
            self.flags |= 1 << int(flag)

        def parse_from_file(self, path):
            import onnx

            try:
                model = onnx.load(str(path))  # resolves external data beside the file, as TensorRT does
            except Exception as e:
                self.errors.append(f"cannot read {path}: {e}")
                return False
            return self._load(model)

        def parse(self, data, path=None):
            import onnx

            return self._load(onnx.load_from_string(bytes(data)))

        def _load(self, model) -> bool:
            def tensors(values):
                out = []
                for v in values:
                    tt = v.type.tensor_type
                    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
                    out.append(ITensor(v.name, dims, _FROM_ONNX[tt.elem_type]))
                return out

            initializers = {i.name for i in model.graph.initializer}
            self.network.inputs = tensors([v for v in model.graph.input if v.name not in initializers])
            self.network.outputs = tensors(model.graph.output)
            self.network.model = model.SerializeToString()
            self.network.nodes = len(model.graph.node)
            return True

    class IOptimizationProfile:
        def __init__(self):
            self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

        def set_shape(self, name, min, opt, max):  # noqa: A002 - TensorRT's argument names
            mn, op, mx = (tuple(int(d) for d in s) for s in (min, opt, max))
            if not (len(mn) == len(op) == len(mx)) or any(not a <= b <= c for a, b, c in zip(mn, op, mx)):
                error(f"optimization profile for {name!r}: need min <= opt <= max, got {mn} {op} {mx}")
                return
            self.shapes[name] = (mn, op, mx)

        def get_shape(self, name):
            return [list(s) for s in self.shapes[name]]

    class ITimingCache:
        def __init__(self, identity: dict[str, Any], entries: list[str]):
            self.identity, self.entries = identity, sorted(set(entries))

        def serialize(self):
            return HostMemory(CACHE_MAGIC + json.dumps({"identity": self.identity, "entries": self.entries}).encode())

        def combine(self, other, ignore_mismatch):
            if other.identity != self.identity and not ignore_mismatch:
                return False
            self.entries = sorted(set(self.entries) | set(other.entries))
            return True

        def reset(self):
            self.entries = []
            return True

    class IBuilderConfig:
        def __init__(self):
            self.profiles: list[IOptimizationProfile] = []
            self.flags = {BuilderFlag.TF32}  # TensorRT's default
            self.pools: dict[MemoryPoolType, int] = {}
            self._level = 3
            self.cache: ITimingCache | None = None
            self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY
            self.engine_capability = EngineCapability.STANDARD
            self.DLA_core = -1
            self.default_device_type = DeviceType.GPU

        @property
        def builder_optimization_level(self):
            return self._level

        @builder_optimization_level.setter
        def builder_optimization_level(self, level):
            if not 0 <= int(level) <= 5:
                raise ValueError(f"builder optimization level {level} is outside 0..5")
            self._level = int(level)

        num_optimization_profiles = property(lambda self: len(self.profiles))

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def set_flag(self, flag):
            self.flags.add(BuilderFlag(int(flag)))

        def clear_flag(self, flag):
            self.flags.discard(BuilderFlag(int(flag)))

        def get_flag(self, flag):
            return BuilderFlag(int(flag)) in self.flags

        def set_memory_pool_limit(self, pool, size):
            self.pools[MemoryPoolType(int(pool))] = int(size)

        def get_memory_pool_limit(self, pool):
            return self.pools.get(MemoryPoolType(int(pool)), 80 << 30)

        def get_tactic_sources(self):
            return sum(1 << int(t) for t in TacticSource)

        def set_tactic_sources(self, mask):
            return True

        def get_preview_feature(self, feature):
            return False

        def set_preview_feature(self, feature, enable):
            pass

        def create_timing_cache(self, data):
            data = bytes(data)
            if not data:
                return ITimingCache(device_identity(), [])
            if not data.startswith(CACHE_MAGIC):
                error("create_timing_cache: the data is not a TensorRT timing cache")
                return None
            d = json.loads(data[len(CACHE_MAGIC):])
            return ITimingCache(d["identity"], d["entries"])

        def set_timing_cache(self, cache, ignore_mismatch):
            if cache is None:
                raise TypeError("set_timing_cache(): incompatible function arguments (cache is None)")
            if cache.identity != device_identity() and not ignore_mismatch:
                error(f"set_timing_cache: the cache was made for {cache.identity}, this is {device_identity()}")
                self.cache = None
                return False
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags=0):
            allowed = 1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)
            if int(flags) & ~allowed:
                raise TypeError(f"create_network: unknown creation flags {flags:#x} (TensorRT 11 networks are strongly typed)")
            return INetworkDefinition(int(flags))

        def create_builder_config(self):
            return IBuilderConfig()

        def create_optimization_profile(self):
            return IOptimizationProfile()

        def build_serialized_network(self, network, config):
            if network.model is None:
                error("build_serialized_network: the network is empty (was the ONNX parsed?)")
                return None
            dynamic = [t for t in network.inputs if -1 in t.shape]
            if dynamic and not config.profiles:
                error("build_serialized_network: the network has dynamic inputs but the config no optimization profile")
                return None
            for i, p in enumerate(config.profiles):
                for t in network.inputs:
                    if t.name not in p.shapes:
                        error(f"build_serialized_network: optimization profile {i} has no shapes for input {t.name!r}")
                        return None
                    for s in p.shapes[t.name]:
                        if len(s) != len(t.shape) or any(d != -1 and d != v for d, v in zip(t.shape, s)):
                            error(f"build_serialized_network: profile shape {s} does not fit input {t.name!r} {t.shape}")
                            return None
            key = hashlib.sha256(network.model + json.dumps([p.shapes for p in config.profiles]).encode()).hexdigest()
            if config.cache is not None:
                trt.timing_cache_hits = getattr(trt, "timing_cache_hits", 0) + (key in config.cache.entries)
                config.cache.entries = sorted(set(config.cache.entries) | {key})
            header = {
                **device_identity(),
                "profiles": [{k: [list(s) for s in v] for k, v in p.shapes.items()} for p in config.profiles],
                "io": [{"name": t.name, "mode": m, "dtype": int(t.dtype), "shape": list(t.shape)}
                       for m, ts in (("input", network.inputs), ("output", network.outputs)) for t in ts],
                "nodes": network.nodes,
                "tf32": BuilderFlag.TF32 in config.flags,
                "optimization_level": config.builder_optimization_level,
            }
            trt.builds = getattr(trt, "builds", 0) + 1
            return HostMemory(PLAN_MAGIC + json.dumps(header).encode() + b"\n" + network.model)

    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    trt.IBuilderConfig, trt.INetworkDefinition, trt.IOptimizationProfile, trt.ITimingCache = (
        IBuilderConfig, INetworkDefinition, IOptimizationProfile, ITimingCache)

    # --- running ---------------------------------------------------------------------------
    class ICudaEngine:
        def __init__(self, header: dict[str, Any], model: bytes, plan: bytes):
            import onnxruntime as ort

            self.header, self.plan = header, plan
            self.device = sim.device
            self.io = {t["name"]: t for t in header["io"]}
            self.names = [t["name"] for t in header["io"]]
            self.profiles = header["profiles"]
            so = ort.SessionOptions()
            so.intra_op_num_threads = 2
            so.log_severity_level = 3
            self.session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
            self.contexts: list[IExecutionContext] = []
            self.nodes = header["nodes"]

        num_io_tensors = property(lambda self: len(self.names))
        num_optimization_profiles = property(lambda self: len(self.profiles))
        device_memory_size_v2 = property(lambda self: DEVICE_MEMORY_SIZE)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            t = self.io.get(name)
            return TensorIOMode.NONE if t is None else (TensorIOMode.INPUT if t["mode"] == "input" else TensorIOMode.OUTPUT)

        def get_tensor_dtype(self, name):
            return DataType(self.io[name]["dtype"])

        def get_tensor_shape(self, name):
            return tuple(self.io[name]["shape"])

        def get_tensor_profile_shape(self, name, profile_index):
            return [tuple(s) for s in self.profiles[profile_index][name]]

        def get_device_memory_size_for_profile_v2(self, profile_index):
            return DEVICE_MEMORY_SIZE

        def create_execution_context(self, strategy=ExecutionContextAllocationStrategy.STATIC):
            ctx = IExecutionContext(self, ExecutionContextAllocationStrategy(int(strategy)))
            self.contexts.append(ctx)
            return ctx

        def serialize(self):
            return HostMemory(self.plan)

    class IExecutionContext:
        def __init__(self, engine: ICudaEngine, strategy: ExecutionContextAllocationStrategy):
            self.engine = engine
            self.profile = 0
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}
            self.memory: tuple[int, int] | None = None
            self.dirty = "it was created"  # why the next enqueue has deferred work, or None
            if strategy != ExecutionContextAllocationStrategy.USER_MANAGED:
                self.memory = (sim.allocate(DEVICE_MEMORY_SIZE, "device"), DEVICE_MEMORY_SIZE)
            self.enqueues = 0

        active_optimization_profile = property(lambda self: self.profile)

        def set_optimization_profile_async(self, index, stream):
            if not 0 <= int(index) < len(self.engine.profiles):
                return error(f"set_optimization_profile_async: no profile {index}")
            self.profile, self.shapes, self.dirty = int(index), {}, "the optimization profile changed"
            return True

        def set_device_memory(self, memory, size):
            if int(memory) % 256 or int(size) < DEVICE_MEMORY_SIZE:
                raise ValueError(error(f"set_device_memory: {size} bytes at {int(memory):#x} (need {DEVICE_MEMORY_SIZE}, 256-aligned)"))
            self.memory, self.dirty = (int(memory), int(size)), "its device memory was set"

        def set_input_shape(self, name, shape):
            t = self.engine.io.get(name)
            if t is None or t["mode"] != "input":
                return error(f"set_input_shape: {name!r} is not an input")
            shape = tuple(int(d) for d in shape)
            mn, _, mx = self.engine.profiles[self.profile][name]
            if len(shape) != len(mn) or any(not a <= d <= b for a, d, b in zip(mn, shape, mx)):
                return error(f"set_input_shape: {name!r} {shape} is outside profile {self.profile} ({mn}..{mx})")
            self.shapes[name], self.dirty = shape, f"the shape of {name!r} was set"
            return True

        def set_tensor_address(self, name, memory):
            if name not in self.engine.io:
                return error(f"set_tensor_address: no tensor {name!r}")
            if int(memory) % 256:
                return error(f"set_tensor_address: {name!r} at {int(memory):#x} is not 256-byte aligned")
            self.addresses[name], self.dirty = int(memory), f"the address of {name!r} was set"
            return True

        def get_tensor_address(self, name):
            return self.addresses.get(name, 0)

        def _batch(self) -> int | None:
            inputs = [n for n, t in self.engine.io.items() if t["mode"] == "input"]
            if not all(n in self.shapes for n in inputs):
                return None
            return self.shapes[inputs[0]][0]

        def get_tensor_shape(self, name):
            t = self.engine.io[name]
            if t["mode"] == "input":
                return self.shapes.get(name, tuple(t["shape"]))
            b = self._batch()
            return tuple(t["shape"]) if b is None else (b, *t["shape"][1:])

        def all_input_dimensions_specified(self):
            return self._batch() is not None

        def _nbytes(self, name: str, shape: tuple[int, ...]) -> int:
            return int(np.prod(shape)) * np.dtype(_NP[DataType(self.engine.io[name]["dtype"])]).itemsize

        def execute_async_v3(self, stream_handle):
            if not isinstance(stream_handle, int):
                raise TypeError(f"execute_async_v3(stream_handle: int), got {type(stream_handle).__name__}")
            try:
                stream = sim.stream(stream_handle)
            except CudaFault as e:
                return error(f"execute_async_v3: {e}")
            if sim.device != self.engine.device or stream.device != self.engine.device:
                return error(f"execute_async_v3: the engine is on device {self.engine.device}, the calling thread's "
                             f"current device is {sim.device} and the stream's {stream.device} (call cudaSetDevice "
                             "in the thread that enqueues)")
            if self.memory is None:
                return error("execute_async_v3: a USER_MANAGED context needs set_device_memory first")
            b = self._batch()
            missing = [n for n in self.engine.names if n not in self.addresses]
            if b is None or missing:
                return error(f"execute_async_v3: shapes or addresses not set (addresses missing: {missing})")
            cap = stream.capture
            if cap is not None and trt.capture_unsupported:
                sim.invalidate(cap, "execute_async_v3: this engine has a layer that cannot be captured; capture invalidated")
                return error("execute_async_v3: the engine cannot run inside a stream capture")
            if cap is not None and self.dirty:
                sim.invalidate(cap, f"execute_async_v3 inside stream capture right after {self.dirty}: TensorRT's deferred "
                                    "updates cannot be captured (run one enqueue outside the capture first); capture invalidated")
                return error(f"execute_async_v3: first enqueue after {self.dirty} was captured")
            for other, other_stream in sim.pending_owners():
                if other is self or other_stream is stream or not isinstance(other, IExecutionContext):
                    continue
                shares_profile = other.engine is self.engine and other.profile == self.profile
                shares_memory = other.memory is not None and other.memory[0] == self.memory[0]
                if shares_profile or shares_memory:
                    why = "optimization profile" if shares_profile else "device memory"
                    return error(f"execute_async_v3: another context on the same {why} still has work on stream "
                                 f"{other_stream.handle:#x}: contexts on one profile must not run concurrently")
            snap_shapes = {n: (self.shapes[n] if n in self.shapes else (b, *self.engine.io[n]["shape"][1:])) for n in self.engine.names}
            snap_addr = dict(self.addresses)
            snap_memory = self.memory
            refs = [(snap_addr[n], self._nbytes(n, snap_shapes[n])) for n in self.engine.names] + [snap_memory]
            op = Op(lambda: self._compute(snap_shapes, snap_addr), refs, f"TensorRT enqueue (batch {b})", owner=self)

            def replay_check():
                now = {n: self.get_tensor_shape(n) for n in self.engine.names}
                if now != snap_shapes or self.addresses != snap_addr or self.memory != snap_memory:
                    raise CudaFault(cudaError_t.cudaErrorInvalidValue, error(
                        f"cudaGraphLaunch: a captured TensorRT enqueue (batch {b}) is replayed after its context's shapes "
                        f"or addresses changed (captured {snap_shapes}, now {now}): one graph per context and shape"))

            if cap is not None:
                op.replay_check = replay_check
                if cap.invalidated:
                    return error("execute_async_v3: the stream's capture is invalidated")
                cap.nodes.append(op)
                sim.count("captured_enqueues")
            else:
                sim.submit(stream, op)
                self.dirty = None
                sim.count("enqueues")
            self.enqueues += 1
            return True

        def _compute(self, shapes: dict[str, tuple[int, ...]], addresses: dict[str, int]) -> None:
            feeds = {}
            for i in self.engine.session.get_inputs():
                dt = np.dtype(_NP[DataType(self.engine.io[i.name]["dtype"])])
                raw = sim.read(addresses[i.name], self._nbytes(i.name, shapes[i.name]))
                feeds[i.name] = np.frombuffer(raw, dtype=dt).reshape(shapes[i.name]).copy()
            outs = self.engine.session.run(None, feeds)
            for o, value in zip(self.engine.session.get_outputs(), outs):
                dt = np.dtype(_NP[DataType(self.engine.io[o.name]["dtype"])])
                value = np.ascontiguousarray(value.astype(dt, copy=False)) + dt.type(getattr(trt, "corrupt", 0.0))
                if value.shape != shapes[o.name]:
                    raise CudaFault(cudaError_t.cudaErrorIllegalAddress, error(f"output {o.name!r} {value.shape} != {shapes[o.name]}"))
                sim.write(addresses[o.name], value.astype(dt).tobytes())
            sim.count("engine_runs")  # the network evaluated once (an enqueue run, or a replayed one)
            sim.clock_ms += 1.0

    class Runtime:
        def __init__(self, logger):
            self.logger = logger
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, data):
            data = bytes(data.read() if hasattr(data, "read") else data)
            if not data.startswith(PLAN_MAGIC):
                error("deserialize_cuda_engine: not a TensorRT plan")
                return None
            head, _, model = data[len(PLAN_MAGIC):].partition(b"\n")
            header = json.loads(head)
            here = device_identity()
            if {k: header[k] for k in here} != here:
                error(f"deserialize_cuda_engine: the plan was built for {[header[k] for k in here]}, this is {list(here.values())}")
                return None
            return ICudaEngine(header, model, data)

    trt.Runtime, trt.ICudaEngine, trt.IExecutionContext = Runtime, ICudaEngine, IExecutionContext
    trt.corrupt = 0.0  # tests set it to make the "engine" miss (an error added to every output)
    trt.capture_unsupported = False  # tests set it for an engine whose kernels a stream capture cannot hold
    return trt


def plan_header(path: str | Path) -> dict[str, Any]:
    """What a fake plan file says about itself (device, profiles, I/O, nodes parsed, TF32)."""
    data = Path(path).read_bytes()
    assert data.startswith(PLAN_MAGIC), path
    return json.loads(data[len(PLAN_MAGIC):].partition(b"\n")[0])


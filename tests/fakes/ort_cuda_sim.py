"""A simulated onnxruntime-gpu 1.31 (`onnxruntime` module) whose CUDA EP runs on `tests/fakes/cuda_sim.py`.

Everything the CPU needs is the real ONNX Runtime (the module's attributes are the real module's);
what is simulated is the CUDA EP, to its documented behaviour:

* `get_available_providers()` lists CUDAExecutionProvider whether or not it can load;
* the CUDA EP loads only after `preload_dlls()` (pip-installed CUDA and cuDNN, the `cuda` / `cudnn`
  extras) and only if those libraries are there (`Sim.cuda_libraries`); otherwise a session asked for
  CUDA comes up on the CPU alone (`get_providers()` says so), as ONNX Runtime does;
* CUDA OrtValues live in simulated device memory (freed, and poisoned, when the OrtValue goes);
* with `enable_cuda_graph`, runs go through IO binding with device inputs and outputs, at most one at
  a time; each `gpu_graph_id` (-1: no capture) makes `RUNS_BEFORE_CAPTURE` ordinary runs, is captured
  on the next and replayed after that, and a replay must see the addresses, shapes and dtypes bound when
  it was captured (a GPU would silently read and write the old buffers);
* IO binding also binds raw device pointers (`bind_input` / `bind_output` with `buffer_ptr`), which
  must lie inside one live device allocation;
* host synchronizes, counted in `host_syncs` as ONNX Runtime makes them: a run synchronizes its
  stream at its end unless the run option `disable_synchronize_execution_providers` is "1"; a
  capturing run synchronizes before it begins the capture; the replay of a captured graph always
  synchronizes (onnxruntime/core/providers/cuda/cuda_graph.cc, `CUDAGraphManager::Replay`, called
  with its `sync` flag true from the session's replay); `IOBinding.synchronize_outputs()` /
  `synchronize_inputs()` synchronize. After a run that did not synchronize, its work is still queued:
  reading a device tensor (`numpy()`) or overwriting one (`update_inplace`) before a synchronize
  is a violation (on a GPU it would read stale data, or race the kernels). `update_inplace` and
  `numpy()` on CUDA values are blocking copies (`ort_copies`), not waits for queued work.

The session counts its runs per graph id (`runs`, `captured`) so tests can check what cmrt claims.
"""
from __future__ import annotations

import threading
import types

import numpy as np

from .cuda_sim import Sim

VERSION = "1.31.1"
RUNS_BEFORE_CAPTURE = 2  # the CUDA EP's min_num_runs_before_cuda_graph_capture_
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def build_onnxruntime(sim: Sim, real: types.ModuleType) -> types.ModuleType:
    ort = types.ModuleType("onnxruntime")
    ort.__dict__.update({k: v for k, v in real.__dict__.items() if not k.startswith("__")})
    ort.__version__ = VERSION
    state = types.SimpleNamespace(preloaded=False, unsynced=None)  # unsynced: why queued work awaits a synchronize

    def synchronized(what: str) -> None:
        sim.count("host_syncs")
        sim.count(what)
        state.unsynced = None

    def check_synchronized(what: str) -> None:
        if state.unsynced:
            raise RuntimeError(sim.violation(f"ONNX Runtime: {what} before a synchronize, while {state.unsynced} is still "
                                             "queued on the CUDA EP's stream (stale data or a race on a GPU)"))
    sim.cuda_libraries = True  # whether preload_dlls finds CUDA and cuDNN (the pip extras are installed)
    sim.ort_graph_capturable = True  # whether every node of a model lands on the CUDA EP
    sim.ort_sessions = []

    ort.get_available_providers = lambda: [CUDA, CPU]
    ort.get_device = lambda: "GPU"

    def preload_dlls(cuda: bool = True, cudnn: bool = True, msvc: bool = True, directory=None):
        state.preloaded = bool(cuda and cudnn and sim.cuda_libraries)
        sim.count("ort_preload_dlls")

    ort.preload_dlls = preload_dlls

    class OrtValue:
        """A tensor on the CPU (a numpy array) or on the simulated GPU (device memory)."""

        def __init__(self, shape, dtype, device: str, device_id: int, array: np.ndarray | None = None):
            self._shape, self._dtype, self._device, self._device_id = tuple(int(d) for d in shape), np.dtype(dtype), device, int(device_id)
            self._nbytes = int(np.prod(self._shape)) * self._dtype.itemsize
            self._array = array
            self._ptr = sim.allocate(max(self._nbytes, 1), "device") if device == "cuda" else None

        @staticmethod
        def ortvalue_from_shape_and_type(shape, element_type, device_type="cpu", device_id=0):
            if device_type == "cpu":
                return OrtValue(shape, element_type, "cpu", 0, np.zeros(shape, element_type))
            return OrtValue(shape, element_type, device_type, device_id)

        @staticmethod
        def ortvalue_from_numpy(array, device_type="cpu", device_id=0):
            array = np.ascontiguousarray(array)
            v = OrtValue(array.shape, array.dtype, device_type, device_id, array if device_type == "cpu" else None)
            if device_type == "cuda":
                v.update_inplace(array)
            return v

        def update_inplace(self, array):
            array = np.ascontiguousarray(array)
            if array.shape != self._shape or array.dtype != self._dtype:
                raise RuntimeError(f"update_inplace: {array.dtype}{list(array.shape)} into {self._dtype}{list(self._shape)}")
            if self._ptr is None:
                self._array[...] = array
            else:
                check_synchronized("OrtValue.update_inplace of a CUDA tensor")
                self._write(array)
                sim.count("ort_copies")

        def _write(self, array):
            sim.check_live([(self._ptr, self._nbytes)], "OrtValue.update_inplace")
            sim.write(self._ptr, array.tobytes())  # a synchronous copy, as ONNX Runtime's is

        def numpy(self):
            if self._ptr is None:
                return self._array
            check_synchronized("reading a CUDA tensor (OrtValue.numpy)")
            sim.count("ort_copies")
            return self._read()

        def _read(self):
            """What the (fake) CUDA EP's kernels read: no synchronize rule, no copy counted."""
            if self._ptr is None:
                return self._array
            sim.check_live([(self._ptr, self._nbytes)], "OrtValue.numpy")
            return np.frombuffer(sim.read(self._ptr, self._nbytes), self._dtype).reshape(self._shape).copy()

        def data_ptr(self):
            return self._ptr if self._ptr is not None else self._array.ctypes.data

        def shape(self):
            return list(self._shape)

        def device_name(self):
            return self._device

        def element_type(self):
            return self._dtype

        def is_tensor(self):
            return True

        def has_value(self):
            return True

        def __del__(self):
            if getattr(self, "_ptr", None) is not None:
                try:
                    sim.free(self._ptr, "device")
                except Exception:
                    pass

    class DeviceTensor(OrtValue):
        """A tensor over device memory the caller owns (IOBinding's raw `buffer_ptr`): never freed by ONNX Runtime."""

        def __init__(self, shape, dtype, device_id, ptr):
            self._shape, self._dtype, self._device, self._device_id = tuple(int(d) for d in shape), np.dtype(dtype), "cuda", int(device_id)
            self._nbytes = int(np.prod(self._shape)) * self._dtype.itemsize
            self._array = None
            a = sim.lookup(int(ptr), max(self._nbytes, 1))
            if a is None or a.kind != "device" or a.freed:
                raise RuntimeError(sim.violation(f"IOBinding: buffer_ptr {int(ptr):#x} with {self._nbytes} bytes "
                                                 f"{list(self._shape)} is not inside one live device allocation"))
            self._ptr = int(ptr)

        def __del__(self):
            pass

    def raw_tensor(name, device_type, device_id, element_type, shape, buffer_ptr):
        if device_type != "cuda":
            raise RuntimeError(f"the fake binds raw pointers on cuda only, got {device_type!r} for {name!r}")
        if element_type is None or shape is None:
            raise RuntimeError(f"binding {name!r} to a raw pointer needs its element_type and shape")
        return DeviceTensor(shape, element_type, device_id, buffer_ptr)

    class IOBinding:
        def __init__(self, session):
            self.session, self.inputs, self.outputs = session, {}, {}

        def bind_ortvalue_input(self, name, value):
            self.inputs[name] = value

        def bind_ortvalue_output(self, name, value):
            self.outputs[name] = value

        def bind_input(self, name, device_type, device_id, element_type, shape, buffer_ptr):
            self.inputs[name] = raw_tensor(name, device_type, device_id, element_type, shape, buffer_ptr)

        def bind_output(self, name, device_type="cpu", device_id=0, element_type=None, shape=None, buffer_ptr=None):
            if buffer_ptr is None:
                raise RuntimeError("the fake binds outputs to preallocated memory only (an OrtValue, or a buffer_ptr)")
            self.outputs[name] = raw_tensor(name, device_type, device_id, element_type, shape, buffer_ptr)

        def bind_cpu_input(self, name, array):
            self.inputs[name] = OrtValue.ortvalue_from_numpy(array)

        def clear_binding_inputs(self):
            self.inputs.clear()

        def clear_binding_outputs(self):
            self.outputs.clear()

        def synchronize_inputs(self):
            synchronized("ort_syncs")

        def synchronize_outputs(self):
            synchronized("ort_syncs")

        def get_outputs(self):
            return list(self.outputs.values())

        def copy_outputs_to_cpu(self):
            return [v.numpy() for v in self.outputs.values()]

    class InferenceSession:
        def __init__(self, path_or_bytes, sess_options=None, providers=None, provider_options=None, **kwargs):
            requested = [p if isinstance(p, str) else p[0] for p in (providers or [CPU])]
            options = {p[0]: dict(p[1]) for p in (providers or []) if not isinstance(p, str)}
            self._cuda_options = options.get(CUDA, {})
            self._providers = [CPU]
            if CUDA in requested:
                if state.preloaded and sim.cuda_libraries:
                    self._providers = [CUDA, CPU]
                else:
                    sim.violation("ONNX Runtime: the CUDA EP failed to load (libcudnn / libcublas not found: "
                                  "preload_dlls() was not called or the cuda/cudnn extras are missing); falling back to CPU")
                    if CPU not in requested:
                        raise RuntimeError("the CUDA EP failed to load and the CPU EP was not requested")
            self.cuda_graph = self._providers[0] == CUDA and str(self._cuda_options.get("enable_cuda_graph", "0")) == "1"
            if self.cuda_graph and not sim.ort_graph_capturable:
                raise RuntimeError("This session cannot use the graph capture feature as requested by the user as all "
                                   "compute graph nodes have not been partitioned to the CUDA EP.")
            self._real = real.InferenceSession(path_or_bytes, sess_options, providers=[CPU])
            self.runs: dict[int, int] = {}
            self.captured: dict[int, dict[str, tuple[int, tuple[int, ...], str]]] = {}
            self._busy = threading.Lock()
            sim.ort_sessions.append(self)

        def get_providers(self):
            return list(self._providers)

        def get_provider_options(self):
            return {CUDA: self._cuda_options} if self._providers[0] == CUDA else {}

        def get_inputs(self):
            return self._real.get_inputs()

        def get_outputs(self):
            return self._real.get_outputs()

        def get_modelmeta(self):
            return self._real.get_modelmeta()

        def io_binding(self):
            return IOBinding(self)

        def run(self, output_names, input_feed, run_options=None):
            if self.cuda_graph:
                raise RuntimeError("a session with enable_cuda_graph runs only through run_with_iobinding")
            return self._real.run(output_names, input_feed, run_options)

        def run_with_iobinding(self, iobinding, run_options=None):
            if not self._busy.acquire(blocking=False):
                raise RuntimeError(sim.violation("ONNX Runtime: concurrent run on a session with CUDA graphs"))
            try:
                self._run_bound(iobinding, run_options)
            finally:
                self._busy.release()

        def _run_bound(self, io, run_options):
            graph_id = 0
            no_sync = False
            if run_options is not None:
                graph_id = int(_entry(run_options, "gpu_graph_id") or 0)
                no_sync = _entry(run_options, "disable_synchronize_execution_providers") == "1"
            replay = capture = False
            bound = {n: (v.data_ptr(), tuple(v.shape()), str(v.element_type())) for n, v in {**io.inputs, **io.outputs}.items()}
            if self.cuda_graph:
                off_device = [n for n, v in {**io.inputs, **io.outputs}.items() if v.device_name() != "cuda"]
                if off_device:
                    raise RuntimeError(sim.violation(f"ONNX Runtime CUDA graphs need device inputs and outputs; {off_device} are not"))
                if graph_id != -1:
                    n = self.runs.get(graph_id, 0)
                    self.runs[graph_id] = n + 1
                    if graph_id in self.captured:
                        if bound != self.captured[graph_id]:
                            raise RuntimeError(sim.violation(
                                f"ONNX Runtime: CUDA graph {graph_id} replayed with other bound addresses or shapes "
                                f"(captured {self.captured[graph_id]}, now {bound})"))
                        sim.count("ort_graph_replays")
                        replay = True
                    elif n >= RUNS_BEFORE_CAPTURE:
                        self.captured[graph_id] = bound
                        sim.count("ort_graph_captures")
                        capture = True
            if capture:
                synchronized("ort_capture_syncs")  # CUDAGraphManager::CaptureBegin synchronizes the stream
            feeds = {name: v._read() for name, v in io.inputs.items()}
            names = list(io.outputs)
            for name, value in zip(names, self._real.run(names, feeds)):
                out = io.outputs[name]
                if tuple(value.shape) != tuple(out.shape()):
                    raise RuntimeError(f"output {name!r} has shape {value.shape}, bound {out.shape()}")
                out._write(np.ascontiguousarray(value.astype(out.element_type(), copy=False)))
            if replay:
                synchronized("ort_replay_syncs")  # the replay synchronizes whatever the run options say
            elif not no_sync:
                synchronized("ort_run_syncs")
            elif self._providers[0] == CUDA:
                state.unsynced = f"a run of {self!r}"

    def _entry(run_options, key):
        try:
            return run_options.get_run_config_entry(key)
        except Exception:  # ONNX Runtime raises for a key that was never set
            return None

    ort.OrtValue, ort.IOBinding, ort.InferenceSession = OrtValue, IOBinding, InferenceSession
    return ort

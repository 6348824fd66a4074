"""ONNX Runtime on CUDA with IO binding and CUDA graphs: the GPU path where TensorRT is missing.

ONNX Runtime's CUDA graphs need fixed device addresses and fixed shapes per graph, so each
batch size gets its own IO binding over device OrtValues allocated once, and its own graph,
selected with the `gpu_graph_id` run option (ids start at 1: id = batch size; -1 would skip
capture). Inputs are copied in place into the bound device buffers (`OrtValue.update_inplace`)
and the output copied back. Runs are serialized: CUDA graphs do not allow concurrent `run`
on one session.

What this relies on in ONNX Runtime (onnxruntime-gpu 1.31, CUDA EP), and so what
`graph_batches` claims:
  * the CUDA EP's libraries load only after `onnxruntime.preload_dlls()` when CUDA and cuDNN
    come from pip (the `cuda`/`cudnn` extras); without them a session silently runs on the
    CPU, which this backend refuses (it checks `get_providers()`);
  * a graph id is captured only after ordinary runs (`min_num_runs_before_cuda_graph_capture_`
    = 2 in the CUDA EP: two regular runs, then the capturing run, which also replays), and
    ORT keeps the captured graph in the calling thread's context. So a batch size counts as
    captured once one thread has made `RUNS_BEFORE_CAPTURE + 1` runs with its graph id, never
    merely because it was bound.

If the session cannot be created with CUDA graphs (some node not on the CUDA EP), it is
created without them, with a warning.

Given a step graph (cmrt/build/step_graph.py) instead of the plain UNet graph, a generation
(`run_steps`) stays on the device: per (batch, steps, renoises) a staging OrtValue holds
everything the steps read (x_T, labels, each step's timesteps, constants and renoising term;
`GenerationLayout`), filled by ONE `update_inplace`; each step is an IO binding over device
pointers into it, with `x` and `x_next` bound to two ping-pong buffers (step i writes the
buffer step i + 1 reads), so nothing goes back to the host between steps. The steps run
with the run option `disable_synchronize_execution_providers` (ONNX Runtime does not wait for
the GPU at the end of each run), and the generation synchronizes once, at its end
(`IOBinding.synchronize_outputs`), before its one download. Each step's binding has its own
`gpu_graph_id`. Where ONNX Runtime replays a captured graph, its replay synchronizes its
stream (`CUDAGraphManager::Replay` in onnxruntime's cuda_graph.cc: the session's replay calls
it with `sync` true): with CUDA graphs that is one synchronize per step inside ONNX Runtime
on top of cmrt's one; without them (`use_cuda_graph=False`) a generation is one synchronize.
`run()` serves plain UNet calls through the same session under `UNET_ONLY_COEFS`.
"""
from __future__ import annotations

import logging
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ...engine import io_spec as spec
from .staging import GenerationLayout

logger = logging.getLogger(__name__)

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64, "tensor(int32)": np.int32}

# Regular runs the CUDA EP makes of a graph id before it captures it (min_num_runs_before_cuda_graph_capture_).
RUNS_BEFORE_CAPTURE = 2


def preload_cuda_libraries(ort: Any) -> str | None:
    """`onnxruntime.preload_dlls()`: load pip-installed CUDA / cuDNN before the CUDA EP needs them.

    Returns None, or why it could not (the CUDA EP may still load from system libraries)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return "this onnxruntime has no preload_dlls (onnxruntime-gpu >= 1.21 has it)"
    try:
        preload()
    except Exception as e:  # a missing library is reported, the session check decides
        return f"preload_dlls failed: {type(e).__name__}: {e}".splitlines()[0]
    return None


@dataclass
class _Binding:
    io: Any
    inputs: dict[str, Any]
    output: Any
    run_options: Any
    graph_id: int = 0


@dataclass
class _StepBuffers:
    """Per batch size, for generations through a step graph: the two ping-pong samples, the UNet
    output every step writes (read by plain UNet calls), and a zero renoising term."""

    ping: tuple[Any, Any]
    unet_output: Any
    zeros: Any


@dataclass
class _StepProgram:
    """Per (batch, steps, renoises): the staging OrtValue and its host copy, and one binding per step."""

    layout: GenerationLayout
    staging: Any
    host: np.ndarray
    views: dict[str, np.ndarray]
    steps: list[_Binding] = field(default_factory=list)


class OrtCudaBackend:
    """One CUDA EP session; `name` 'onnxruntime', `device` 'cuda'."""

    name = "onnxruntime"
    device = "cuda"

    def __init__(
        self,
        onnx_path: str | os.PathLike,
        use_cuda_graph: bool = True,
        device_id: int = 0,
        min_batch: int = 1,
        max_batch: int | None = None,
    ):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("the ONNX Runtime CUDA backend needs onnxruntime-gpu: `pip install 'cmrt[gpu-ort]'`") from e
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(
                "this onnxruntime has no CUDAExecutionProvider; install onnxruntime-gpu (and not onnxruntime) or use device='cpu'"
            )
        self._ort = ort
        self.preload_error = preload_cuda_libraries(ort)
        self.onnx_path = Path(onnx_path)
        self.device_id = int(device_id)
        self.min_batch = int(min_batch)
        self.max_batch = None if max_batch is None else int(max_batch)
        self._lock = threading.Lock()
        self.cuda_graph = bool(use_cuda_graph)
        self.graph_error: str | None = None
        try:
            self.session = self._session(self.cuda_graph)
        except Exception as e:
            if not self.cuda_graph:
                raise
            self.graph_error = str(e).splitlines()[0] if str(e) else type(e).__name__
            msg = f"ONNX Runtime cannot use CUDA graphs for {self.onnx_path.name} ({self.graph_error}); running without them"
            logger.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            self.cuda_graph = False
            self.session = self._session(False)
        active = self.session.get_providers()
        if active[0] != "CUDAExecutionProvider":
            why = f" ({self.preload_error})" if self.preload_error else ""
            raise RuntimeError(
                f"ONNX Runtime could not load its CUDA EP and fell back to {active[0]}{why}: the CUDA or cuDNN "
                "libraries are missing; install `onnxruntime-gpu[cuda,cudnn]` (the gpu extra does)"
            )
        self.provider = active[0]
        self.inputs = {i.name: (np.dtype(_ORT_TYPES[i.type]), tuple(int(d) for d in i.shape[1:])) for i in self.session.get_inputs()}
        self.step_graph = spec.STEP_X in self.inputs
        out = next(o for o in self.session.get_outputs() if o.name == spec.OUTPUT) if self.step_graph else self.session.get_outputs()[0]
        self.output_name = out.name
        self.output_spec = (np.dtype(_ORT_TYPES[out.type]), tuple(int(d) for d in out.shape[1:]))
        self.conditional = spec.CLASS_LABELS in self.inputs
        self._unet_only = np.array([spec.UNET_ONLY_COEFS[n] for n in spec.STEP_COEF_ORDER], dtype=np.float32)
        self._bindings: dict[int, _Binding] = {}
        self._step_buffers: dict[int, _StepBuffers] = {}
        self._programs: dict[tuple[int, int, bool], _StepProgram] = {}
        self._graph_batch: dict[int, int] = {}  # graph id -> its batch size
        self._graph_runs: dict[tuple[int, int], int] = {}  # (thread id, graph id) -> runs
        logger.info("ONNX Runtime CUDA EP session for %s (CUDA graphs %s%s)", self.onnx_path.name,
                    "on" if self.cuda_graph else "off", ", step graph" if self.step_graph else "")

    def _session(self, cuda_graph: bool):
        ort = self._ort
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        cuda_options = {"device_id": str(self.device_id)}
        if cuda_graph:
            cuda_options["enable_cuda_graph"] = "1"
        return ort.InferenceSession(
            str(self.onnx_path), so, providers=[("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]
        )

    def _binding(self, batch: int) -> _Binding:
        b = self._bindings.get(batch)
        if b is not None:
            return b
        ort = self._ort
        io = self.session.io_binding()
        values = {}
        for name, (dtype, tail) in self.inputs.items():
            v = ort.OrtValue.ortvalue_from_shape_and_type([batch, *tail], dtype, "cuda", self.device_id)
            io.bind_ortvalue_input(name, v)
            values[name] = v
        dtype, tail = self.output_spec
        out = ort.OrtValue.ortvalue_from_shape_and_type([batch, *tail], dtype, "cuda", self.device_id)
        io.bind_ortvalue_output(self.output_name, out)
        b = self._bindings[batch] = _Binding(io, values, out, self._run_options(batch, sync=True), batch)
        self._graph_batch[batch] = batch
        return b

    def _run_options(self, graph_id: int, sync: bool):
        ro = self._ort.RunOptions()
        if self.cuda_graph:
            ro.add_run_config_entry("gpu_graph_id", str(graph_id))  # one graph per binding; ids start at 1
        if not sync:  # the caller synchronizes (once per generation)
            ro.add_run_config_entry("disable_synchronize_execution_providers", "1")
        return ro

    def _run_bound(self, b: _Binding) -> None:
        self.session.run_with_iobinding(b.io, b.run_options)
        if self.cuda_graph:
            key = (threading.get_ident(), b.graph_id)
            self._graph_runs[key] = self._graph_runs.get(key, 0) + 1

    @property
    def graph_batches(self) -> list[int]:
        """Batch sizes with a graph ONNX Runtime has captured: run often enough on one thread (see the
        module docstring); a batch size that was only bound is not among them."""
        if not self.cuda_graph:
            return []
        return sorted({self._graph_batch[gid] for (_, gid), n in self._graph_runs.items() if n > RUNS_BEFORE_CAPTURE})

    def _check_batch(self, batch: int) -> None:
        if batch < 1 or batch < self.min_batch or (self.max_batch is not None and batch > self.max_batch):
            raise ValueError(f"batch {batch} is outside {self.min_batch}..{self.max_batch}")

    def run(self, sample: np.ndarray, timestep: np.ndarray, class_labels: np.ndarray | None = None) -> np.ndarray:
        batch = int(sample.shape[0])
        self._check_batch(batch)
        if self.step_graph:  # the UNet output of one step under spec.UNET_ONLY_COEFS, zero noise term
            with self._lock:
                prog = self._program(batch, 1, False)
                prog.layout.fill(prog.views, sample, class_labels, (timestep,), self._unet_only[None], None)
                self._generate(prog, None)
                return self._step_buffers[batch].unet_output.numpy()
        inputs = {spec.SAMPLE: sample, spec.TIMESTEP: timestep, spec.CLASS_LABELS: class_labels}
        with self._lock:
            b = self._binding(batch)
            for name, (dtype, tail) in self.inputs.items():
                arr = inputs.get(name)
                if arr is None:
                    raise ValueError(f"this model needs the input {name!r}")
                arr = np.ascontiguousarray(arr, dtype=dtype)
                if arr.shape != (batch, *tail):
                    raise ValueError(f"input {name!r} has shape {arr.shape}, expected {(batch, *tail)}")
                b.inputs[name].update_inplace(arr)
            self._run_bound(b)
            return b.output.numpy()

    # --- generations through the step graph ----------------------------------------------------
    def _device(self, shape: Sequence[int], dtype: Any, zeros: bool = False):
        ort = self._ort
        if zeros:
            return ort.OrtValue.ortvalue_from_numpy(np.zeros(tuple(shape), dtype), "cuda", self.device_id)
        return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, "cuda", self.device_id)

    def _buffers(self, batch: int) -> _StepBuffers:
        bufs = self._step_buffers.get(batch)
        if bufs is None:
            shape = (batch, *self.inputs[spec.STEP_X][1])
            bufs = self._step_buffers[batch] = _StepBuffers(
                ping=(self._device(shape, np.float32), self._device(shape, np.float32)),
                unet_output=self._device((batch, *self.output_spec[1]), self.output_spec[0]),
                zeros=self._device(shape, np.float32, zeros=True),
            )
        return bufs

    def _program(self, batch: int, steps: int, noisy: bool) -> _StepProgram:
        key = (batch, steps, noisy)
        prog = self._programs.get(key)
        if prog is not None:
            return prog
        bufs = self._buffers(batch)
        layout = GenerationLayout(batch, steps, noisy, self.inputs[spec.STEP_X][1], self.conditional)
        host = np.zeros(layout.nbytes, np.uint8)
        staging = self._device((layout.nbytes,), np.uint8)
        prog = _StepProgram(layout, staging, host, layout.views(host))
        base, dev = staging.data_ptr(), self.device_id
        x_shape = (batch, *self.inputs[spec.STEP_X][1])
        for i in range(steps):
            io = self.session.io_binding()
            x_ptr = base + layout.offset("x") if i == 0 else bufs.ping[i % 2].data_ptr()
            io.bind_input(spec.STEP_X, "cuda", dev, np.float32, x_shape, x_ptr)
            io.bind_input(spec.TIMESTEP, "cuda", dev, np.float32, (batch,), base + layout.offset("timesteps", i))
            if self.conditional:
                io.bind_input(spec.CLASS_LABELS, "cuda", dev, np.int64, (batch,), base + layout.offset("labels"))
            io.bind_input(spec.STEP_COEFS, "cuda", dev, np.float32, (len(spec.STEP_COEF_ORDER),), base + layout.offset("coefs", i))
            noise_ptr = base + layout.offset("noise", i) if noisy else bufs.zeros.data_ptr()
            io.bind_input(spec.NOISE_TERM, "cuda", dev, np.float32, x_shape, noise_ptr)
            io.bind_ortvalue_output(spec.STEP_OUTPUT, bufs.ping[(i + 1) % 2])
            io.bind_ortvalue_output(spec.OUTPUT, bufs.unet_output)
            graph_id = max([0, *self._graph_batch]) + 1
            self._graph_batch[graph_id] = batch
            prog.steps.append(_Binding(io, {}, bufs.ping[(i + 1) % 2], self._run_options(graph_id, sync=False), graph_id))
        self._programs[key] = prog
        return prog

    def _generate(self, prog: _StepProgram, on_step: Callable[[int, np.ndarray], None] | None) -> Any:
        """One upload, every step, one synchronize (one per step with `on_step`); returns the last x_next's OrtValue."""
        prog.staging.update_inplace(prog.host)
        for i, b in enumerate(prog.steps):
            self._run_bound(b)
            if on_step is not None:
                b.io.synchronize_outputs()
                on_step(i, b.output.numpy())
        if on_step is None:
            prog.steps[-1].io.synchronize_outputs()
        return prog.steps[-1].output

    def run_steps(self, sample: np.ndarray, timesteps: Sequence[np.ndarray], class_labels: np.ndarray | None,
                  coefs: np.ndarray, renoise: np.ndarray | None,
                  on_step: Callable[[int, np.ndarray], None] | None = None) -> np.ndarray:
        """Every step of a generation through the step graph, on the device (see the module docstring)."""
        if not self.step_graph:
            raise RuntimeError(f"{self.onnx_path.name} is a plain UNet graph, not a step graph; load with step_graph=True")
        batch = int(np.shape(sample)[0])
        self._check_batch(batch)
        if len(timesteps) < 1:
            raise ValueError("run_steps needs at least one step")
        with self._lock:
            prog = self._program(batch, len(timesteps), renoise is not None)
            prog.layout.fill(prog.views, sample, class_labels, timesteps, coefs, renoise)
            return self._generate(prog, on_step).numpy()

    def warmup(self, batch_sizes: Sequence[int], steps: Sequence[int] = (1, 2)) -> None:
        """Make, for each batch size, the runs ONNX Runtime needs before it captures a graph id
        (`RUNS_BEFORE_CAPTURE`, then the capturing run), in this thread: of the plain UNet call, and,
        on a step graph, of a generation of each step count in `steps` (1 and 2 by default)."""
        runs = RUNS_BEFORE_CAPTURE + 1 if self.cuda_graph else 1
        for b in batch_sizes:
            self._check_batch(int(b))
        with self._lock:
            for b in batch_sizes:
                b = int(b)
                if not self.step_graph:
                    binding = self._binding(b)
                    for name, value in binding.inputs.items():
                        dtype, tail = self.inputs[name]
                        value.update_inplace(np.zeros((b, *tail), dtype))
                    for _ in range(runs):
                        self._run_bound(binding)
                    continue
                keys = {(b, 1, False)} | {(b, int(s), int(s) > 1) for s in steps}
                for key in sorted(keys):
                    prog = self._program(*key)
                    prog.host[...] = 0
                    prog.views["coefs"][...] = self._unet_only
                    for _ in range(runs):
                        self._generate(prog, None)

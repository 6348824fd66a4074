"""TensorRT backend: the folder's step-graph engine driven through cuda-bindings, a whole generation per CUDA graph.

The engine is built from the step graph (cmrt/build/step_graph.py: `x`, `timestep`,
`class_labels`, `step_coefs`, `noise_term` -> `x_next`, `model_output`), so that the
per-step arithmetic of the consistency step runs on the GPU and a generation needs the host
only at its start and end. The numpy scheduler still computes every constant and every
noise draw; this backend only moves them and runs the steps.

Per batch size b (created on first use or by `warmup`, then reused): one execution context on
the optimization profile that serves b (`set_optimization_profile_async(profile_index_for(
profiles, b), stream)`: batch 1 runs on the opt-1 profile, the latency case), user-managed
scratch memory shared by all contexts (they run one after another on one stream, so no two
contexts on one profile are ever in flight together), shapes set to b, addresses bound to the
engine's I/O buffers (one 256-byte-aligned pool sized for the max batch, shared by all
contexts), and a warm-up enqueue that flushes TensorRT's deferred work before any capture.

Per (batch, steps, renoises): a *program*: a device staging buffer and its pinned host mirror
laid out as [x_T | labels | each step's timesteps | each step's constants | each step's
renoising term], and a CUDA graph that runs every step from it: copy x_T and the labels into
the bound inputs; per step, copy its timesteps, constants and renoising term into the bound
inputs (device-to-device copies, capturable), enqueue, and copy x_next back into x for the
next step. Without a renoising term (one step, and plain UNet calls) the graph zeroes
`noise_term` instead. A call is then: pack the inputs into the pinned mirror, ONE host-to-
device copy, ONE graph launch between two CUDA events, ONE device-to-host copy, ONE stream
synchronize. With a per-step callback (`run_steps(..., on_step=...)`) each step is issued
directly and synchronized, because the callback needs each step's result on the host: one
synchronize per step. If capture fails, the program is issued without a graph (the same
copies and enqueues), with a warning.

`run()` (zero-shot editing, validation) is a one-step program under `UNET_ONLY_COEFS` with a
zero `noise_term`, reading `model_output`. `pop_event_timings()` gives the GPU milliseconds,
measured with CUDA events on the stream, of each launch since the last pop: one per
generation for `run_steps` (every step in one graph), one per UNet call for `run()`, one per
step with a callback.

Threads: every call holds one lock, so a `close()` never frees memory a replay is still using,
and each call first makes the backend's GPU current in the calling thread (the current CUDA
device is per host thread, and a call may come from any thread). The engine's I/O tensors are
checked against the manifest at load (names and dtypes), and its profiles against the entry's.
"""
from __future__ import annotations

import logging
import os
import threading
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ...engine.io_spec import (
    CLASS_LABELS,
    NOISE_TERM,
    OUTPUT,
    STEP_COEF_ORDER,
    STEP_COEFS,
    STEP_INPUT_NAMES,
    STEP_OUTPUT,
    STEP_X,
    TIMESTEP,
    UNET_ONLY_COEFS,
)
from ...engine.tensorrt import Profile, profile_index_for
from . import cuda
from .staging import GenerationLayout

logger = logging.getLogger(__name__)

_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}
# TensorRT's DataType members by the manifest's dtype names (TensorRT 11 has no `nptype`).
_TRT_DTYPES = {"float32": "FLOAT", "float16": "HALF", "int64": "INT64", "int32": "INT32"}
# Event timings kept until `pop_event_timings` (the oldest are dropped when nobody pops).
_MAX_TIMINGS = 4096
_STEP_COUNTS_WARMED = (1, 2)


@dataclass
class _Slot:
    context: Any
    profile: int  # the optimization profile the context runs on


class _Program:
    """A generation's shape (batch, steps, whether it renoises): its staging buffers (device, and
    the pinned host mirror one copy uploads) laid out by `GenerationLayout`, and its CUDA graph."""

    def __init__(self, layout: GenerationLayout):
        self.layout = layout
        self.batch, self.steps, self.noisy = layout.batch, layout.steps, layout.noisy
        self.device: cuda.DeviceBuffer | None = None
        self.host: cuda.PinnedArray | None = None
        self.graph: cuda.CudaGraph | None = None
        self.capture_tried = False
        self.views: dict[str, np.ndarray] = {}

    def allocate(self) -> None:
        self.device = cuda.DeviceBuffer(self.layout.nbytes)
        self.host = cuda.PinnedArray((self.layout.nbytes,), np.uint8)
        self.views = self.layout.views(self.host.array)

    def ptr(self, name: str, step: int = 0) -> int:
        """Device address of `name` (of step `step`'s share for the per-step parts)."""
        return self.device.ptr + self.layout.offset(name, step)

    def close(self) -> None:
        if self.graph is not None:
            self.graph.close()
            self.graph = None
        self.views = {}
        for buf in (self.host, self.device):
            if buf is not None:
                buf.close()


class TensorRTBackend:
    """One TensorRT step-graph engine on one GPU; `name` 'tensorrt', `device` 'cuda'."""

    name = "tensorrt"
    device = "cuda"

    def __init__(
        self,
        plan_path: str | os.PathLike,
        io_spec: dict[str, Any],
        profiles: Sequence[Profile | dict[str, int]],
        use_cuda_graph: bool = True,
        device_index: int = 0,
        step_graph: bool = True,
    ):
        """`io_spec`: the step graph's {"inputs": [...], "outputs": [...]} from the manifest (names, dtypes,
        shapes with 'batch' first where there is a batch axis). `profiles`: the engine's optimization
        profiles in order (the manifest entry's `profiles`). `step_graph`: whether the pipeline hands
        this backend whole generations (`run_steps`); False runs the numpy loop over `run()`."""
        try:
            import tensorrt as trt
        except Exception as e:
            raise ImportError(f"the TensorRT backend needs TensorRT 11 (`pip install 'cmrt[gpu]' --extra-index-url https://pypi.nvidia.com`): {e}") from e
        self._closed = True  # until fully constructed
        self._lock = threading.Lock()
        self.plan_path = Path(plan_path)
        self.profiles = tuple(p if isinstance(p, Profile) else Profile(**p) for p in profiles)
        if not self.profiles:
            raise ValueError("a TensorRT engine needs at least one optimization profile")
        self.min_batch = min(p.min for p in self.profiles)
        self.max_batch = max(p.max for p in self.profiles)
        self.use_cuda_graph = bool(use_cuda_graph)
        self.step_graph = bool(step_graph)
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
        missing = [n for n in STEP_INPUT_NAMES if n not in self.input_names and n != CLASS_LABELS]
        if missing or STEP_OUTPUT not in self.output_names or OUTPUT not in self.output_names:
            raise RuntimeError(
                f"{self.plan_path.name}: its I/O {self.input_names} -> {self.output_names} is not a step graph's; "
                "rebuild the engine with `cmrt build ... --backend tensorrt`"
            )
        engine_names = {self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)}
        if engine_names != set(self.input_names + self.output_names):
            raise RuntimeError(
                f"{self.plan_path.name} has I/O tensors {sorted(engine_names)}, the manifest says "
                f"{sorted(self.input_names + self.output_names)}; rebuild the engine"
            )
        if int(self._engine.num_optimization_profiles) != len(self.profiles):
            raise RuntimeError(
                f"{self.plan_path.name} has {self._engine.num_optimization_profiles} optimization profiles, the manifest "
                f"says {len(self.profiles)}; rebuild the engine"
            )
        specs = {t["name"]: t for t in io_spec["inputs"] + io_spec["outputs"]}
        self._check_io(trt, specs)
        self._dtypes = {n: np.dtype(_NP_DTYPES[specs[n]["dtype"]]) for n in specs}
        self._batched = {n: list(specs[n]["shape"][:1]) == ["batch"] for n in specs}
        self._dims = {n: tuple(int(d) for d in (specs[n]["shape"][1:] if self._batched[n] else specs[n]["shape"])) for n in specs}
        self.conditional = CLASS_LABELS in self.input_names
        self._unet_only = np.array([UNET_ONLY_COEFS[n] for n in STEP_COEF_ORDER], dtype=np.float32)

        self._stream = None
        self._pool = None
        self._scratch = None
        self._events: tuple[cuda.Event, cuda.Event] | None = None
        self._host: dict[str, cuda.PinnedArray] = {}
        self._slots: dict[int, _Slot] = {}
        self._programs: dict[tuple[int, int, bool], _Program] = {}
        self._timings: deque[float] = deque(maxlen=_MAX_TIMINGS)
        self.graph_failures: dict[int, str] = {}
        try:
            self._stream = cuda.Stream()
            names = self.input_names + self.output_names
            sizes = [self._nbytes(n, self.max_batch) for n in names]
            offsets, total = cuda.aligned_layout(sizes)
            self._pool = cuda.DeviceBuffer(total)
            # zeros, so that the warm-up enqueue of a new context reads defined inputs (label 0, not garbage indices)
            cuda.memset_async(self._pool.ptr, 0, total, self._stream)
            self._addr = {n: self._pool.ptr + off for n, off in zip(names, offsets)}
            for n in self.output_names:
                self._host[n] = cuda.PinnedArray(self._shape(n, self.max_batch), self._dtypes[n])
            self._scratch = cuda.DeviceBuffer(int(self._engine.device_memory_size_v2))
            self._events = (cuda.Event(), cuda.Event())
            self._alloc_strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
            self._stream.synchronize()
        except BaseException:
            self._closed = False
            self.close()
            raise
        self._closed = False
        logger.info(
            "TensorRT engine %s on GPU %d: profiles %s, %.1f MiB I/O + %.1f MiB scratch, CUDA graphs %s",
            self.plan_path.name, self.device_index, "+".join(p.tag for p in self.profiles), total / 2**20,
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

    def _shape(self, name: str, batch: int) -> tuple[int, ...]:
        return (batch, *self._dims[name]) if self._batched[name] else self._dims[name]

    def _nbytes(self, name: str, batch: int) -> int:
        return int(np.prod(self._shape(name, batch), dtype=np.int64)) * self._dtypes[name].itemsize

    # --- per batch size: a context on its profile -------------------------------------------
    def _enqueue(self, context: Any) -> None:
        if not context.execute_async_v3(self._stream.ptr):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.plan_path.name}")

    def profile_of(self, batch: int) -> int:
        """The index of the optimization profile that serves `batch` (what its context selects)."""
        return profile_index_for(self.profiles, batch)

    def _slot(self, batch: int) -> _Slot:
        slot = self._slots.get(batch)
        if slot is not None:
            return slot
        profile = self.profile_of(batch)
        ctx = self._engine.create_execution_context(self._alloc_strategy)
        if ctx is None:
            raise RuntimeError(f"TensorRT could not create an execution context for batch {batch}")
        ctx.set_device_memory(self._scratch.ptr, self._scratch.nbytes)
        if not ctx.set_optimization_profile_async(profile, self._stream.ptr):
            raise RuntimeError(f"TensorRT rejected optimization profile {profile} for batch {batch}")
        for n in self.input_names:
            if not ctx.set_input_shape(n, self._shape(n, batch)):
                raise RuntimeError(f"TensorRT rejected input shape {self._shape(n, batch)} for {n!r} (profile {profile})")
        for n in self.input_names + self.output_names:
            if not ctx.set_tensor_address(n, self._addr[n]):
                raise RuntimeError(f"TensorRT rejected the address of {n!r}")
        for n in self.output_names:
            shape = tuple(ctx.get_tensor_shape(n))
            if shape != self._shape(n, batch):
                raise RuntimeError(f"TensorRT output {n!r} has shape {shape} at batch {batch}, expected {self._shape(n, batch)}")
        self._enqueue(ctx)  # warm-up: flushes deferred updates so that a capture records only kernels
        self._stream.synchronize()
        slot = self._slots[batch] = _Slot(ctx, profile)
        return slot

    # --- per (batch, steps, renoises): a program and its graph ---------------------------------
    def _program(self, batch: int, steps: int, noisy: bool) -> _Program:
        key = (batch, steps, noisy)
        prog = self._programs.get(key)
        if prog is not None:
            return prog
        self._slot(batch)
        prog = _Program(GenerationLayout(batch, steps, noisy, self._dims[STEP_X], self.conditional))
        try:
            prog.allocate()
        except BaseException:
            prog.close()
            raise
        self._programs[key] = prog
        return prog

    def _capture(self, prog: _Program) -> None:
        """Capture every step of `prog` into its CUDA graph (first launch only); on failure it is issued without one."""
        prog.capture_tried = True
        slot = self._slots[prog.batch]
        try:
            prog.graph = cuda.CudaGraph.capture(self._stream, lambda: self._issue(prog, slot, range(prog.steps)))
        except Exception as e:
            self.graph_failures.setdefault(prog.batch, str(e))
            msg = f"CUDA graph capture failed for batch {prog.batch}, {prog.steps} step(s) ({e}); issuing its work without a graph"
            logger.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=5)
            self._stream.synchronize()

    def _issue(self, prog: _Program, slot: _Slot, steps: range) -> None:
        """Queue the work of `steps` of `prog` on the stream (what its graph holds, when `steps` is all of them)."""
        a, b, s = self._addr, prog.batch, self._stream
        x_bytes = self._nbytes(STEP_X, b)
        last = prog.steps - 1
        for i in steps:
            if i == 0:
                cuda.copy_dtod_async(a[STEP_X], prog.ptr("x"), x_bytes, s)
                if self.conditional:
                    cuda.copy_dtod_async(a[CLASS_LABELS], prog.ptr("labels"), self._nbytes(CLASS_LABELS, b), s)
                if not prog.noisy:
                    cuda.memset_async(a[NOISE_TERM], 0, self._nbytes(NOISE_TERM, b), s)
            cuda.copy_dtod_async(a[TIMESTEP], prog.ptr("timesteps", i), self._nbytes(TIMESTEP, b), s)
            cuda.copy_dtod_async(a[STEP_COEFS], prog.ptr("coefs", i), self._nbytes(STEP_COEFS, b), s)
            if prog.noisy:
                cuda.copy_dtod_async(a[NOISE_TERM], prog.ptr("noise", i), self._nbytes(NOISE_TERM, b), s)
            self._enqueue(slot.context)
            if i < last:
                cuda.copy_dtod_async(a[STEP_X], a[STEP_OUTPUT], x_bytes, s)

    def _launch(self, prog: _Program, steps: range | None = None) -> None:
        """Queue `steps` of `prog` (all: its graph, where it has one) between the two timing events."""
        if steps is None and self.use_cuda_graph and not prog.capture_tried:
            self._capture(prog)
        start, end = self._events
        start.record(self._stream)
        if steps is None and prog.graph is not None:
            prog.graph.launch(self._stream)
        else:
            self._issue(prog, self._slots[prog.batch], range(prog.steps) if steps is None else steps)
        end.record(self._stream)

    def _download_and_wait(self, batch: int, outputs: Sequence[str]) -> None:
        """Copy `outputs` to their pinned host buffers, synchronize once, and keep the launch's GPU time."""
        for n in outputs:
            cuda.copy_dtoh_async(self._host[n].array[:batch], self._addr[n], self._stream)
        self._stream.synchronize()
        self._timings.append(cuda.Event.elapsed_ms(*self._events))

    def _upload(self, prog: _Program) -> None:
        """The one host-to-device copy of a call: the whole pinned mirror into the staging buffer."""
        cuda.copy_htod_async(prog.device.ptr, prog.host.array, self._stream)

    def _check_batch(self, batch: int) -> None:
        if not self.min_batch <= batch <= self.max_batch:
            raise ValueError(
                f"batch {batch} is outside this TensorRT engine's profiles {self.min_batch}..{self.max_batch}; "
                f"rebuild it with `cmrt build ... --backend tensorrt --max-batch {batch}`"
            )

    def _ready(self) -> None:
        """Under the lock: refuse a closed backend, and make its GPU this thread's current device."""
        if self._closed:
            raise RuntimeError("this TensorRT backend was closed")
        cuda.set_device(self.device_index)  # this thread's current device may be another GPU

    @property
    def graph_batches(self) -> list[int]:
        """Batch sizes with at least one captured CUDA graph."""
        return sorted({b for (b, _, _), p in self._programs.items() if p.graph is not None})

    @property
    def graph_keys(self) -> list[tuple[int, int, bool]]:
        """(batch, steps, renoises) of every captured graph."""
        return sorted(k for k, p in self._programs.items() if p.graph is not None)

    # --- the contract -----------------------------------------------------------------------
    def run(self, sample: np.ndarray, timestep: np.ndarray, class_labels: np.ndarray | None = None) -> np.ndarray:
        """One UNet call (the step graph under UNET_ONLY_COEFS, zero noise term): its `model_output`."""
        batch = int(np.shape(sample)[0])
        self._check_batch(batch)
        with self._lock:
            self._ready()
            prog = self._program(batch, 1, False)
            prog.layout.fill(prog.views, sample, class_labels, (timestep,), self._unet_only[None], None)
            self._upload(prog)
            self._launch(prog)
            self._download_and_wait(batch, (OUTPUT,))
            return self._host[OUTPUT].array[:batch].copy()

    def run_steps(
        self,
        sample: np.ndarray,
        timesteps: Sequence[np.ndarray],
        class_labels: np.ndarray | None,
        coefs: np.ndarray,
        renoise: np.ndarray | None,
        on_step: Callable[[int, np.ndarray], None] | None = None,
    ) -> np.ndarray:
        """Every step of a generation from x_T `sample`: x = x_next(x, timesteps[i], labels, coefs[i], renoise[i]).

        `coefs` [steps, len(STEP_COEF_ORDER)] and `renoise` [steps, B, C, H, W] (None: no renoising
        term, as for one step) come from the numpy scheduler. One upload, one graph launch, one
        download, one synchronize; with `on_step(i, x)`, one synchronize per step."""
        batch = int(np.shape(sample)[0])
        self._check_batch(batch)
        steps = len(timesteps)
        if steps < 1:
            raise ValueError("run_steps needs at least one step")
        with self._lock:
            self._ready()
            prog = self._program(batch, steps, renoise is not None)
            prog.layout.fill(prog.views, sample, class_labels, timesteps, coefs, renoise)
            self._upload(prog)
            if on_step is None:
                self._launch(prog)
                self._download_and_wait(batch, (STEP_OUTPUT,))
                return self._host[STEP_OUTPUT].array[:batch].copy()
            for i in range(steps):
                self._launch(prog, range(i, i + 1))
                self._download_and_wait(batch, (STEP_OUTPUT,))
                x = self._host[STEP_OUTPUT].array[:batch].copy()
                on_step(i, x)
            return x

    def step_outputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One step from the step graph's inputs by name (what polygraphy's Comparator feeds at build
        time): both outputs, `x_next` and `model_output`."""
        x = np.asarray(feeds[STEP_X])
        batch = int(x.shape[0])
        self._check_batch(batch)
        with self._lock:
            self._ready()
            prog = self._program(batch, 1, True)
            coefs = np.asarray(feeds[STEP_COEFS])[None]
            prog.layout.fill(prog.views, x, feeds.get(CLASS_LABELS), (feeds[TIMESTEP],), coefs, np.asarray(feeds[NOISE_TERM])[None])
            self._upload(prog)
            self._launch(prog)
            self._download_and_wait(batch, (STEP_OUTPUT, OUTPUT))
            return {n: self._host[n].array[:batch].copy() for n in (STEP_OUTPUT, OUTPUT)}

    def warmup(self, batch_sizes: Sequence[int], steps: Sequence[int] = _STEP_COUNTS_WARMED) -> None:
        """Create the context of each batch size and capture (and run once) the graphs its first
        requests would: the plain UNet call's, and, when generation runs through `run_steps`, a
        generation's of each step count in `steps` (1 and 2 by default). Then no request pays for
        a context, a warm-up enqueue, a capture or a graph's first launch at these sizes."""
        steps = sorted({int(s) for s in steps})
        if any(s < 1 for s in steps):
            raise ValueError(f"warm-up step counts must be >= 1, got {steps}")
        for b in batch_sizes:
            self._check_batch(int(b))
        with self._lock:
            self._ready()
            for b in batch_sizes:
                b = int(b)
                keys = {(b, 1, False)} | ({(b, s, s > 1) for s in steps} if self.step_graph else set())
                for key in sorted(keys):
                    prog = self._program(*key)
                    for name, view in prog.views.items():
                        view[...] = 0
                    prog.views["coefs"][...] = self._unet_only
                    self._upload(prog)
                    self._launch(prog)
                    self._download_and_wait(b, (STEP_OUTPUT,))
            self._timings.clear()

    def pop_event_timings(self) -> list[float]:
        """GPU milliseconds (CUDA events around each launch on the stream) since the last pop: one per
        generation through `run_steps`, one per `run()` call, one per step with a callback."""
        with self._lock:
            out = list(self._timings)
            self._timings.clear()
            return out

    def close(self) -> None:
        """Free graphs, contexts and buffers (also done at garbage collection).

        Takes the lock, so it waits for a call in another thread to finish with the memory."""
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
        for prog in self._programs.values():
            prog.close()
        self._programs.clear()
        self._slots.clear()
        for h in self._host.values():
            h.close()
        self._host.clear()
        for ev in self._events or ():
            ev.close()
        self._events = None
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
        tags = "+".join(p.tag for p in self.profiles)
        return f"TensorRTBackend({self.plan_path.name!r}, profiles {tags}, graphs {self.graph_keys})"

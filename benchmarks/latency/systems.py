"""The systems under comparison, each a callable `(batch, steps, seed) -> images` that also
accounts the seconds spent inside the UNet and inside the denoising loop, so the time outside
the UNet (scheduler, copies, Python) can be reported per step and per call.

The loop is marked the same way in both pipelines: it starts when the schedule is ready
(diffusers' `scheduler.set_timesteps`, cmrt's `step_plan`) and ends where the image
post-processing starts (`postprocess_image` in both). Per call adds input checks, the
initial noise and labels, and post-processing."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class UNetClock:
    seconds: float = 0.0
    calls: int = 0
    sync: object = None  # a callable that waits for the device, where there is one
    loop_seconds: float = 0.0
    _loop_start: float | None = None

    def loop_starts_after(self, fn):
        def marked(*args, **kwargs):
            out = fn(*args, **kwargs)
            self._loop_start = time.perf_counter()
            return out

        return marked

    def loop_ends_before(self, fn):
        def marked(*args, **kwargs):
            if self._loop_start is not None:
                if self.sync:
                    self.sync()
                self.loop_seconds += time.perf_counter() - self._loop_start
                self._loop_start = None
            return fn(*args, **kwargs)

        return marked

    def wrap(self, fn):
        def timed(*args, **kwargs):
            if self.sync:
                self.sync()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            if self.sync:
                self.sync()
            self.seconds += time.perf_counter() - t0
            self.calls += 1
            return out

        return timed


def fixed_labels(num_classes: int | None, batch: int) -> list[int] | None:
    return None if num_classes is None else [(7 * i + 3) % num_classes for i in range(batch)]


@dataclass
class System:
    name: str
    kind: str  # "diffusers" | "cmrt"
    clock: UNetClock = field(default_factory=UNetClock)
    error: str | None = None

    def __call__(self, batch: int, steps: int, seed: int, same_noise_as_diffusers: bool = False) -> np.ndarray:
        raise NotImplementedError

    def take_event_timings(self) -> list[float] | None:
        """CUDA-event milliseconds of each replay since the last call, where the backend times itself
        (`pop_event_timings`, see gpu_report.py); None where it does not."""
        return None


class DiffusersSystem(System):
    """diffusers' ConsistencyModelPipeline as users run it today (fp32 on CPU, fp16 on GPU)."""

    def __init__(self, model_folder: str, device: str = "cpu", compile_unet: bool = False):
        import torch
        from diffusers import ConsistencyModelPipeline

        name = "diffusers " + ("torch.compile" if compile_unet else "eager") + (" fp16" if device == "cuda" else " fp32")
        super().__init__(name=name, kind="diffusers")
        self.torch = torch
        dtype = torch.float16 if device == "cuda" else torch.float32
        self.pipe = ConsistencyModelPipeline.from_pretrained(model_folder, torch_dtype=dtype).to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.device = device
        if device == "cuda":
            self.clock.sync = torch.cuda.synchronize
        unet = self.pipe.unet
        self.num_classes = unet.config.num_class_embeds
        if compile_unet:
            # CPU: default inductor mode; GPU: the seed document's reduce-overhead (CUDA graphs).
            mode = "reduce-overhead" if device == "cuda" else "default"
            self.pipe.unet = torch.compile(unet, mode=mode, fullgraph=True)
            self.clock = UNetClock(sync=self.clock.sync)
            self.clock.seconds = float("nan")  # hooks inside a compiled graph would change what is measured
        else:
            unet.forward = self.clock.wrap(unet.forward)
        self.pipe.scheduler.set_timesteps = self.clock.loop_starts_after(self.pipe.scheduler.set_timesteps)
        self.pipe.postprocess_image = self.clock.loop_ends_before(self.pipe.postprocess_image)

    def __call__(self, batch, steps, seed, same_noise_as_diffusers=False):
        with self.torch.inference_mode():
            out = self.pipe(
                batch_size=batch,
                class_labels=fixed_labels(self.num_classes, batch),
                num_inference_steps=steps,
                generator=self.torch.manual_seed(seed),
                output_type="np",
            ).images
        if self.device == "cuda":
            self.torch.cuda.synchronize()
        return out


class CmrtSystem(System):
    def __init__(self, engine_dir: str, backend: str = "onnxruntime", device: str = "cpu", name: str | None = None,
                 **load_kwargs):
        import cmrt

        self.pipe = cmrt.load(engine_dir, backend=backend, device=device, **load_kwargs)
        b = self.pipe.backend
        super().__init__(name=name or f"cmrt {b.name} {b.device}", kind="cmrt")
        self.num_classes = self.pipe.num_classes
        b.run = self.clock.wrap(b.run)
        if self.pipe.step_graph:
            # generation goes through the step graph: the UNet and the step's arithmetic in one graph. A backend
            # with `run_step` steps through it from the host (its time is the UNet's); one without runs every step
            # on the device in one `run_steps` call (TensorRT, ONNX Runtime CUDA), whose time is then the UNet's
            # (with the step arithmetic, the one upload and the one download)
            name = "run_step" if hasattr(b, "run_step") else "run_steps"
            setattr(b, name, self.clock.wrap(getattr(b, name)))
        self.pipe.step_plan = self.clock.loop_starts_after(self.pipe.step_plan)
        self.pipe.postprocess_image = self.clock.loop_ends_before(self.pipe.postprocess_image)

    def take_event_timings(self):
        pop = getattr(self.pipe.backend, "pop_event_timings", None)
        return list(pop()) if callable(pop) else None

    def __call__(self, batch, steps, seed, same_noise_as_diffusers=False):
        # Timed runs use the production default (numpy noise); the same-output check uses
        # torch-compatible noise so the images can be compared with diffusers' one to one.
        return self.pipe(
            batch_size=batch,
            class_labels=fixed_labels(self.num_classes, batch),
            num_inference_steps=steps,
            seed=seed,
            rng="torch" if same_noise_as_diffusers else "numpy",
            output_type="np",
        ).images

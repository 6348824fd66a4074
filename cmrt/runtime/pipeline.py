"""`Pipeline`: diffusers' ConsistencyModelPipeline.__call__ on an engine folder, in numpy.

The call is in diffusers' numbered steps (check inputs, prepare latents and labels, set
timesteps, loop, postprocess). Randomness is drawn in diffusers' order — latents, then
labels, then one noise tensor per step when there is more than one step — so that a
caller who supplies `latents` and `noise` gets diffusers' images to within float rounding.
"""
from __future__ import annotations

import logging
import numbers
from typing import Any, Callable, Sequence

import numpy as np

from ..engine.manifest import Manifest
from . import scheduler as cm
from .editing import EditingMixin
from .noise import check_standard_normal, make_noise_source
from .postprocess import OUTPUT_TYPES, PipelineOutput, postprocess
from .sampling import multistep

logger = logging.getLogger(__name__)

__all__ = ["Pipeline", "PipelineOutput"]


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    return int(value)


def check_warmup(batch_sizes: Any, min_batch: int, max_batch: int) -> list[int]:
    """`warmup` as distinct batch sizes within the engine's range min_batch..max_batch, in the given order."""
    if isinstance(batch_sizes, (str, bytes, numbers.Number)) or not hasattr(batch_sizes, "__iter__"):
        raise TypeError(f"warmup must be a list of batch sizes such as [1, 4], got {batch_sizes!r}")
    sizes: list[int] = []
    for b in batch_sizes:
        b = _check_int("each warmup batch size", b)
        if not min_batch <= b <= max_batch:
            raise ValueError(
                f"warmup batch size {b} is outside this engine's range {min_batch}..{max_batch}; "
                f"warm up sizes the engine serves, or rebuild with `cmrt build ... --max-batch {b}`"
            )
        if b not in sizes:
            sizes.append(b)
    return sizes


def _step_callback(callback: Callable, callback_steps: int, schedule: cm.Schedule) -> Callable[[int, np.ndarray], None]:
    """diffusers' `callback(step, timestep, sample)` every `callback_steps` steps, as the loops' `on_step`."""

    def on_step(i: int, x: np.ndarray) -> None:
        if i % callback_steps == 0:
            callback(i, float(schedule.timesteps[i]), x.copy())  # a copy: the loop reuses its buffers

    return on_step


class Pipeline(EditingMixin):
    """Generation on one engine folder through one backend. Create with `cmrt.load`."""

    def __init__(self, manifest: Manifest, backend: Any):
        self.manifest = manifest
        self.backend = backend
        self.scheduler_config = cm.SchedulerConfig.from_dict(manifest.scheduler_config)
        self.sample_shape = (manifest.in_channels, manifest.sample_size, manifest.sample_size)  # [C, S, S]
        self._plans: dict[bytes, tuple[cm.StepConstants, ...]] = {}
        self._step_arrays: dict[tuple[int, int], tuple[tuple[cm.StepConstants, ...], cm.StepArrays]] = {}
        self._schedules: dict[tuple, cm.Schedule] = {}

    def __repr__(self) -> str:
        return (
            f"Pipeline({self.manifest.source.get('model')!r}, folder={str(self.manifest.folder)!r}, "
            f"backend={self.backend.name}/{self.backend.device}, batch {self.min_batch}..{self.max_batch})"
        )

    # --- facts --------------------------------------------------------------------------
    @property
    def step_graph(self) -> bool:
        """Whether generation runs through the backend's step graph (`run_steps`) instead of the numpy loop."""
        return bool(getattr(self.backend, "step_graph", False))

    @property
    def sample_size(self) -> int:
        return self.manifest.sample_size

    @property
    def num_classes(self) -> int | None:
        return self.manifest.num_class_embeds

    @property
    def min_batch(self) -> int:
        return self.manifest.min_batch

    @property
    def max_batch(self) -> int:
        return self.manifest.max_batch

    # --- step 1: inputs -------------------------------------------------------------------
    def check_batch_size(self, batch_size: Any) -> int:
        b = _check_int("batch_size", batch_size)
        if b < 1:
            raise ValueError(f"batch_size must be >= 1, got {b}")
        if b < self.min_batch:
            raise ValueError(
                f"batch_size {b} is below this engine's range {self.min_batch}..{self.max_batch}; "
                f"rebuild with `cmrt build ... --min-batch {b}`"
            )
        if b > self.max_batch:
            raise ValueError(
                f"batch_size {b} is outside this engine's range {self.min_batch}..{self.max_batch}; "
                f"split the request or rebuild with `cmrt build ... --max-batch {b}`"
            )
        return b

    def warmup(self, batch_sizes: Sequence[int]) -> list[int]:
        """Pay now what the first request at each of `batch_sizes` would pay (ONNX Runtime's first-run
        allocations; contexts and graph capture on GPUs): the backend's `warmup(batch_sizes)` where it
        has one, else one UNet call with zeros per batch size. Returns the sizes warmed up."""
        sizes = check_warmup(batch_sizes, self.min_batch, self.max_batch)
        if not sizes:
            return sizes
        hook = getattr(self.backend, "warmup", None)
        if callable(hook):
            hook(sizes)
        else:
            for b in sizes:
                zeros = np.zeros((b, *self.sample_shape), dtype=np.float32)
                labels = np.zeros(b, dtype=np.int64) if self.num_classes is not None else None
                self.backend.run(zeros, np.zeros(b, dtype=np.float32), labels)
        logger.info("warmed up batch sizes %s on %s/%s", sizes, self.backend.name, self.backend.device)
        return sizes

    def schedule(self, num_inference_steps: int | None, timesteps: Sequence[int] | None) -> cm.Schedule:
        if timesteps is None and num_inference_steps is None:
            num_inference_steps = 1
        try:  # plain ints (the usual call) are remembered; anything else is validated afresh
            key = (num_inference_steps, None if timesteps is None else tuple(timesteps))
            if not all(type(v) is int for v in (key[1] or ())) or type(num_inference_steps) not in (int, type(None)):
                key = None
        except TypeError:
            key = None
        cached = self._schedules.get(key) if key is not None else None
        if cached is not None:
            return cached
        schedule = cm.make_schedule(self.scheduler_config, num_inference_steps=num_inference_steps, timesteps=timesteps)
        if key is not None and len(self._schedules) < 256:
            self._schedules[key] = schedule
        return schedule

    def step_plan(self, schedule: cm.Schedule) -> tuple[cm.StepConstants, ...]:
        """Per-step float32 constants, computed once per distinct schedule and reused."""
        key = schedule.indices.tobytes()
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = cm.step_constants(schedule, self.scheduler_config)
        return plan

    def step_arrays(self, plan: tuple[cm.StepConstants, ...], batch_size: int) -> cm.StepArrays:
        """Timestep inputs and noise coefficients for (plan, batch size), built once: the loop then
        allocates nothing but its two buffers."""
        key = (id(plan), batch_size)
        entry = self._step_arrays.get(key)  # the entry holds its plan, so that id cannot be reused
        if entry is not None and entry[0] is plan:
            return entry[1]
        arrays = cm.step_arrays(plan, batch_size, clip=self.scheduler_config.clip_denoised)
        if len(self._step_arrays) < 1024:
            self._step_arrays[key] = (plan, arrays)
        return arrays

    def check_latents(self, latents: Any, batch_size: int) -> np.ndarray:
        if not isinstance(latents, np.ndarray):
            raise TypeError(f"latents must be a numpy array of shape {(batch_size, *self.sample_shape)}, got {type(latents).__name__}")
        expected = (batch_size, *self.sample_shape)
        if latents.shape != expected:
            raise ValueError(f"latents has shape {latents.shape}, expected {expected} (batch_size, channels, size, size)")
        check_standard_normal("latents", latents)  # before the cast, which would turn 1e300 into inf
        return latents.astype(np.float32, copy=False)

    def check_noise(
        self, noise: Any, count: int, batch_size: int, per: str = "step", why: str = "the schedule has {n} steps"
    ) -> list[np.ndarray] | None:
        """`noise` as `count` float32 arrays of the sample's shape, or None; `per`/`why` word the errors."""
        if noise is None:
            return None
        if isinstance(noise, np.ndarray) or not isinstance(noise, (list, tuple)):
            raise TypeError(f"noise must be a list with one standard-normal numpy array per {per}")
        if len(noise) != count:
            raise ValueError(f"noise has {len(noise)} arrays but {why.format(n=count)}")
        expected = (batch_size, *self.sample_shape)
        out = []
        for i, z in enumerate(noise):
            if not isinstance(z, np.ndarray) or z.shape != expected:
                got = z.shape if isinstance(z, np.ndarray) else type(z).__name__
                raise ValueError(f"noise[{i}] must be a numpy array of shape {expected}, got {got}")
            check_standard_normal(f"noise[{i}]", z)
            out.append(z.astype(np.float32, copy=False))
        return out

    def check_class_labels(self, class_labels: Any, batch_size: int) -> np.ndarray | None:
        """Validated int64 labels, None for unconditional models or when labels are to be drawn."""
        n = self.num_classes
        if n is None:
            if class_labels is not None:
                raise ValueError("class_labels were given but this model is unconditional (no class embedding)")
            return None
        if class_labels is None:
            return None
        if isinstance(class_labels, bool):
            raise TypeError("class_labels must be an int or a list of ints, got a bool")
        if isinstance(class_labels, numbers.Integral):
            if batch_size != 1:
                raise ValueError(f"an int class_labels needs batch_size 1 (got {batch_size}); pass a list of {batch_size} labels")
            labels = np.array([int(class_labels)], dtype=np.int64)
        else:
            arr = np.asarray(class_labels)
            if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
                raise TypeError(f"class_labels must be an int or a 1-D list of ints, got {class_labels!r}")
            labels = arr.astype(np.int64)
        if labels.shape[0] != batch_size:
            raise ValueError(f"class_labels has {labels.shape[0]} labels for batch_size {batch_size}")
        if labels.min() < 0 or labels.max() >= n:
            bad = labels[(labels < 0) | (labels >= n)]
            raise ValueError(f"class_labels {bad.tolist()} are out of range: this model has classes 0..{n - 1}")
        return labels

    def renoising_terms(self, arrays: cm.StepArrays, shape, noise, source) -> np.ndarray:
        """[steps, *shape]: each step's (z * s_noise) * coef, z from `noise` or drawn from `source` in order."""
        terms = np.empty((len(arrays.timesteps), *shape), dtype=np.float32)
        if noise is not None:
            for i, z in enumerate(noise):
                np.copyto(terms[i], z)  # the caller's arrays are never written
        else:
            source.normals_into(terms)  # one draw per step, in order
        return cm.scale_noise(terms, arrays.noise_coefs, self.scheduler_config)

    # --- step 5: output ----------------------------------------------------------------------
    def postprocess_image(self, sample: np.ndarray, output_type: str, scratch: bool = False):
        """Model space [-1, 1] to images; a method (as in diffusers) so a profiler can mark where the loop ends.
        `scratch`: `sample` may be overwritten (the pipeline's own buffer)."""
        return postprocess(sample, output_type, scratch=scratch)

    # --- the call ---------------------------------------------------------------------------
    def __call__(
        self,
        batch_size: int = 1,
        class_labels: int | Sequence[int] | np.ndarray | None = None,
        num_inference_steps: int | None = None,
        timesteps: Sequence[int] | None = None,
        seed: int | Sequence[int] | None = None,
        generator: Any = None,
        latents: np.ndarray | None = None,
        noise: Sequence[np.ndarray] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: Callable[[int, float, np.ndarray], None] | None = None,
        callback_steps: int = 1,
        rng: str = "numpy",
    ):
        """Generate images, like `ConsistencyModelPipeline.__call__`.

        `num_inference_steps` defaults to 1 when `timesteps` is not given; giving both is an
        error. `latents` are standard-normal [B, C, S, S] (multiplied by sigma_max inside);
        `noise` replaces the per-step noise draws (one array per step; unused for 1 step).
        `rng="torch"` draws exactly what diffusers draws from `torch.manual_seed(seed)` (or from
        a CPU `torch.Generator` passed as `generator`, which is advanced as diffusers would).
        A list of seeds (or generators), one per sample, makes sample i what a batch-1 call
        with seed i makes.
        """
        # 1. Check inputs
        batch_size = self.check_batch_size(batch_size)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r} ('pt' needs torch: use 'np')")
        callback_steps = _check_int("callback_steps", callback_steps)
        if callback_steps < 1:
            raise ValueError(f"callback_steps must be >= 1, got {callback_steps}")
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable as callback(step, timestep, sample)")
        schedule = self.schedule(num_inference_steps, timesteps)
        labels = self.check_class_labels(class_labels, batch_size)
        noise = self.check_noise(noise, schedule.num_steps, batch_size)
        if latents is not None:
            latents = self.check_latents(latents, batch_size)
        source = make_noise_source(seed, generator, rng, batch_size)
        cfg = self.scheduler_config

        # 2. Prepare latents (x_T = sigma_max * z)
        if latents is None:
            latents = source.normal((batch_size, *self.sample_shape))
        sample = latents * np.float32(cfg.init_noise_sigma)

        # 3. Prepare class labels (drawn after the latents, as in diffusers)
        if self.num_classes is not None and labels is None:
            labels = source.labels(self.num_classes, batch_size)

        # 4. Denoising loop (sampling.multistep). Work that does not need the UNet's output is
        # done before each call (see scheduler.before_unet for why); every step's renoising term
        # is drawn now, in the order diffusers draws (after latents and labels, one per step).
        plan = self.step_plan(schedule)
        arrays = self.step_arrays(plan, batch_size)
        last = len(plan) - 1
        terms = self.renoising_terms(arrays, sample.shape, noise, source) if last else None
        # One step, nobody watching: postprocessing's clip of x / 2 + 0.5 to [0, 1] gives the same
        # bits as clipping x to [-1, 1] first, so that clip is skipped. (With more steps the last
        # one adds noise after its clip, which must stay.)
        clip = cfg.clip_denoised
        on_step = None if callback is None else _step_callback(callback, callback_steps, schedule)
        if self.step_graph:
            # every step in the backend's step graph; its last step clips even where the numpy loop
            # skips it (one step, no callback): postprocessing makes the same bits of either
            sample = self.backend.run_steps(sample, arrays.timesteps, labels, arrays.coefs, terms, on_step)
        else:
            sample = multistep(self.backend.run, sample, labels, plan, arrays, terms, clip,
                               clip and (last > 0 or callback is not None), on_step)

        source.finish()

        # 5. Postprocess
        images = self.postprocess_image(sample, output_type, scratch=True)
        if not return_dict:
            return (images,)
        return PipelineOutput(images=images)

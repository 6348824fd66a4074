"""The sampling loops, as small functions over a schedule (the k-diffusion style): the model is
a callable, randomness comes in as arrays or callables, and the per-step math is the
scheduler module's.

- `multistep`: diffusers' `ConsistencyModelPipeline` loop (the paper's Algorithm 1), what
  `Pipeline.__call__` runs; its per-step work is split around the UNet call so that little
  host work follows it (see scheduler.before_unet / after_unet).
- `through_step_graph`: the same loop where a backend runs each whole step in one graph (the
  step graph, cmrt/build/step_graph.py: the same float32 operations in the same order), what
  a backend's `run_steps` runs when it has no faster way to run every step.
- `consistency_fn` and `run_editing`: one evaluation of the consistency function, and the
  zero-shot editing loop (the paper's Algorithm 4), what the editing methods run.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from . import scheduler as cm


def multistep(
    unet: Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray],
    sample: np.ndarray,
    labels: np.ndarray | None,
    plan: Sequence[cm.StepConstants],
    arrays: cm.StepArrays,
    renoise: np.ndarray | None,
    clip: bool,
    clip_last: bool,
    on_step: Callable[[int, np.ndarray], None] | None = None,
) -> np.ndarray:
    """Run every step of `plan` from `sample` (x_T, overwritten: the caller's own buffer).

    Per step: x0 = clip(c_skip x + c_out unet(x / divisor, t, labels)), then + renoise[i]
    (the scaled noise of step i; None for one step). `clip_last` is the clip decision of
    the last step (a caller may know a later clip subsumes it). `on_step(i, x)` sees each
    step's result in the loop's own buffer. Allocates two buffers, whatever the step count.
    """
    scaled = np.empty_like(sample)
    spare = np.empty_like(sample)  # each step's output; then the buffer the skip term was in
    ts = arrays.timesteps
    last = len(plan) - 1
    for i, k in enumerate(plan):
        skip = cm.before_unet(sample, k, scaled)
        model_output = unet(scaled, ts[i], labels)
        denoised = cm.after_unet(model_output, skip, k, spare, None if renoise is None else renoise[i],
                                 clip if i < last else clip_last)
        spare, sample = skip, denoised
        if on_step is not None:
            on_step(i, sample)
    return sample


def through_step_graph(
    step: Callable[..., np.ndarray],
    sample: np.ndarray,
    timesteps: Sequence[np.ndarray],
    labels: np.ndarray | None,
    coefs: np.ndarray,
    renoise: np.ndarray | None,
    on_step: Callable[[int, np.ndarray], None] | None = None,
) -> np.ndarray:
    """`multistep` through a step graph: x = step(x, timesteps[i], labels, coefs[i], renoise[i]) per step.

    `step` runs one whole consistency step (x_next = clip(c_skip x + c_out F) + noise term);
    `coefs[i]` are step i's constants (`StepArrays.coefs`), `renoise` the scaled noise terms
    [steps, B, C, H, W], None for one step (no term: the backend adds nothing).
    """
    x = sample
    for i in range(len(timesteps)):
        x = step(x, timesteps[i], labels, coefs[i], None if renoise is None else renoise[i])
        if on_step is not None:
            on_step(i, x)
    return x


def consistency_fn(
    backend: Any, x: np.ndarray, sigma: np.float32, timestep: float, labels: np.ndarray | None, cfg: cm.SchedulerConfig
) -> np.ndarray:
    """x0 = clamp(f(x, sigma), -1, 1) with one UNet call: c_skip x + c_out F(c_in x, t(sigma)), in float32."""
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        raise ValueError(f"x must be a numpy array [B, C, H, W], got {getattr(x, 'shape', type(x).__name__)}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    t = np.full((x.shape[0],), timestep, dtype=np.float32)
    out = backend.run(np.ascontiguousarray(cm.scale_model_input(x, sigma, cfg)), t, labels)
    x0 = cm.denoise(np.asarray(out, dtype=np.float32), x, sigma, cfg)
    if not cfg.clip_denoised:  # the editing algorithms always clamp (Algorithm 4, openai's code)
        np.clip(x0, -1.0, 1.0, out=x0)
    return x0


def run_editing(
    denoiser: Callable[[np.ndarray, int], np.ndarray],
    schedule: cm.Schedule,
    cfg: cm.SchedulerConfig,
    start: np.ndarray,
    latents: np.ndarray,
    step_noise: Callable[[int], np.ndarray],
    keep: Any,
    y_kept: np.ndarray,
) -> np.ndarray:
    """Algorithm 4 over `schedule`: x = start + sigma_1 z, then per step x0 = keep(denoiser(x, i)) and re-noise.

    `keep` says what of the reference is kept (editing.Keep and its subclasses: `replace`, `finalize`).

    `denoiser(x, i)` is clamp(f(x, sigma_i)); `step_noise(i)` gives the standard normal that
    re-noises after step i (called for i = 0 .. n-2, in order). Returns float32 [B, C, H, W].
    """
    if start.shape != latents.shape or start.shape != y_kept.shape:
        raise ValueError(f"start {start.shape}, latents {latents.shape} and y_kept {y_kept.shape} must have one shape")
    sigmas = schedule.sigmas
    n = schedule.num_steps
    x = (start + np.float32(sigmas[0]) * latents).astype(np.float32)
    x0 = x
    for i in range(n):
        x0 = keep.replace(y_kept, denoiser(x, i))
        if i + 1 < n:
            z = step_noise(i)
            x = (x0 + z * cm.noise_scale(sigmas[i + 1], cfg)).astype(np.float32)
    return keep.finalize(y_kept, x0)



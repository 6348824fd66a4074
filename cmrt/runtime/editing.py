"""Zero-shot editing with a consistency model (Song et al. 2023, section 5 and Algorithm 4).

The same network that generates also inpaints, colorizes, super-resolves, interpolates and
follows strokes, with one or a few evaluations and no training. Algorithm 4: with a linear
map A (orthogonal here) and a set of kept coefficients K,

    y_K = A^-1[(A y) * K]                            (the part of the reference that is kept)
    x   = y_K + sigma_1 z                            (z standard normal)
    for i = 1..n:
        x0 = clamp(f(x, sigma_i), -1, 1)             (one UNet call)
        x0 = A^-1[(A y_K) * K + (A x0) * (1 - K)]    (put the kept part back)
        x  = x0 + z_i sqrt(sigma_{i+1}^2 - sigma_min^2)   (not after the last step)

- inpainting: A = identity, K = the known pixels (mask False);
- colorization: A = an orthogonal 3x3 whose first row is the unit luma vector, K = that row;
- super-resolution: per p x p patch, A = an orthogonal p^2 x p^2 whose first row is
  constant, K = that row: the patch means are kept (computed directly as means here);
- stroke-guided editing (SDEdit-like): A = identity, nothing kept (optionally a mask),
  starting from the stroke image itself at a middle sigma (5.38 then 2.24 in the paper);
- interpolation: slerp between two initial noises, then generation (one step f(z, sigma_max)).

cmrt adds one step the paper does not need: the final image of colorization and
super-resolution is shrunk toward its kept part (toward the gray of the same luma, toward the
patch mean) just enough to fit in [-1, 1], so the kept quantity survives the conversion to an
image instead of being clipped away. Inpainting needs nothing (its pixels are already in range).

Everything is float32 on the scheduler module's math, like generation; torch is never imported.
"""
from __future__ import annotations

import logging
import numbers
from typing import Any, Sequence

import numpy as np

from . import scheduler as cm
from .images import broadcast_batch, load_images, load_masks, to_model_space
from .noise import check_standard_normal, make_noise_source
from .postprocess import OUTPUT_TYPES, PipelineOutput, postprocess
from .sampling import consistency_fn, run_editing

logger = logging.getLogger(__name__)

LUMA = (0.2989, 0.5870, 0.1140)
STROKE_SIGMAS = (5.38, 2.24)  # the paper's stroke-guided editing: grid points 16 and 20 of the N = 40 grid
DEFAULT_EDIT_STEPS = 5  # inpaint / colorize / super_resolve: 80, 23.6, 5.38, 0.82, 0.063 for N = 40
DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


# --- schedules ------------------------------------------------------------------------------
def _check_sigmas(sigmas: Any, cfg: cm.SchedulerConfig) -> np.ndarray:
    if isinstance(sigmas, (str, bytes)) or not hasattr(sigmas, "__len__"):
        raise TypeError(f"sigmas must be a list of noise levels, e.g. [5.38, 2.24], got {type(sigmas).__name__}")
    values = list(np.asarray(sigmas).reshape(-1)) if isinstance(sigmas, np.ndarray) else list(sigmas)
    if not values:
        raise ValueError("sigmas is empty; pass at least one noise level, e.g. sigmas=[5.38, 2.24]")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (numbers.Real, np.number)):
            raise TypeError(f"sigmas must be numbers, got {v!r} ({type(v).__name__})")
    arr = np.array(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"sigmas must be finite, got {values}")
    if np.any(np.diff(arr) >= 0):
        raise ValueError(f"sigmas must be in strictly descending order, got {values}")
    if arr[0] > cfg.sigma_max or arr[-1] < cfg.sigma_min:
        raise ValueError(f"sigmas must lie in [sigma_min, sigma_max] = [{cfg.sigma_min}, {cfg.sigma_max}], got {values}")
    return arr


def nearest_grid_positions(cfg: cm.SchedulerConfig, sigmas: Sequence[float]) -> list[int]:
    """Positions k on the N-point Karras training grid (k = 0 is sigma_max) nearest to each sigma, in log space."""
    arr = _check_sigmas(sigmas, cfg)
    n = cfg.num_train_timesteps
    grid = cm.karras_sigmas(np.arange(n) / (n - 1), cfg)
    pos = [int(np.argmin(np.abs(np.log(grid) - np.log(s)))) for s in arr]
    return list(dict.fromkeys(pos))  # small grids can map two sigmas to one point


def timesteps_for_sigmas(cfg: cm.SchedulerConfig, sigmas: Sequence[float]) -> list[int]:
    """diffusers-style `timesteps` whose schedule steps through the grid points nearest to `sigmas`.

    diffusers reads timesteps backwards (sigma_i = karras(timesteps[::-1][i] / (N - 1))), so grid
    positions [16, 20] (sigmas 5.38, 2.24 for N = 40) are `timesteps=[20, 16]`.
    """
    return sorted(nearest_grid_positions(cfg, sigmas), reverse=True)


def schedule_from_sigmas(cfg: cm.SchedulerConfig, sigmas: Sequence[float]) -> cm.Schedule:
    """A schedule through arbitrary noise levels (float64 for the UNet timestep, float32 to step with)."""
    sigmas64 = _check_sigmas(sigmas, cfg)
    n = cfg.num_train_timesteps
    grid = cm.karras_sigmas(np.arange(n) / (n - 1), cfg)
    pos = np.array([int(np.argmin(np.abs(np.log(grid) - np.log(s)))) for s in sigmas64], dtype=np.int64)
    return cm.Schedule(
        indices=pos[::-1].copy(),  # informational: the nearest grid points, in diffusers' order
        timesteps=cm.sigma_to_t(sigmas64),
        sigmas=np.concatenate([sigmas64, [cfg.sigma_min]]).astype(np.float32),
    )


def editing_schedule(
    cfg: cm.SchedulerConfig,
    num_inference_steps: int | None = None,
    timesteps: Sequence[int] | None = None,
    sigmas: Sequence[float] | None = None,
    default: dict[str, Any] | None = None,
) -> cm.Schedule:
    """At most one of the three; none given -> `default` (a dict with one of the same keys)."""
    given = {k: v for k, v in (("num_inference_steps", num_inference_steps), ("timesteps", timesteps), ("sigmas", sigmas)) if v is not None}
    if len(given) > 1:
        raise ValueError(f"pass at most one of num_inference_steps, timesteps or sigmas; got {sorted(given)}")
    if not given:
        if not default or len(default) != 1:
            raise ValueError("no schedule given and no default: pass num_inference_steps, timesteps or sigmas")
        given = dict(default)
    if "sigmas" in given:
        return schedule_from_sigmas(cfg, given["sigmas"])
    return cm.make_schedule(cfg, num_inference_steps=given.get("num_inference_steps"), timesteps=given.get("timesteps"))


# --- what is kept -------------------------------------------------------------------------------
def _fit_toward(anchor: np.ndarray, x: np.ndarray, axes: tuple[int, ...] | None) -> np.ndarray:
    """anchor + s (x - anchor) with the largest s in [0, 1] that keeps every value in [-1, 1].

    `axes`: the axes over which one s is shared (None: one s per value). Whatever is linear
    in x and equal for x and anchor (a luma, a patch mean) is unchanged.
    """
    d = (x - anchor).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(d > 0, (np.float32(1) - anchor) / d, np.where(d < 0, (np.float32(-1) - anchor) / d, np.inf))
    room = np.maximum(room, np.float32(0))
    s = room if axes is None else room.min(axis=axes, keepdims=True)
    s = np.minimum(s, np.float32(1)).astype(np.float32)
    return (anchor + s * d).astype(np.float32)


class Keep:
    """Identity A, nothing kept (stroke-guided editing without a mask)."""

    def kept(self, y: np.ndarray) -> np.ndarray:
        return y

    def replace(self, y_kept: np.ndarray, x0: np.ndarray) -> np.ndarray:
        return x0

    def finalize(self, y_kept: np.ndarray, x: np.ndarray) -> np.ndarray:
        return x


class KeepPixels(Keep):
    """Inpainting: A = identity; pixels where `generate` is False are the reference's."""

    def __init__(self, generate: np.ndarray):
        if not isinstance(generate, np.ndarray) or generate.dtype != np.bool_ or generate.ndim != 3:
            raise ValueError("generate must be a boolean array [B, H, W] (True = generate)")
        self.generate = generate[:, None, :, :]

    def kept(self, y: np.ndarray) -> np.ndarray:
        return np.where(self.generate, np.float32(0), y).astype(np.float32)

    def replace(self, y_kept: np.ndarray, x0: np.ndarray) -> np.ndarray:
        return np.where(self.generate, x0, y_kept).astype(np.float32)


def luma_basis() -> np.ndarray:
    """Orthogonal 3x3 (float64) whose first column is the unit luma vector, with a positive sum."""
    v = np.asarray(LUMA, dtype=np.float64)
    m = np.eye(3)
    m[:, 0] = v / np.linalg.norm(v)
    q = np.linalg.qr(m)[0]
    return -q if q[:, 0].sum() < 0 else q


class KeepLuma(Keep):
    """Colorization: keep the first coefficient in the luma basis (the luminance)."""

    def __init__(self) -> None:
        self.q = luma_basis().astype(np.float32)
        self.w = np.asarray(LUMA, dtype=np.float32)

    def _mix(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ca = np.einsum("bchw,cd->bdhw", a, self.q)
        cb = np.einsum("bchw,cd->bdhw", b, self.q)
        cb[:, 0] = ca[:, 0]
        return np.einsum("bdhw,cd->bchw", cb, self.q).astype(np.float32)

    def kept(self, y: np.ndarray) -> np.ndarray:
        return self._mix(y, np.zeros_like(y))

    def replace(self, y_kept: np.ndarray, x0: np.ndarray) -> np.ndarray:
        return self._mix(y_kept, x0)

    def gray(self, y: np.ndarray) -> np.ndarray:
        """The gray [g, g, g] with the luma of y: the in-range anchor of the final fit."""
        lum = np.einsum("bchw,c->bhw", y, self.w)
        g = np.clip(lum / self.w.sum(dtype=np.float32), -1.0, 1.0).astype(np.float32)
        return np.repeat(g[:, None], 3, axis=1)

    def finalize(self, y_kept: np.ndarray, x: np.ndarray) -> np.ndarray:
        return _fit_toward(self.gray(y_kept), x, axes=(1,))


def patch_means(x: np.ndarray, p: int) -> np.ndarray:
    """[B, C, H, W] -> [B, C, H/p, W/p] means of p x p patches."""
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        raise ValueError(f"x must be a numpy array [B, C, H, W], got {getattr(x, 'shape', type(x).__name__)}")
    if isinstance(p, bool) or not isinstance(p, numbers.Integral) or p < 1:
        raise ValueError(f"p must be a positive integer, got {p!r}")
    b, c, h, w = x.shape
    if h % p or w % p:
        raise ValueError(f"patch size {p} does not divide the image size {h}x{w}")
    return x.reshape(b, c, h // p, p, w // p, p).mean(axis=(3, 5), dtype=np.float32)


def upsample(x: np.ndarray, p: int) -> np.ndarray:
    """[B, C, h, w] -> [B, C, h p, w p], each pixel repeated p x p times."""
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        raise ValueError(f"x must be a numpy array [B, C, h, w], got {getattr(x, 'shape', type(x).__name__)}")
    if isinstance(p, bool) or not isinstance(p, numbers.Integral) or p < 1:
        raise ValueError(f"p must be a positive integer, got {p!r}")
    return np.repeat(np.repeat(x, p, axis=2), p, axis=3).astype(np.float32)


class KeepPatchMeans(Keep):
    """Super-resolution: keep each p x p patch's mean (the constant coefficient of an orthogonal patch basis)."""

    def __init__(self, patch_size: int):
        if isinstance(patch_size, bool) or not isinstance(patch_size, numbers.Integral) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}")
        self.p = int(patch_size)

    def kept(self, y: np.ndarray) -> np.ndarray:
        return upsample(patch_means(y, self.p), self.p)

    def replace(self, y_kept: np.ndarray, x0: np.ndarray) -> np.ndarray:
        return (x0 - upsample(patch_means(x0, self.p), self.p) + y_kept).astype(np.float32)

    def finalize(self, y_kept: np.ndarray, x: np.ndarray) -> np.ndarray:
        b, c, h, w = x.shape
        p = self.p
        blocks = lambda a: a.reshape(b, c, h // p, p, w // p, p)  # noqa: E731
        return _fit_toward(blocks(y_kept), blocks(x), axes=(3, 5)).reshape(b, c, h, w)


# --- interpolation -----------------------------------------------------------------------------
def slerp(z1: np.ndarray, z2: np.ndarray, alphas: Sequence[float]) -> np.ndarray:
    """Spherical interpolation of two noise tensors (same shape) -> float32 [len(alphas), *shape].

    alpha 0 gives z1 and alpha 1 gives z2 exactly; (anti)parallel inputs fall back to linear.
    """
    if not isinstance(z1, np.ndarray) or not isinstance(z2, np.ndarray) or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must be numpy arrays of one shape, got {getattr(z1, 'shape', z1)} and {getattr(z2, 'shape', z2)}")
    a = check_alphas(alphas)
    v1 = z1.astype(np.float64).reshape(-1)
    v2 = z2.astype(np.float64).reshape(-1)
    norm = np.linalg.norm(v1) * np.linalg.norm(v2)
    cos = float(np.clip(v1 @ v2 / norm, -1.0, 1.0)) if norm > 0 else 1.0
    psi = float(np.arccos(cos))
    out = []
    for alpha in a:
        if np.sin(psi) < 1e-6:
            w1, w2 = 1.0 - alpha, alpha
        else:
            w1, w2 = np.sin((1.0 - alpha) * psi) / np.sin(psi), np.sin(alpha * psi) / np.sin(psi)
        out.append((w1 * v1 + w2 * v2).reshape(z1.shape))
    return np.stack(out).astype(np.float32)


def check_alphas(alphas: Any) -> list[float]:
    if isinstance(alphas, (str, bytes)) or not hasattr(alphas, "__len__"):
        raise TypeError(f"alphas must be a list of numbers in [0, 1], got {type(alphas).__name__}")
    values = list(np.asarray(alphas).reshape(-1)) if isinstance(alphas, np.ndarray) else list(alphas)
    if not values:
        raise ValueError("alphas is empty; pass e.g. alphas=[0, 0.5, 1]")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (numbers.Real, np.number)):
            raise TypeError(f"alphas must be numbers in [0, 1], got {v!r} ({type(v).__name__})")
    out = [float(v) for v in values]
    bad = [v for v in out if not (0.0 <= v <= 1.0)]
    if bad:
        raise ValueError(f"alphas must be in [0, 1], got {bad}")
    return out


# --- the pipeline methods --------------------------------------------------------------------
def _check_output(output_type: Any, return_dict: Any) -> None:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r} ('pt' needs torch: use 'np')")
    if not isinstance(return_dict, (bool, np.bool_)):
        raise TypeError(f"return_dict must be True or False, got {return_dict!r}")


def check_patch_size(patch_size: Any, size: int) -> int:
    if isinstance(patch_size, bool) or not isinstance(patch_size, numbers.Integral):
        raise TypeError(f"patch_size must be an integer, got {patch_size!r}")
    p = int(patch_size)
    if p < 1 or size % p:
        raise ValueError(f"patch_size must be a positive divisor of the model's image size {size}, got {p}")
    return p


class EditingMixin:
    """Zero-shot editing on `Pipeline`: inpaint, colorize, super_resolve, interpolate, edit.

    Every method takes the schedule like generation (`timesteps` or `num_inference_steps`,
    also `sigmas` for the Algorithm-4 methods), `seed`/`generator`/`rng`, `class_labels`
    (drawn from the seed when omitted), and returns `PipelineOutput` like `__call__`.
    Draws are made in this order: the initial noise [B, C, S, S], then the labels when they
    are drawn, then one noise per step after the first. `latents`/`noise` replace the draws.
    """

    # -- helpers -------------------------------------------------------------------------------
    def _editing_batch(self, batch_size: Any, arrays: dict[str, np.ndarray]) -> tuple[int, dict[str, np.ndarray]]:
        if batch_size is not None:
            batch_size = self.check_batch_size(batch_size)
        b, out = broadcast_batch(arrays, batch_size)
        return self.check_batch_size(b), out

    def _run_algorithm4(
        self,
        *,
        batch_size: int,
        keep: Keep,
        start: np.ndarray,
        y_kept: np.ndarray,
        schedule_args: dict[str, Any],
        default_schedule: dict[str, Any],
        class_labels: Any,
        seed: Any,
        generator: Any,
        rng: str,
        latents: Any,
        noise: Any,
        output_type: str,
        return_dict: bool,
    ):
        _check_output(output_type, return_dict)
        cfg = self.scheduler_config
        schedule = editing_schedule(cfg, default=default_schedule, **schedule_args)
        labels = self.check_class_labels(class_labels, batch_size)
        if latents is not None:
            latents = self.check_latents(latents, batch_size)
        noise = self.check_noise(noise, schedule.num_steps - 1, batch_size, per="step after the first",
                                 why="this schedule re-noises {n} times (steps - 1)")
        source = make_noise_source(seed, generator, rng, batch_size)
        shape = (batch_size, *self.sample_shape)
        if latents is None:
            latents = source.normal(shape)
        if self.num_classes is not None and labels is None:
            labels = source.labels(self.num_classes, batch_size)

        def denoiser(x: np.ndarray, i: int) -> np.ndarray:
            return consistency_fn(self.backend, x, schedule.sigmas[i], float(schedule.timesteps[i]), labels, cfg)

        def step_noise(i: int) -> np.ndarray:
            return noise[i] if noise is not None else source.normal(shape)

        logger.debug("editing: %d steps, sigmas %s", schedule.num_steps, schedule.sigmas[:-1].tolist())
        sample = run_editing(denoiser, schedule, cfg, start, latents, step_noise, keep, y_kept)
        source.finish()
        images = postprocess(sample, output_type)
        return (images,) if not return_dict else PipelineOutput(images=images)

    def _default_steps(self) -> dict[str, Any]:
        return {"num_inference_steps": min(DEFAULT_EDIT_STEPS, self.scheduler_config.num_train_timesteps)}

    # -- the methods -----------------------------------------------------------------------------
    def inpaint(
        self,
        image: Any,
        mask: Any,
        *,
        batch_size: int | None = None,
        class_labels: Any = None,
        num_inference_steps: int | None = None,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
        seed: Any = None,
        generator: Any = None,
        rng: str = "numpy",
        latents: np.ndarray | None = None,
        noise: Sequence[np.ndarray] | None = None,
        resize: bool = True,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Fill the pixels where `mask` is True (white); every other pixel is the input's, exactly.

        Default schedule: 5 steps on the training grid (80, 23.6, 5.38, 0.82, 0.063 for N = 40).
        """
        s = self.sample_size
        arrays = {"image": load_images(image, "image", s, resize), "mask": load_masks(mask, "mask", s, resize)}
        b, arrays = self._editing_batch(batch_size, arrays)
        keep = KeepPixels(arrays["mask"])
        y_kept = keep.kept(to_model_space(arrays["image"]))
        return self._run_algorithm4(
            batch_size=b, keep=keep, start=y_kept, y_kept=y_kept,
            schedule_args=dict(num_inference_steps=num_inference_steps, timesteps=timesteps, sigmas=sigmas),
            default_schedule=self._default_steps(), class_labels=class_labels, seed=seed, generator=generator,
            rng=rng, latents=latents, noise=noise, output_type=output_type, return_dict=return_dict,
        )

    def colorize(
        self,
        image: Any,
        *,
        batch_size: int | None = None,
        class_labels: Any = None,
        num_inference_steps: int | None = None,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
        seed: Any = None,
        generator: Any = None,
        rng: str = "numpy",
        latents: np.ndarray | None = None,
        noise: Sequence[np.ndarray] | None = None,
        resize: bool = True,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Color a grayscale (or any) image: the output's luminance 0.2989 R + 0.5870 G + 0.1140 B is the input's.

        Default schedule: 5 steps on the training grid.
        """
        s = self.sample_size
        b, arrays = self._editing_batch(batch_size, {"image": load_images(image, "image", s, resize)})
        keep = KeepLuma()
        y_kept = keep.kept(to_model_space(arrays["image"]))
        return self._run_algorithm4(
            batch_size=b, keep=keep, start=y_kept, y_kept=y_kept,
            schedule_args=dict(num_inference_steps=num_inference_steps, timesteps=timesteps, sigmas=sigmas),
            default_schedule=self._default_steps(), class_labels=class_labels, seed=seed, generator=generator,
            rng=rng, latents=latents, noise=noise, output_type=output_type, return_dict=return_dict,
        )

    def super_resolve(
        self,
        image: Any,
        patch_size: int = 8,
        *,
        batch_size: int | None = None,
        class_labels: Any = None,
        num_inference_steps: int | None = None,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
        seed: Any = None,
        generator: Any = None,
        rng: str = "numpy",
        latents: np.ndarray | None = None,
        noise: Sequence[np.ndarray] | None = None,
        resize: bool = True,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Upscale a LOW-resolution image (size S / patch_size) to the model's size S.

        Each patch_size x patch_size patch of the output has the mean of its low-resolution pixel.
        Default schedule: 5 steps on the training grid.
        """
        s = self.sample_size
        p = check_patch_size(patch_size, s)
        b, arrays = self._editing_batch(batch_size, {"image": load_images(image, "image", s // p, resize)})
        keep = KeepPatchMeans(p)
        y_kept = upsample(to_model_space(arrays["image"]), p)
        return self._run_algorithm4(
            batch_size=b, keep=keep, start=y_kept, y_kept=y_kept,
            schedule_args=dict(num_inference_steps=num_inference_steps, timesteps=timesteps, sigmas=sigmas),
            default_schedule=self._default_steps(), class_labels=class_labels, seed=seed, generator=generator,
            rng=rng, latents=latents, noise=noise, output_type=output_type, return_dict=return_dict,
        )

    def edit(
        self,
        image: Any,
        mask: Any = None,
        *,
        batch_size: int | None = None,
        class_labels: Any = None,
        num_inference_steps: int | None = None,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
        seed: Any = None,
        generator: Any = None,
        rng: str = "numpy",
        latents: np.ndarray | None = None,
        noise: Sequence[np.ndarray] | None = None,
        resize: bool = True,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Stroke-guided editing (SDEdit-like): noise the image to sigma_1, then denoise through the schedule.

        Default: the training-grid points nearest to the paper's 5.38 and 2.24 (exactly those for
        N = 40: `timesteps=[20, 16]`). A lower first sigma stays closer to the input. With a `mask`,
        only the True pixels change (the rest are kept as in `inpaint`).
        """
        s = self.sample_size
        arrays = {"image": load_images(image, "image", s, resize)}
        if mask is not None:
            arrays["mask"] = load_masks(mask, "mask", s, resize)
        b, arrays = self._editing_batch(batch_size, arrays)
        y = to_model_space(arrays["image"])
        keep = KeepPixels(arrays["mask"]) if mask is not None else Keep()
        default = {"timesteps": timesteps_for_sigmas(self.scheduler_config, STROKE_SIGMAS)}
        return self._run_algorithm4(
            batch_size=b, keep=keep, start=y, y_kept=y,
            schedule_args=dict(num_inference_steps=num_inference_steps, timesteps=timesteps, sigmas=sigmas),
            default_schedule=default, class_labels=class_labels, seed=seed, generator=generator,
            rng=rng, latents=latents, noise=noise, output_type=output_type, return_dict=return_dict,
        )

    def interpolate(
        self,
        alphas: Sequence[float] = DEFAULT_ALPHAS,
        *,
        latents: Any = None,
        noise: Sequence[np.ndarray] | None = None,
        class_labels: Any = None,
        num_inference_steps: int | None = None,
        timesteps: Sequence[int] | None = None,
        seed: Any = None,
        generator: Any = None,
        rng: str = "numpy",
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Generate from slerp(z1, z2, alpha) for each alpha: one image per alpha, alpha 0 is z1's image.

        z1, z2: `latents` ([2, C, S, S], or a pair of [C, S, S] arrays), else drawn: `seed=[s1, s2]`
        makes z_k (and the step noise, for several steps) what a batch-1 `pipe(seed=s_k)` draws, so
        alpha 0 and 1 are those generations; one seed or generator draws both from one stream.
        Step noises (more than one step) are slerped with the same alpha; `noise` gives them
        ([2, C, S, S] per step). `class_labels`: one label for every alpha (or one per alpha);
        drawn from z1's stream when omitted. Default: one step f(z, sigma_max), as in the paper.
        """
        a = check_alphas(alphas)
        b = len(a)
        if not self.min_batch <= b <= self.max_batch:
            raise ValueError(f"alphas has {b} values; this engine runs batches of {self.min_batch}..{self.max_batch}")
        _check_output(output_type, return_dict)
        schedule = self.schedule(num_inference_steps, timesteps)
        endpoints = (2, *self.sample_shape)
        if latents is not None:
            if isinstance(latents, (list, tuple)):
                if len(latents) != 2 or not all(isinstance(z, np.ndarray) for z in latents):
                    raise TypeError(f"latents must be a pair of numpy arrays (z1, z2) of shape {self.sample_shape}")
                shapes = [z.shape[1:] if z.ndim == 4 and z.shape[0] == 1 else z.shape for z in latents]
                if any(sh != self.sample_shape for sh in shapes):
                    raise ValueError(f"latents z1, z2 have shapes {shapes}, expected {self.sample_shape} each")
                latents = np.stack([z.reshape(self.sample_shape) for z in latents])
            if not isinstance(latents, np.ndarray):
                raise TypeError(f"latents must be a numpy array {endpoints} (z1, z2) or a pair of arrays, got {type(latents).__name__}")
            if latents.shape != endpoints:
                raise ValueError(f"latents has shape {latents.shape}, expected {endpoints} (z1 and z2)")
            check_standard_normal("latents", latents)
            latents = latents.astype(np.float32, copy=False)
        n_noise = schedule.num_steps if schedule.num_steps > 1 else 0
        if noise is not None:
            if isinstance(noise, np.ndarray) or not isinstance(noise, (list, tuple)):
                raise TypeError("noise must be a list with one [2, C, S, S] numpy array per step")
            if len(noise) != n_noise:
                raise ValueError(f"noise has {len(noise)} arrays but the schedule needs {n_noise}")
            for i, z in enumerate(noise):
                if not isinstance(z, np.ndarray) or z.shape != endpoints:
                    raise ValueError(f"noise[{i}] must be a numpy array of shape {endpoints}")
                check_standard_normal(f"noise[{i}]", z)
        if self.num_classes is None:
            labels = self.check_class_labels(class_labels, b)
        elif class_labels is None:
            labels = None
        elif isinstance(class_labels, numbers.Integral) and not isinstance(class_labels, bool):
            labels = self.check_class_labels([int(class_labels)] * b, b)
        else:
            labels = self.check_class_labels(class_labels, b)
        source = make_noise_source(seed, generator, rng, 2)
        if latents is None:
            latents = source.normal(endpoints)
        if self.num_classes is not None and labels is None:
            labels = np.full((b,), source.labels(self.num_classes, 2)[0], dtype=np.int64)
        if n_noise and noise is None:
            noise = [source.normal(endpoints) for _ in range(n_noise)]
        source.finish()
        z = slerp(latents[0], latents[1], a)
        step_noise = [slerp(e[0], e[1], a) for e in noise] if n_noise else None
        kwargs = {"timesteps": timesteps} if timesteps is not None else {"num_inference_steps": num_inference_steps}
        return self(
            batch_size=b, class_labels=labels, latents=z, noise=step_noise, output_type=output_type,
            return_dict=return_dict, **kwargs,
        )

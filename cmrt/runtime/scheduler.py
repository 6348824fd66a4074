"""The consistency-model sampler of diffusers' `CMStochasticIterativeScheduler`, in numpy.

Kept as small pure functions over a sigma schedule (the k-diffusion style) so that the
runtime, the editing algorithms and the tests all share one source of the sampling math.
Dtypes follow diffusers exactly: the Karras grid and the UNet timesteps are float64, the
sigmas the sampler steps with are float32, and all per-step arithmetic is float32; this is
what keeps cmrt's images within 1e-4 of diffusers'.
"""
from __future__ import annotations

import logging
import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from ..engine.io_spec import STEP_COEF_ORDER
from ..engine.scheduler_config import DEFAULTS, check_scheduler_config

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SchedulerConfig:
    """diffusers' CMStochasticIterativeScheduler config, validated by the rules `cmrt build`
    applies to a checkpoint (cmrt/engine/scheduler_config.py), so a folder that builds loads."""

    num_train_timesteps: int = DEFAULTS["num_train_timesteps"]
    sigma_min: float = DEFAULTS["sigma_min"]
    sigma_max: float = DEFAULTS["sigma_max"]
    sigma_data: float = DEFAULTS["sigma_data"]
    s_noise: float = DEFAULTS["s_noise"]
    rho: float = DEFAULTS["rho"]
    clip_denoised: bool = DEFAULTS["clip_denoised"]

    def __post_init__(self) -> None:
        for name, value in check_scheduler_config(asdict(self)).items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_dict(cls, config: dict[str, Any], where: str = "scheduler config") -> "SchedulerConfig":
        """Build from a diffusers `scheduler_config.json` dict (extra keys such as `_diffusers_version` are ignored)."""
        return cls(**check_scheduler_config(config, where))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def init_noise_sigma(self) -> float:
        return float(self.sigma_max)


@dataclass(frozen=True)
class Schedule:
    """What `set_timesteps` produces: one entry per step, plus the final sigma_min."""

    indices: np.ndarray  # int64 [n], positions on the N-point training grid, descending
    timesteps: np.ndarray  # float64 [n], t = 250 ln(sigma), what the UNet sees
    sigmas: np.ndarray  # float32 [n + 1], the last one is sigma_min

    @property
    def num_steps(self) -> int:
        return int(self.indices.shape[0])


def karras_sigmas(ramp: np.ndarray, cfg: SchedulerConfig) -> np.ndarray:
    min_inv = cfg.sigma_min ** (1 / cfg.rho)
    max_inv = cfg.sigma_max ** (1 / cfg.rho)
    return (max_inv + np.asarray(ramp, dtype=np.float64) * (min_inv - max_inv)) ** cfg.rho


def sigma_to_t(sigmas: np.ndarray | float) -> np.ndarray:
    return 1000 * 0.25 * np.log(np.asarray(sigmas, dtype=np.float64) + 1e-44)


def _validate_explicit_timesteps(timesteps: Sequence[Any], n_train: int) -> np.ndarray:
    if isinstance(timesteps, (str, bytes)) or not hasattr(timesteps, "__len__"):
        raise TypeError(f"timesteps must be a list of integers, got {type(timesteps).__name__}")
    values = list(np.asarray(timesteps).reshape(-1)) if isinstance(timesteps, np.ndarray) else list(timesteps)
    if len(values) == 0:
        raise ValueError("timesteps is empty; pass at least one timestep, e.g. timesteps=[17, 0]")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (numbers.Real, np.number)):
            raise TypeError(f"timesteps must be numbers, got {v!r} ({type(v).__name__})")
    if not all(math.isfinite(v) for v in values):  # NaN passes every comparison below, then casts to INT64_MIN
        raise ValueError(f"timesteps must be finite integers on the {n_train}-point training grid, got {values}")
    for i in range(1, len(values)):
        if values[i] >= values[i - 1]:
            raise ValueError(f"timesteps must be in strictly descending order, got {values}")
    if values[0] >= n_train:
        raise ValueError(
            f"timesteps must start below the model's num_train_timesteps ({n_train}), got {values[0]} in {values}"
        )
    if values[-1] < 0:
        raise ValueError(f"timesteps must be >= 0 (indices on the {n_train}-point training grid), got {values}")
    arr = np.array(values, dtype=np.float64)
    if np.any(arr != np.trunc(arr)):
        logger.warning("timesteps %s are not integers; they are truncated as diffusers does", values)
    return arr.astype(np.int64)


def make_schedule(
    cfg: SchedulerConfig, num_inference_steps: int | None = None, timesteps: Sequence[int] | None = None
) -> Schedule:
    """`CMStochasticIterativeScheduler.set_timesteps`: exactly one of the two arguments."""
    if num_inference_steps is None and timesteps is None:
        raise ValueError("pass exactly one of num_inference_steps or timesteps; neither was given")
    if num_inference_steps is not None and timesteps is not None:
        raise ValueError(
            f"pass exactly one of num_inference_steps ({num_inference_steps}) or timesteps ({list(timesteps)}), not both"
        )
    n_train = cfg.num_train_timesteps
    if timesteps is not None:
        indices = _validate_explicit_timesteps(timesteps, n_train)
    else:
        n = num_inference_steps
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise TypeError(f"num_inference_steps must be an integer, got {n!r}")
        if n < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {n}")
        if n > n_train:
            raise ValueError(f"num_inference_steps ({n}) cannot exceed the model's num_train_timesteps ({n_train})")
        step_ratio = n_train // int(n)
        indices = (np.arange(0, int(n)) * step_ratio).round()[::-1].copy().astype(np.int64)
    ramp = indices[::-1].copy() / (n_train - 1)
    sigmas64 = karras_sigmas(ramp, cfg)
    t = sigma_to_t(sigmas64)
    sigmas = np.concatenate([sigmas64, [cfg.sigma_min]]).astype(np.float32)
    return Schedule(indices=indices, timesteps=t, sigmas=sigmas)


def input_divisor(sigma: np.float32, cfg: SchedulerConfig) -> np.float32:
    """sqrt(sigma^2 + sigma_data^2) in float32; the UNet input is x divided by it (`scale_model_input`)."""
    sigma = np.float32(sigma)
    return np.float32(np.sqrt(sigma * sigma + np.float32(cfg.sigma_data**2)))


def scale_model_input(sample: np.ndarray, sigma: np.float32, cfg: SchedulerConfig) -> np.ndarray:
    return sample / input_divisor(sigma, cfg)


def boundary_scalings(sigma: np.float32, cfg: SchedulerConfig) -> tuple[np.float32, np.float32]:
    """c_skip, c_out of the paper's Appendix C, with epsilon = sigma_min (float32, like diffusers)."""
    sigma = np.float32(sigma)
    smin = np.float32(cfg.sigma_min)
    sd = np.float32(cfg.sigma_data)
    sd2 = np.float32(cfg.sigma_data**2)
    c_skip = sd2 / ((sigma - smin) * (sigma - smin) + sd2)
    c_out = (sigma - smin) * sd / np.sqrt(sigma * sigma + sd2)
    return np.float32(c_skip), np.float32(c_out)


def noise_scale(sigma_next: np.float32, cfg: SchedulerConfig) -> np.float32:
    """sqrt(clamp(sigma_next)^2 - sigma_min^2) in float32: ~6.7e-7 (not 0) on the last step, as in diffusers."""
    sigma_hat = np.clip(np.float32(sigma_next), np.float32(cfg.sigma_min), np.float32(cfg.sigma_max))
    return np.float32(np.sqrt(sigma_hat * sigma_hat - np.float32(cfg.sigma_min**2)))


@dataclass(frozen=True)
class StepConstants:
    """Everything one sampling step needs besides arrays, computed once per schedule.

    Precomputing these float32 scalars keeps the per-step host work to a handful of array
    operations (the benchmark's "time outside the UNet"); the values are exactly those the
    per-call functions above give, so results do not change.
    """

    t: np.float32  # UNet timestep
    divisor: np.float32  # input scaling divisor
    c_skip: np.float32
    c_out: np.float32
    noise_coef: np.float32  # s_noise * sqrt(clamp(sigma_next)^2 - sigma_min^2)


def step_constants(schedule: Schedule, cfg: SchedulerConfig) -> tuple[StepConstants, ...]:
    out = []
    for i in range(schedule.num_steps):
        sigma, sigma_next = schedule.sigmas[i], schedule.sigmas[i + 1]
        c_skip, c_out = boundary_scalings(sigma, cfg)
        out.append(StepConstants(
            t=np.float32(schedule.timesteps[i]),
            divisor=input_divisor(sigma, cfg),
            c_skip=c_skip,
            c_out=c_out,
            noise_coef=noise_scale(sigma_next, cfg),
        ))
    return tuple(out)


# The sampling loop splits each step around the UNet call: everything that does not need the
# UNet's output (input scaling, the skip term, the scaled noise) is done before it, so that
# after the call, when the UNet has evicted the host's caches (the first numpy operation then
# costs several times what it costs warm: `python -m benchmarks.host_overhead` measures it),
# only two to four in-place operations remain. No function here
# allocates; the float32 operations and their order are diffusers', so results are
# bit-identical to the one-shot formulas.

# Positional `out` and prebuilt bounds: with cold caches every keyword parsed and every scalar
# built costs microseconds (`python -m benchmarks.host_overhead` compares the two forms).
_divide, _multiply, _add = np.divide, np.multiply, np.add
_MINUS_ONE, _ONE = np.float32(-1.0), np.float32(1.0)

try:  # the clip ufunc itself: np.clip's Python wrapper adds its own dispatch, which is slow when the caches are cold
    from numpy._core.umath import clip as clip_ufunc  # numpy >= 2
except ImportError:  # numpy 1.x
    from numpy.core.umath import clip as clip_ufunc


def before_unet(sample: np.ndarray, k: StepConstants, scaled: np.ndarray) -> np.ndarray:
    """Write the UNet input sample / divisor into `scaled`, then turn `sample` into the skip term c_skip * x."""
    _divide(sample, k.divisor, scaled)
    _multiply(sample, k.c_skip, sample)
    return sample


def scale_noise(z: np.ndarray, coef: np.float32 | np.ndarray, cfg: SchedulerConfig) -> np.ndarray:
    """z -> (z * s_noise) * coef in place, coef = sqrt(clamp(sigma_next)^2 - sigma_min^2): the renoising
    term. `coef` may be one step's scalar, or `StepArrays.noise_coefs` to scale every step's term
    ([steps, B, C, H, W]) at once: element by element the same float32 products, so the same bits."""
    if cfg.s_noise != 1.0:  # z * 1 is z exactly: skipping it changes no bit
        _multiply(z, np.float32(cfg.s_noise), z)
    _multiply(z, coef, z)
    return z


@dataclass(frozen=True)
class StepArrays:
    """The arrays one plan needs at one batch size, built once and reused by every call
    (read-only, so concurrent calls can share them): the UNet's timestep input per step,
    the noise coefficients shaped to scale all steps' renoising terms in one operation, and
    each step's constants as a step graph takes them (`io_spec.STEP_COEF_ORDER`)."""

    timesteps: tuple[np.ndarray, ...]  # float32 [B] per step
    noise_coefs: np.ndarray  # float32 [steps, 1, 1, 1, 1]
    coefs: np.ndarray  # float32 [steps, len(STEP_COEF_ORDER)]


def step_arrays(plan: Sequence[StepConstants], batch_size: int, clip: bool = True) -> StepArrays:
    """`clip`: the config's clip_denoised, the step graph's bounds (-1, 1); else (-inf, inf), which clip nothing."""
    ts = tuple(np.full((batch_size,), k.t, dtype=np.float32) for k in plan)
    noise = np.array([k.noise_coef for k in plan], dtype=np.float32).reshape(-1, 1, 1, 1, 1)
    lo, hi = (_MINUS_ONE, _ONE) if clip else (np.float32(-np.inf), np.float32(np.inf))
    rows = [{"divisor": k.divisor, "c_skip": k.c_skip, "c_out": k.c_out, "clip_min": lo, "clip_max": hi} for k in plan]
    coefs = np.array([[r[n] for n in STEP_COEF_ORDER] for r in rows], dtype=np.float32).reshape(len(plan), len(STEP_COEF_ORDER))
    for a in (*ts, noise, coefs):
        a.setflags(write=False)
    return StepArrays(timesteps=ts, noise_coefs=noise, coefs=coefs)


def after_unet(model_output: np.ndarray, skip: np.ndarray, k: StepConstants, out: np.ndarray,
               noise_term: np.ndarray | None, clip: bool) -> np.ndarray:
    """out = clip(c_out * F + skip) (+ noise_term): the consistency step's end. `out` may be `model_output`.
    `clip` is the config's clip_denoised, except where the caller knows a later clip subsumes it."""
    _multiply(model_output, k.c_out, out)
    _add(out, skip, out)
    if clip:
        clip_ufunc(out, _MINUS_ONE, _ONE, out)
    if noise_term is not None:
        _add(out, noise_term, out)
    return out


def denoise(model_output: np.ndarray, sample: np.ndarray, sigma: np.float32, cfg: SchedulerConfig) -> np.ndarray:
    """The consistency function's output f(x, sigma): c_skip x + c_out F, clipped to [-1, 1]."""
    c_skip, c_out = boundary_scalings(sigma, cfg)
    k = StepConstants(t=np.float32(0), divisor=np.float32(1), c_skip=c_skip, c_out=c_out, noise_coef=np.float32(0))
    return _fresh_step(model_output, sample, None, k, cfg)


def _fresh_step(model_output, sample, noise, k: StepConstants, cfg: SchedulerConfig) -> np.ndarray:
    """after_unet on copies: the one-call functions leave their arguments untouched."""
    mo = np.asarray(model_output, dtype=np.float32)
    skip = np.multiply(np.asarray(sample, dtype=np.float32), k.c_skip)
    term = None if noise is None else scale_noise(np.array(noise, dtype=np.float32), k.noise_coef, cfg)
    return after_unet(mo, skip, k, np.empty_like(mo), term, cfg.clip_denoised)


def step(
    model_output: np.ndarray,
    sample: np.ndarray,
    sigma: np.float32,
    sigma_next: np.float32,
    noise: np.ndarray | None,
    cfg: SchedulerConfig,
) -> np.ndarray:
    """One `CMStochasticIterativeScheduler.step`; `noise=None` is the one-step case (no noise drawn)."""
    c_skip, c_out = boundary_scalings(sigma, cfg)
    k = StepConstants(t=np.float32(0), divisor=np.float32(1), c_skip=c_skip, c_out=c_out,
                      noise_coef=noise_scale(sigma_next, cfg))
    return _fresh_step(model_output, sample, noise, k, cfg)

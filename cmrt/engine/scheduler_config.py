"""The rules a scheduler config must follow, in one place for build time and run time.

`cmrt build` checks a checkpoint's `scheduler/scheduler_config.json` with them before it
builds anything, and the run time's `SchedulerConfig` (cmrt/runtime/scheduler.py) checks an
engine folder's `scheduler` record with the same function, so a folder that builds is a
folder that loads. The fields and defaults are those of diffusers'
`CMStochasticIterativeScheduler.__init__` (tests/build/test_checkpoints.py compares them).

The bounds are generous against the openai checkpoints (N = 40, 151 or 201; sigma 0.002..80;
sigma_data 0.5; rho 7) and tight enough that nothing a config can say allocates more than a
small array or overflows the sampler's float32 arithmetic: N bounds the Karras grid
(`num_train_timesteps` float64 values), sigma_max bounds sigma^2 + sigma_data^2.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

SCHEDULER_CLASS = "CMStochasticIterativeScheduler"

# CMStochasticIterativeScheduler.__init__'s defaults, for fields a config leaves out.
DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 40,
    "sigma_min": 0.002,
    "sigma_max": 80.0,
    "sigma_data": 0.5,
    "s_noise": 1.0,
    "rho": 7.0,
    "clip_denoised": True,
}

MAX_TRAIN_TIMESTEPS = 10_000
MAX_SIGMA = 1e6  # for sigma_max and sigma_data: their squares stay far inside float32
MAX_RHO = 1000.0
MAX_S_NOISE = 1000.0


def _real(where: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{where}: {name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{where}: {name} must be finite, got {value!r}")
    return v


def check_scheduler_config(config: Mapping[str, Any], where: str = "scheduler config") -> dict[str, Any]:
    """The seven fields cmrt's sampler reads, validated, with diffusers' defaults for missing ones.

    Other keys (`_diffusers_version`, `timestep_spacing`, ...) are ignored. A `_class_name`
    other than CMStochasticIterativeScheduler is refused: cmrt samples only that scheduler.
    Raises ValueError naming `where` (a file or manifest section) and the field.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"{where} must be a JSON object (a dict), got {type(config).__name__}")
    cls_name = config.get("_class_name")
    if cls_name is not None and cls_name != SCHEDULER_CLASS:
        raise ValueError(
            f"{where}: cmrt samples with {SCHEDULER_CLASS} (what consistency-model checkpoints use); "
            f"this config is for {cls_name!r}"
        )
    cfg = {k: config.get(k, d) for k, d in DEFAULTS.items()}
    n = cfg["num_train_timesteps"]
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 2 <= n <= MAX_TRAIN_TIMESTEPS:
        raise ValueError(
            f"{where}: num_train_timesteps must be an integer in 2..{MAX_TRAIN_TIMESTEPS} "
            f"(the openai models use 40, 151 or 201), got {n!r}"
        )
    cfg["num_train_timesteps"] = int(n)
    for name in ("sigma_min", "sigma_max", "sigma_data", "rho", "s_noise"):
        cfg[name] = _real(where, name, cfg[name])
    smin, smax = cfg["sigma_min"], cfg["sigma_max"]
    if not 0 < smin < smax <= MAX_SIGMA:
        raise ValueError(f"{where}: need 0 < sigma_min < sigma_max <= {MAX_SIGMA:g}, got sigma_min {smin} and sigma_max {smax}")
    if not 0 < cfg["sigma_data"] <= MAX_SIGMA:
        raise ValueError(f"{where}: sigma_data must be in (0, {MAX_SIGMA:g}], got {cfg['sigma_data']}")
    if not 0 < cfg["rho"] <= MAX_RHO:
        raise ValueError(f"{where}: rho must be in (0, {MAX_RHO:g}], got {cfg['rho']}")
    if not 0 <= cfg["s_noise"] <= MAX_S_NOISE:
        raise ValueError(f"{where}: s_noise must be in [0, {MAX_S_NOISE:g}], got {cfg['s_noise']}")
    if not isinstance(cfg["clip_denoised"], bool):
        raise ValueError(f"{where}: clip_denoised must be true or false, got {cfg['clip_denoised']!r}")
    return cfg

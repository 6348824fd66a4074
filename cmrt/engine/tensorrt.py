"""TensorRT engines in an engine folder: the pure decisions, readable without TensorRT.

The engine is built (by `cmrt.build.tensorrt`) from the step graph of the folder's fp16 ONNX
graph (the UNet with one consistency step around it, `cmrt.engine.step_graph`), as a strongly
typed network at the highest builder optimization level, so that a backend can run every step
of a generation in one CUDA graph. Its optimization
profiles over the batch axis are decided here (`optimization_profiles`: one with opt = 1
that serves batch 1, the latency case, and one for the rest of the folder's range tuned at
its opt batch; `profile_shapes` gives the builder each profile's input shapes, and an
execution context selects its profile by batch size, `profile_index_for`). The plan is
written beside the ONNX under a name that says what built it
(`unet.fp16.trt11.4.sm90.b1-1-1+2-4-16.lvl5.plan`). Its manifest entry records the TensorRT
version, the GPU, the batch range and the profiles, the options, the ONNX file's SHA-256
and the validation against ONNX Runtime fp32. A plan is only ever deserialized on the GPU
model and TensorRT version that built it, for the ONNX it was built from, with the profiles
and level this cmrt builds; anything else is rebuilt, or refused with a clear message when
it cannot be.

Everything here is a pure function of manifest data and machine facts, so the run time's
backend selection and the build share one set of rules, tested on any CPU.
"""
from __future__ import annotations

import numbers
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .io_spec import PRECISIONS, TOLERANCE
from .paths import cache_root

ENTRY_KEY = "tensorrt"
# 3: built from the step graph (I/O in `io`); 2: latency profiles (`profiles`) beside the batch
# range (`profile`), built from the plain UNet graph; 1: one profile over the range
ENTRY_FORMAT = 3
# The highest builder optimization level: the longest build, the fastest kernels; the timing
# cache (per GPU model and TensorRT version) makes a rebuild at the same shapes cheap.
DEFAULT_OPTIMIZATION_LEVEL = 5

# --- options and profile -----------------------------------------------------------------
@dataclass(frozen=True)
class TensorRTOptions:
    """How to build the TensorRT engine. None means: take it from the folder / the default."""

    precision: str = "fp16"
    opt_batch: int | None = None  # default: the folder's build_options opt_batch
    max_batch: int | None = None  # default: the folder's build_options max_batch
    optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL  # TensorRT builder optimization level 0..5
    timing_cache: str | None = None  # default: a per-GPU, per-TensorRT file under the cmrt cache
    use_timing_cache: bool = True
    tolerance: float | None = None  # default: TOLERANCE["tensorrt"][precision]
    workspace_mib: int | None = None  # default: TensorRT's (all free device memory)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"TensorRT precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("opt_batch", "max_batch", "workspace_mib"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        lvl = self.optimization_level
        if isinstance(lvl, bool) or not isinstance(lvl, numbers.Integral) or not 0 <= lvl <= 5:
            raise ValueError(f"optimization_level must be an integer 0..5 (cmrt's default is {DEFAULT_OPTIMIZATION_LEVEL}), got {lvl!r}")
        if self.tolerance is not None:
            if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, numbers.Real):
                raise ValueError(f"tolerance must be a positive number, got {self.tolerance!r}")
            if not (0 < float(self.tolerance) < float("inf")):
                raise ValueError(f"tolerance must be a positive finite number, got {self.tolerance!r}")

    @property
    def effective_tolerance(self) -> float:
        return float(self.tolerance) if self.tolerance is not None else TOLERANCE["tensorrt"][self.precision]


@dataclass(frozen=True)
class Profile:
    min: int
    opt: int
    max: int

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}

    @property
    def validation_batches(self) -> list[int]:
        return sorted({self.min, self.opt, self.max})

    @property
    def tag(self) -> str:
        return f"{self.min}-{self.opt}-{self.max}"

    def serves(self, batch: int) -> bool:
        return self.min <= batch <= self.max


def profile_for(build_options: dict[str, Any], options: TensorRTOptions) -> Profile:
    """The batch profile: min from the folder, opt and max from `options` (default: the folder's)."""
    fmin = int(build_options["min_batch"])
    fopt = int(build_options["opt_batch"])
    fmax = int(build_options["max_batch"])
    opt = options.opt_batch if options.opt_batch is not None else min(max(fopt, fmin), fmax)
    mx = options.max_batch if options.max_batch is not None else fmax
    if mx > fmax:
        raise ValueError(
            f"TensorRT max_batch {mx} exceeds the engine folder's max_batch {fmax}; the pipeline never asks for "
            f"more, rebuild the folder with `cmrt build ... --max-batch {mx}`"
        )
    if options.opt_batch is None and opt > mx:
        opt = mx
    if not fmin <= opt <= mx:
        raise ValueError(f"the TensorRT profile needs min <= opt <= max, got {fmin} <= {opt} <= {mx}")
    return Profile(fmin, int(opt), int(mx))


def optimization_profiles(batches: Profile) -> tuple[Profile, ...]:
    """The engine's optimization profiles for the batch range `batches` (from `profile_for`).

    TensorRT picks each profile's kernels for its opt shape, so one profile tuned at the opt
    batch runs batch 1, the latency case, on kernels tuned for another size. Where the range
    holds batch 1 and more, batch 1 gets its own profile (1, 1, 1) and the rest of the range
    (2 .. max) a second one tuned at the folder's opt batch (at least 2).
    """
    if batches.min > 1 or batches.max == 1:
        return (batches,)
    return (Profile(1, 1, 1), Profile(2, max(2, batches.opt), batches.max))


def profile_index_for(profiles: tuple[Profile, ...] | list[Profile], batch: int) -> int:
    """The index of the profile that serves `batch` (the first whose range holds it): what an execution
    context for that batch size selects (`set_optimization_profile_async`)."""
    if isinstance(batch, bool) or not isinstance(batch, numbers.Integral):
        raise TypeError(f"batch must be an integer, got {batch!r}")
    for i, p in enumerate(profiles):
        if p.serves(int(batch)):
            return i
    ranges = ", ".join(f"{p.min}..{p.max}" for p in profiles)
    raise ValueError(f"batch {batch} is outside this engine's profiles ({ranges}); rebuild with `cmrt build ... --max-batch {batch}`")


def validation_batches(profiles: tuple[Profile, ...] | list[Profile]) -> list[int]:
    """The batch sizes a built engine is validated at: every profile's min, opt and max."""
    return sorted({b for p in profiles for b in p.validation_batches})


def profile_shapes(profiles: tuple[Profile, ...] | list[Profile], inputs: list[dict[str, Any]]) -> list[dict[str, tuple]]:
    """What the builder sets, per profile: input name -> (min, opt, max) shapes.

    `inputs` is a graph's I/O spec inputs (the manifest's: name, dtype, shape with "batch"
    first). Inputs without a batch axis (a step graph's `step_coefs`) have one shape and are
    not part of a profile.
    """
    out = []
    for p in profiles:
        shapes = {}
        for t in inputs:
            dims = list(t["shape"])
            tail = dims[1:]
            if any(not isinstance(d, numbers.Integral) for d in tail):
                raise ValueError(f"input {t['name']!r} has shape {dims}: only the first axis, 'batch', may be symbolic")
            if dims and dims[0] == "batch":
                shapes[t["name"]] = tuple((b, *(int(d) for d in tail)) for b in (p.min, p.opt, p.max))
            elif dims and not isinstance(dims[0], numbers.Integral):
                raise ValueError(f"input {t['name']!r} has shape {dims}: its first axis must be 'batch' or a number")
        out.append(shapes)
    return out


def short_version(version: str) -> str:
    """'11.4.0.9' -> '11.4'."""
    parts = str(version).split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else str(version)


def sm_tag(compute_capability: tuple[int, int] | list[int] | str) -> str:
    """(9, 0) or '9.0' -> 'sm90'."""
    if isinstance(compute_capability, str):
        major, _, minor = compute_capability.partition(".")
        return f"sm{int(major)}{int(minor or 0)}"
    major, minor = compute_capability
    return f"sm{int(major)}{int(minor)}"


def cc_string(compute_capability: tuple[int, int] | list[int] | str) -> str:
    if isinstance(compute_capability, str):
        return compute_capability
    return f"{int(compute_capability[0])}.{int(compute_capability[1])}"


def engine_file_name(
    precision: str, tensorrt_version: str, compute_capability, batches: Profile, optimization_level: int | None = None
) -> str:
    """`unet.fp16.trt11.4.sm90.b1-1-1+2-4-16.lvl5.plan`: what built it, readable in `ls`: the
    TensorRT version, the GPU architecture, each optimization profile (min-opt-max) of the batch
    range `batches`, and the builder optimization level where given."""
    profiles = "+".join(p.tag for p in optimization_profiles(batches))
    level = "" if optimization_level is None else f".lvl{int(optimization_level)}"
    return f"unet.{precision}.trt{short_version(tensorrt_version)}.{sm_tag(compute_capability)}.b{profiles}{level}.plan"


# --- machine facts and decisions ---------------------------------------------------------
@dataclass(frozen=True)
class Platform:
    """What an engine is tied to: the GPU model and the TensorRT version."""

    gpu_name: str
    compute_capability: tuple[int, int]
    tensorrt_version: str
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class EngineDecision:
    action: str  # "reuse" | "build" | "rebuild"
    reason: str

    @property
    def needs_build(self) -> bool:
        return self.action != "reuse"


def step_record(data: dict[str, Any], precision: str) -> dict[str, Any] | None:
    """The manifest's record of the step graph of the `precision` graph (what the engine is built
    from: file, I/O), None where the folder has none (built before step graphs)."""
    entry = data.get("onnx", {}).get(precision)
    step = entry.get("step") if isinstance(entry, dict) else None
    return dict(step) if step else None


def onnx_digest(data: dict[str, Any], precision: str) -> str | None:
    """The SHA-256 the engine entry is keyed on: the step graph's file and the weight file it
    reads (the `precision` graph's external data, if any); None where there is no step graph."""
    entry = data.get("onnx", {}).get(precision)
    step = step_record(data, precision)
    if entry is None or step is None:
        return None
    files = data.get("files", {})
    main = files.get(step["file"], {}).get("sha256")
    if main is None:
        return None
    ext = entry.get("external_data")
    if ext:
        ext_sha = files.get(ext, {}).get("sha256")
        if ext_sha is None:
            return None
        return f"{main}+{ext_sha}"
    return main


def wanted_settings(batches: Profile, options: TensorRTOptions) -> dict[str, Any]:
    """The settings an existing engine must have been built with to be reused."""
    return {
        "precision": options.precision,
        "profile": batches.to_dict(),
        "profiles": [p.to_dict() for p in optimization_profiles(batches)],
        "optimization_level": int(options.optimization_level),
        "tolerance": options.effective_tolerance,
    }


def _describe_profiles(profiles: list[dict[str, int]]) -> str:
    return " and ".join(f"b{p['min']}-{p['opt']}-{p['max']}" for p in profiles)


def engine_decision(
    entry: dict[str, Any] | None,
    platform: Platform,
    onnx_sha256: str | None,
    wanted: dict[str, Any] | None = None,
) -> EngineDecision:
    """Reuse, build or rebuild the folder's engine on `platform`? Pure; the reason is for humans."""
    if not entry:
        return EngineDecision("build", "the engine folder has no TensorRT engine yet")
    try:
        built_gpu = str(entry["gpu"]["name"])
        built_cc = cc_string(entry["gpu"]["compute_capability"])
        built_trt = str(entry["tensorrt_version"])
        built_sha = entry.get("onnx_sha256")
        settings = {
            "precision": entry["precision"],
            "profile": dict(entry["profile"]),
            "optimization_level": int(entry["options"]["optimization_level"]),
            "tolerance": float(entry["validation"]["tolerance"]),
        }
        fmt = int(entry.get("format", 0))
    except (KeyError, TypeError, ValueError) as e:
        return EngineDecision("rebuild", f"the folder's TensorRT entry is incomplete ({e!r})")
    if fmt == 1:  # before latency profiles: one profile over the batch range
        now = "" if wanted is None else (
            f"; this cmrt builds profiles {_describe_profiles(wanted['profiles'])} at optimization level "
            f"{wanted['optimization_level']}"
        )
        return EngineDecision(
            "rebuild",
            f"the engine was built before latency profiles (one profile {_describe_profiles([settings['profile']])} at "
            f"optimization level {settings['optimization_level']}, so batch 1 runs kernels tuned for batch "
            f"{settings['profile']['opt']}){now}",
        )
    if fmt == 2:  # latency profiles, from the plain UNet graph
        return EngineDecision(
            "rebuild",
            "the engine was built from the plain UNet graph; this cmrt builds it from the step graph, so that a "
            "generation runs every step in one CUDA graph with one host synchronize",
        )
    if fmt != ENTRY_FORMAT:
        return EngineDecision("rebuild", f"the TensorRT entry has format {fmt}, this cmrt writes {ENTRY_FORMAT}")
    try:
        settings["profiles"] = [dict(p) for p in entry["profiles"]]
    except (KeyError, TypeError, ValueError) as e:
        return EngineDecision("rebuild", f"the folder's TensorRT entry is incomplete ({e!r})")
    here_cc = cc_string(platform.compute_capability)
    if built_cc != here_cc:
        return EngineDecision(
            "rebuild",
            f"the engine was built for {built_gpu} (compute capability {built_cc}); this GPU is "
            f"{platform.gpu_name} (compute capability {here_cc})",
        )
    if built_gpu.strip() != platform.gpu_name.strip():
        return EngineDecision(
            "rebuild",
            f"the engine was built for {built_gpu}; this GPU is {platform.gpu_name} (same compute capability "
            f"{here_cc}, but TensorRT tunes engines per GPU model)",
        )
    if built_trt != platform.tensorrt_version:
        return EngineDecision(
            "rebuild",
            f"the engine was built by TensorRT {built_trt}; this machine has TensorRT {platform.tensorrt_version} "
            "(plans are not portable across TensorRT versions)",
        )
    if onnx_sha256 is not None and built_sha != onnx_sha256:
        return EngineDecision("rebuild", "the ONNX model changed since the engine was built (SHA-256 differs)")
    if wanted is not None:
        changed = [f"{k} {settings[k]!r} -> {wanted[k]!r}" for k in sorted(wanted) if settings.get(k) != wanted[k]]
        if changed:
            return EngineDecision("rebuild", "build settings changed: " + "; ".join(changed))
    return EngineDecision(
        "reuse", f"the engine matches this GPU ({platform.gpu_name}), TensorRT {platform.tensorrt_version} and the ONNX model"
    )


def engine_entry(
    file: str,
    options: TensorRTOptions,
    batches: Profile,
    platform: Platform,
    onnx_file: str,
    onnx_sha256: str | None,
    validation: dict[str, Any],
    facts: dict[str, Any],
    io: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest's `tensorrt` entry (`onnx_file`: the step graph it was built from, `io` its
    inputs and outputs). Pure."""
    return {
        "format": ENTRY_FORMAT,
        "file": file,
        "precision": options.precision,
        "onnx_file": onnx_file,
        "onnx_sha256": onnx_sha256,
        "io": None if io is None else {"inputs": list(io["inputs"]), "outputs": list(io["outputs"])},
        "tensorrt_version": platform.tensorrt_version,
        "gpu": {"name": platform.gpu_name, "compute_capability": cc_string(platform.compute_capability)},
        "cuda": {k: v for k, v in platform.extra.items() if v is not None},
        "profile": batches.to_dict(),  # the batch range the engine serves
        "profiles": [p.to_dict() for p in optimization_profiles(batches)],  # its optimization profiles, in order
        "options": {
            "optimization_level": int(options.optimization_level),
            "strongly_typed": True,
            "workspace_mib": options.workspace_mib,
            "timing_cache": facts.get("timing_cache"),
            "timing_cache_was_warm": facts.get("timing_cache_was_warm"),
        },
        "validation": validation,
        "build_seconds": facts.get("build_seconds"),
        "created_unix": int(time.time()),
    }


def rebuild_blocker(data: dict[str, Any], precision: str, tensorrt_missing: str | None = None) -> str | None:
    """Why a (re)build is impossible here, or None. Pure."""
    if tensorrt_missing:
        return tensorrt_missing
    if precision not in data.get("onnx", {}):
        have = sorted(data.get("onnx", {}))
        return (
            f"the folder has no {precision} ONNX model to build it from (it has {have}); rebuild the folder with "
            f"`cmrt build MODEL --precision fp32 {precision}`"
        )
    if step_record(data, precision) is None:
        return (
            f"the folder has no step graph of its {precision} graph, which the engine is built from (the folder was "
            "built by an older cmrt); rebuild the folder with `cmrt build MODEL`"
        )
    return None



def default_timing_cache(platform: Platform) -> Path:
    """Timing caches are per GPU model and TensorRT version: never shared across them."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", platform.gpu_name).strip("-").lower() or "gpu"
    return cache_root() / "tensorrt" / f"timing-{slug}-{sm_tag(platform.compute_capability)}-trt{platform.tensorrt_version}.cache"

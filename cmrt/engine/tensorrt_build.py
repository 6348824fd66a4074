"""TensorRT engines inside an engine folder: build, validate, and decide when to rebuild.

The engine is built from the folder's fp16 ONNX graph as a strongly typed network (the
only kind TensorRT 11 builds: precision comes from the graph), with one optimization
profile over the batch axis, and written beside the ONNX under a name that says what
built it (`unet.fp16.trt11.4.sm90.b1-4-16.plan`). Its manifest entry records the TensorRT
version, the GPU, the profile, the options, the ONNX file's SHA-256, and the validation
against ONNX Runtime fp32. A plan is only ever deserialized on the GPU model and TensorRT
version that built it, for the ONNX it was built from; anything else is rebuilt, or
refused with a clear message when it cannot be.

The decisions (`profile_for`, `engine_decision`, `rebuild_blocker`, ...) are pure
functions of manifest data and machine facts so they are tested on any CPU; only
`current_platform`, `build_plan`, `validate_plan` and `ensure_tensorrt_engine` touch
TensorRT / CUDA, imported lazily. This module imports neither torch nor tensorrt.
"""
from __future__ import annotations

import contextlib
import logging
import numbers
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

logger = logging.getLogger(__name__)

ENTRY_KEY = "tensorrt"
ENTRY_FORMAT = 1
PRECISIONS = ("fp16", "fp32")
# Max abs error of the engine's UNet outputs against ONNX Runtime fp32 (CPU) on random
# sampling-like inputs. fp16 matches the ONNX export's fp16 bound against PyTorch.
TOLERANCE = {"fp16": 5e-2, "fp32": 1e-3}
DEFAULT_OPTIMIZATION_LEVEL = 3


class BackendUnavailableError(RuntimeError):
    """The requested backend (or device) cannot run on this machine, or this folder cannot feed it."""


class EngineValidationError(RuntimeError):
    """A freshly built engine disagrees with ONNX Runtime fp32 (or produced NaN/Inf)."""


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
    tolerance: float | None = None  # default: TOLERANCE[precision]
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
            raise ValueError(f"optimization_level must be an integer 0..5 (TensorRT's default is 3), got {lvl!r}")
        if self.tolerance is not None:
            if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, numbers.Real):
                raise ValueError(f"tolerance must be a positive number, got {self.tolerance!r}")
            if not (0 < float(self.tolerance) < float("inf")):
                raise ValueError(f"tolerance must be a positive finite number, got {self.tolerance!r}")

    @property
    def effective_tolerance(self) -> float:
        return float(self.tolerance) if self.tolerance is not None else TOLERANCE[self.precision]


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


def engine_file_name(precision: str, tensorrt_version: str, compute_capability, batches: Profile) -> str:
    """`unet.fp16.trt11.4.sm90.b1-4-16.plan`: what built it, readable in `ls`."""
    return f"unet.{precision}.trt{short_version(tensorrt_version)}.{sm_tag(compute_capability)}.b{batches.min}-{batches.opt}-{batches.max}.plan"


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


def onnx_digest(data: dict[str, Any], precision: str) -> str | None:
    """The SHA-256 the engine entry is keyed on: the ONNX file's (and its external data's, if any)."""
    entry = data.get("onnx", {}).get(precision)
    if entry is None:
        return None
    files = data.get("files", {})
    main = files.get(entry["file"], {}).get("sha256")
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
        "optimization_level": int(options.optimization_level),
        "tolerance": options.effective_tolerance,
    }


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
    if fmt != ENTRY_FORMAT:
        return EngineDecision("rebuild", f"the TensorRT entry has format {fmt}, this cmrt writes {ENTRY_FORMAT}")
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
) -> dict[str, Any]:
    """The manifest's `tensorrt` entry. Pure."""
    return {
        "format": ENTRY_FORMAT,
        "file": file,
        "precision": options.precision,
        "onnx_file": onnx_file,
        "onnx_sha256": onnx_sha256,
        "tensorrt_version": platform.tensorrt_version,
        "gpu": {"name": platform.gpu_name, "compute_capability": cc_string(platform.compute_capability)},
        "cuda": {k: v for k, v in platform.extra.items() if v is not None},
        "profile": batches.to_dict(),
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
    return None


def default_timing_cache(platform: Platform) -> Path:
    """Timing caches are per GPU model and TensorRT version: never shared across them."""
    root = Path(os.environ.get("CMRT_CACHE", Path.home() / ".cache" / "cmrt")).expanduser()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", platform.gpu_name).strip("-").lower() or "gpu"
    return root / "tensorrt" / f"timing-{slug}-{sm_tag(platform.compute_capability)}-trt{platform.tensorrt_version}.cache"


def validation_inputs(unet: dict[str, Any], batch: int, seed: int) -> dict[str, np.ndarray]:
    """Sampling-like random inputs from manifest facts alone (no torch): scaled noise, t over the sigma range, labels."""
    rng = np.random.default_rng(seed)
    s, c = int(unet["sample_size"]), int(unet["in_channels"])
    feeds = {
        "sample": rng.standard_normal((batch, c, s, s)).astype(np.float32),
        "timestep": rng.uniform(250 * np.log(0.002), 250 * np.log(80.0), size=batch).astype(np.float32),
    }
    if unet.get("num_class_embeds") is not None:
        feeds["class_labels"] = rng.integers(0, int(unet["num_class_embeds"]), size=batch).astype(np.int64)
    return feeds


def compare_outputs(got: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Error statistics of `got` against `ref`; NaN/Inf in `got` shows as a non-finite max error."""
    if got.shape != ref.shape:
        raise EngineValidationError(f"engine output shape {got.shape} differs from ONNX Runtime's {ref.shape}")
    g, r = got.astype(np.float64), ref.astype(np.float64)
    finite = bool(np.isfinite(g).all())
    diff = np.abs(g - r)
    return {
        "finite": finite,
        "max_abs_error": float(diff.max()) if finite else float("inf"),
        "mean_abs_error": float(diff.mean()) if finite else float("inf"),
        "ref_max_abs": float(np.abs(r).max()),
    }


# --- machine probing (lazy TensorRT / CUDA) ----------------------------------------------
def current_platform(device_index: int = 0) -> Platform:
    """This machine's GPU and TensorRT, or BackendUnavailableError saying what is missing."""
    from ..runtime.backends.selection import probe_environment

    env = probe_environment()
    if not env.tensorrt_usable:
        raise BackendUnavailableError(f"TensorRT cannot run here: {env.tensorrt_missing_reason}")
    gpu = env.gpus[device_index]
    return Platform(
        gpu_name=gpu.name,
        compute_capability=tuple(gpu.compute_capability),
        tensorrt_version=str(env.tensorrt_version),
        extra={"driver": env.driver_version, "cuda_runtime": env.cuda_runtime_version},
    )


def _trt():
    try:
        import tensorrt as trt
    except Exception as e:  # ImportError, or OSError from missing libraries
        raise BackendUnavailableError(f"TensorRT cannot be imported ({e}); install the gpu extra: `pip install 'cmrt[gpu]'`") from e
    return trt


def build_plan(
    onnx_path: Path,
    input_shapes: dict[str, tuple[int, ...]],
    batches: Profile,
    options: TensorRTOptions,
    timing_cache: Path | None,
) -> tuple[bytes, dict[str, Any]]:
    """Build a strongly typed engine from `onnx_path`; returns (plan bytes, build facts).

    `input_shapes` maps each input to its shape without the batch axis.
    """
    from .._atomic import write_bytes_atomic

    trt = _trt()
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)  # TensorRT 11: always strongly typed, explicit batch
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):  # resolves external data beside the file
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: " + "; ".join(errors or ["unknown error"]))
    config = builder.create_builder_config()
    config.builder_optimization_level = int(options.optimization_level)
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if options.precision == "fp32" and tf32 is not None:
        config.clear_flag(tf32)  # fp32 means fp32: no TF32 tensor-core rounding
    if options.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mib) << 20)
    profile = builder.create_optimization_profile()
    for name, rest in input_shapes.items():
        profile.set_shape(name, (batches.min, *rest), (batches.opt, *rest), (batches.max, *rest))
    config.add_optimization_profile(profile)
    cache_bytes = b""
    if timing_cache is not None and timing_cache.is_file():
        cache_bytes = timing_cache.read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path.name} (see the TensorRT log above)")
    if timing_cache is not None:
        try:
            write_bytes_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
        except OSError as e:  # a read-only cache is not worth failing the build for
            logger.warning("could not save the TensorRT timing cache %s: %s", timing_cache, e)
    facts = {
        "build_seconds": round(seconds, 2),
        "timing_cache": None if timing_cache is None else str(timing_cache),
        "timing_cache_was_warm": bool(cache_bytes),
    }
    return bytes(serialized), facts


def validate_plan(
    plan_path: Path,
    folder: Path,
    data: dict[str, Any],
    batches: Profile,
    precision: str,
    tolerance: float,
) -> dict[str, Any]:
    """Run the engine (the TensorRT backend, as served) against ONNX Runtime fp32 at min/opt/max batch."""
    from ..runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from ..runtime.backends.tensorrt_backend import TensorRTBackend

    ref_precision = "fp32" if "fp32" in data["onnx"] else precision
    if ref_precision != "fp32":
        logger.warning("the folder has no fp32 ONNX model: validating the TensorRT engine against %s ONNX Runtime", ref_precision)
    ref = OnnxRuntimeBackend(folder / data["onnx"][ref_precision]["file"], device="cpu")
    io = {"inputs": data["onnx"][precision]["inputs"], "outputs": data["onnx"][precision]["outputs"]}
    candidate = TensorRTBackend(plan_path, io, profile=(batches.min, batches.opt, batches.max))
    per_batch: dict[str, dict[str, float]] = {}
    try:
        for i, b in enumerate(batches.validation_batches):
            feeds = validation_inputs(data["unet"], b, seed=2000 + i)
            labels = feeds.get("class_labels")
            want = ref.run(feeds["sample"], feeds["timestep"], labels)
            got = candidate.run(feeds["sample"], feeds["timestep"], labels)
            per_batch[str(b)] = compare_outputs(got, want)
    finally:
        candidate.close()
    worst = max(v["max_abs_error"] for v in per_batch.values())
    result = {
        "reference": f"onnxruntime {ref_precision} ONNX, {ref.provider}",
        "metric": "max abs error of the UNet output",
        "batch_sizes": batches.validation_batches,
        "tolerance": float(tolerance),
        "max_abs_error": worst,
        "mean_abs_error": max(v["mean_abs_error"] for v in per_batch.values()),
        "per_batch": per_batch,
    }
    bad_nan = [b for b, v in per_batch.items() if not v["finite"]]
    if bad_nan:
        raise EngineValidationError(
            f"{plan_path.name}: NaN or Inf in the TensorRT output at batch sizes {bad_nan}; the engine was not installed "
            f"(try --precision fp32 for the engine, or keep GroupNorm/softmax in fp32 in the ONNX graph)"
        )
    if not worst <= tolerance:
        errs = {b: f"{v['max_abs_error']:.3g}" for b, v in per_batch.items()}
        raise EngineValidationError(
            f"{plan_path.name}: TensorRT differs from ONNX Runtime {ref_precision} by {worst:.3g} (max abs), over the "
            f"{precision} tolerance {tolerance}; per batch size: {errs}. The engine was not installed."
        )
    logger.info("validated %s against ONNX Runtime %s: max abs error %.3g (tolerance %g) at batch sizes %s",
                plan_path.name, ref_precision, worst, tolerance, batches.validation_batches)
    return result


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """One engine build per folder at a time (other processes wait)."""
    import fcntl

    lock_path = folder / ".tensorrt.lock"
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass(frozen=True)
class EngineResult:
    plan: Path
    entry: dict[str, Any]
    decision: EngineDecision
    built: bool


def ensure_tensorrt_engine(
    folder: str | os.PathLike,
    options: TensorRTOptions | None = None,
    force: bool = False,
    device_index: int = 0,
) -> EngineResult:
    """Make sure `folder` holds a validated TensorRT engine for this GPU, TensorRT and ONNX; build it if not.

    A new engine is built and validated under a temporary name, then renamed into place and
    recorded by an atomic manifest rewrite; a failed build or validation leaves the folder as it was.
    (When the new plan has the old one's name, a reader between the rename and the manifest
    rewrite sees a checksum mismatch and refuses the folder: refused, never wrong.)
    """
    from .._atomic import write_bytes_atomic, write_json_atomic
    from .manifest import MANIFEST_NAME, EngineFolderError, file_record, read_manifest

    folder = Path(folder)
    options = options or TensorRTOptions()
    manifest = read_manifest(folder, verify=True)
    platform = current_platform(device_index)
    blocker = rebuild_blocker(manifest.data, options.precision)
    batches = profile_for(manifest.data["build_options"], options)
    entry = manifest.data.get(ENTRY_KEY)
    decision = engine_decision(entry, platform, onnx_digest(manifest.data, options.precision), wanted_settings(batches, options))
    if not decision.needs_build and not force:
        logger.info("TensorRT engine %s is current (%s)", entry["file"], decision.reason)
        return EngineResult(folder / entry["file"], entry, decision, built=False)
    if blocker:
        raise EngineFolderError(f"{folder}: {decision.reason}, and it cannot be rebuilt: {blocker}")

    with _folder_lock(folder):
        # another process may have built it while we waited
        manifest = read_manifest(folder, verify=True)
        data = manifest.data
        entry = data.get(ENTRY_KEY)
        digest = onnx_digest(data, options.precision)
        decision_now = engine_decision(entry, platform, digest, wanted_settings(batches, options))
        if not decision_now.needs_build and not force:
            return EngineResult(folder / entry["file"], entry, decision_now, built=False)
        logger.info("building TensorRT engine in %s: %s", folder, decision.reason)
        onnx_entry = data["onnx"][options.precision]
        input_shapes = {i["name"]: tuple(int(d) for d in i["shape"][1:]) for i in onnx_entry["inputs"]}
        timing_cache = None
        if options.use_timing_cache:
            timing_cache = Path(options.timing_cache) if options.timing_cache else default_timing_cache(platform)
        plan_bytes, facts = build_plan(folder / onnx_entry["file"], input_shapes, batches, options, timing_cache)
        name = engine_file_name(options.precision, platform.tensorrt_version, platform.compute_capability, batches)
        tmp_plan = folder / f".{name}.validating"
        write_bytes_atomic(tmp_plan, plan_bytes)
        try:
            validation = validate_plan(tmp_plan, folder, data, batches, options.precision, options.effective_tolerance)
            os.replace(tmp_plan, folder / name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp_plan.unlink()
        new_entry = engine_entry(name, options, batches, platform, onnx_entry["file"], digest, validation, facts)
        new_data = dict(data)
        files = dict(data["files"])
        old_file = entry.get("file") if isinstance(entry, dict) else None
        if old_file and old_file != name:
            files.pop(old_file, None)
        files[name] = file_record(folder, name)
        new_data["files"] = files
        new_data[ENTRY_KEY] = new_entry
        write_json_atomic(folder / MANIFEST_NAME, new_data)
        if old_file and old_file != name:
            with contextlib.suppress(FileNotFoundError):
                (folder / old_file).unlink()
        logger.info("TensorRT engine %s built in %.1f s and validated (max abs error %.3g, tolerance %g)",
                    name, facts["build_seconds"], validation["max_abs_error"], validation["tolerance"])
        return EngineResult(folder / name, new_entry, decision_now, built=True)

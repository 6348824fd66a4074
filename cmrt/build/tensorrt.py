"""Build and validate the TensorRT engine inside an engine folder (needs TensorRT and a GPU).

What to build, when to rebuild and what to call the plan are decided in
`cmrt.engine.tensorrt` (pure, shared with the run time's backend selection); this module
does the TensorRT and CUDA work, imported lazily: `build_plan` builds a strongly typed
engine (precision comes from the ONNX graph), `validate_plan` runs it as served against
ONNX Runtime fp32, `ensure_tensorrt_engine` installs it in the folder atomically.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.errors import BackendUnavailableError, EngineFolderError, EngineValidationError
from ..engine.io_spec import CLASS_LABELS, SAMPLE, TIMESTEP, sample_inputs
from ..engine.tensorrt import (
    ENTRY_KEY,
    EngineDecision,
    Platform,
    Profile,
    TensorRTOptions,
    default_timing_cache,
    engine_decision,
    engine_entry,
    engine_file_name,
    onnx_digest,
    profile_for,
    rebuild_blocker,
    wanted_settings,
)

logger = logging.getLogger(__name__)


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
    from ..runtime.backends.probe import probe_environment

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
    from ..engine.atomic import write_bytes_atomic

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
    ref = OnnxRuntimeBackend(folder / data["onnx"][ref_precision]["file"])
    io = {"inputs": data["onnx"][precision]["inputs"], "outputs": data["onnx"][precision]["outputs"]}
    candidate = TensorRTBackend(plan_path, io, profile=(batches.min, batches.opt, batches.max))
    per_batch: dict[str, dict[str, float]] = {}
    try:
        for i, b in enumerate(batches.validation_batches):
            feeds = sample_inputs(data["unet"], data["scheduler"], b, seed=2000 + i)
            labels = feeds.get(CLASS_LABELS)
            want = ref.run(feeds[SAMPLE], feeds[TIMESTEP], labels)
            got = candidate.run(feeds[SAMPLE], feeds[TIMESTEP], labels)
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
    from ..engine.atomic import target_lock, write_bytes_atomic
    from ..engine.manifest import file_record, read_manifest, write_manifest

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

    with target_lock(folder):  # the folder's build lock: one engine build, and no folder swap, at a time
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
        write_manifest(folder, new_data)
        if old_file and old_file != name:
            with contextlib.suppress(FileNotFoundError):
                (folder / old_file).unlink()
        logger.info("TensorRT engine %s built in %.1f s and validated (max abs error %.3g, tolerance %g)",
                    name, facts["build_seconds"], validation["max_abs_error"], validation["tolerance"])
        return EngineResult(folder / name, new_entry, decision_now, built=True)

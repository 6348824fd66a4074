"""Build and validate the TensorRT engine inside an engine folder (needs TensorRT and a GPU).

What to build, when to rebuild and what to call the plan are decided in
`cmrt.engine.tensorrt` (pure, shared with the run time's backend selection); this module
does the TensorRT and CUDA work, imported lazily, through NVIDIA's polygraphy where it does
the job. The engine is built from the folder's step graph (`cmrt.engine.step_graph`: the
UNet with one consistency step around it), so that the backend runs a whole generation in
one CUDA graph: `sanitize_onnx` folds constants (polygraphy's surgeon, on the CPU),
`build_plan` builds a strongly typed engine with the latency profiles and the optimization
level with polygraphy's loaders (precision comes from the ONNX graph) and cmrt's
timing-cache step, `validate_plan` runs the engine as served (cmrt's CUDA-graph backend)
against ONNX Runtime fp32 through polygraphy's Comparator, and `ensure_tensorrt_engine`
installs it in the folder atomically.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..engine.errors import BackendUnavailableError, EngineFolderError, EngineValidationError
from ..engine.io_spec import OUTPUT, STEP_OUTPUT
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
    optimization_profiles,
    profile_for,
    profile_shapes,
    rebuild_blocker,
    step_record,
    validation_batches,
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
        raise BackendUnavailableError(f"TensorRT cannot be imported ({e}); install the gpu extra: `pip install 'cmrt[gpu]' --extra-index-url https://pypi.nvidia.com`") from e
    return trt


def _polygraphy():
    """polygraphy's G_LOGGER, imported with a clear message when the gpu/export extra is missing."""
    try:
        from polygraphy.logger import G_LOGGER
    except ImportError as e:
        raise BackendUnavailableError(
            f"building a TensorRT engine needs polygraphy and onnx-graphsurgeon ({e}): `pip install polygraphy onnx-graphsurgeon` (in the gpu and export extras)"
        ) from e
    return G_LOGGER


@contextlib.contextmanager
def _polygraphy_logging() -> Iterator[None]:
    """polygraphy prints to stdout; for the length of a build its warnings and errors go to Python
    logging instead ("Polygraphy" logger), and its progress lines are dropped."""
    g = _polygraphy()
    previous = g.use_python_logging_system
    g.use_python_logging_system = True
    try:
        with g.verbosity(g.WARNING):
            yield
    finally:
        g.use_python_logging_system = previous


def _polygraphy_errors(what: str):
    """polygraphy reports failures as PolygraphyException after logging them: one clear RuntimeError."""
    from polygraphy.exception import PolygraphyException

    @contextlib.contextmanager
    def wrap() -> Iterator[None]:
        try:
            yield
        except PolygraphyException as e:
            raise RuntimeError(f"{what}: {e}".splitlines()[0] + " (see the Polygraphy log above)") from e

    return wrap()


# --- the ONNX graph TensorRT is built from -----------------------------------------------
def sanitize_onnx(onnx_path: Path, out_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Fold constants and drop dead nodes, as `polygraphy surgeon sanitize --fold-constants` does
    (onnx-graphsurgeon's fold_constants + cleanup, with ONNX Runtime evaluating on the CPU).

    TensorRT parses fewer, simpler nodes (the exported UNet's shape arithmetic and Constant
    nodes go away); the graph computes the same function, which tests/build/test_tensorrt.py
    checks in ONNX Runtime. Written to `out_dir` (weights as external data beside it)."""
    _polygraphy()
    from polygraphy.backend.onnx import fold_constants, onnx_from_path, save_onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{onnx_path.stem}.sanitized.onnx"
    with _polygraphy_logging(), _polygraphy_errors(f"could not fold the constants of {onnx_path.name}"):
        model = onnx_from_path(str(onnx_path))  # resolves external data beside the file
        nodes_before = len(model.graph.node)
        model = fold_constants(model, error_ok=False)
        nodes_after = len(model.graph.node)
        save_onnx(model, str(out), external_data_path=f"{out.name}.data")
    logger.info("sanitized %s for TensorRT: %d -> %d nodes (constants folded)", onnx_path.name, nodes_before, nodes_after)
    return out, {"fold_constants": True, "nodes_before": nodes_before, "nodes_after": nodes_after}


# --- the build -----------------------------------------------------------------------------
def _attach_timing_cache(config: Any, timing_cache: Path | None) -> bool:
    """Give `config` the timing cache in `timing_cache` if TensorRT accepts it; True when it did.

    TensorRT refuses a cache made on another GPU or by another TensorRT version:
    `set_timing_cache(cache, ignore_mismatch=False)` returns False and the config is left with
    no cache at all (`get_timing_cache()` is None). polygraphy's `load_timing_cache` ignores
    that return value, so this step is cmrt's: such a cache is replaced by a fresh one, which
    the build fills and `_save_timing_cache` writes over the stale file."""
    data = b""
    if timing_cache is not None and timing_cache.is_file():
        data = timing_cache.read_bytes()
    if data:
        cache = config.create_timing_cache(data)
        if cache is not None and config.set_timing_cache(cache, False):
            return True
        logger.warning(
            "the TensorRT timing cache %s was made on another GPU or by another TensorRT version (TensorRT refused "
            "it); building with a fresh cache, which replaces it", timing_cache,
        )
    if not config.set_timing_cache(config.create_timing_cache(b""), False):
        raise RuntimeError("TensorRT refused an empty timing cache")
    return False


def _save_timing_cache(config: Any, timing_cache: Path) -> None:
    from ..engine.atomic import write_bytes_atomic

    cache = config.get_timing_cache()
    if cache is None:
        logger.warning("TensorRT kept no timing cache for this build; %s was not updated", timing_cache)
        return
    try:
        write_bytes_atomic(timing_cache, bytes(cache.serialize()))
    except OSError as e:  # a read-only cache is not worth failing the build for
        logger.warning("could not save the TensorRT timing cache %s: %s", timing_cache, e)


def build_plan(
    onnx_path: Path,
    inputs: list[dict[str, Any]],
    batches: Profile,
    options: TensorRTOptions,
    timing_cache: Path | None,
) -> tuple[bytes, dict[str, Any]]:
    """Build a strongly typed engine from `onnx_path` with polygraphy's loaders; returns (plan bytes, build facts).

    `inputs` is the graph's I/O spec inputs (names, shapes with "batch" first). The network is
    parsed strongly typed (precision comes from the ONNX graph: TensorRT 11 has no precision
    flags); the config has the latency profiles of the batch range `batches`
    (`optimization_profiles`, in order: a context selects one by index), the builder
    optimization level, TF32 off for fp32 engines and the workspace limit, and the timing
    cache attached by `_attach_timing_cache`. Inputs without a batch axis (`step_coefs`) have
    their one shape in every profile.
    """
    trt = _trt()
    _polygraphy()
    from polygraphy.backend.trt import Profile as PolygraphyProfile
    from polygraphy.backend.trt import create_config, engine_bytes_from_network, network_from_onnx_path

    # inputs without a batch axis have their one shape in every profile (polygraphy wants each input there)
    static = {t["name"]: tuple(int(d) for d in t["shape"]) for t in inputs if list(t["shape"][:1]) != ["batch"]}
    profiles = []
    for shapes in profile_shapes(optimization_profiles(batches), inputs):
        profile = PolygraphyProfile()
        for name, (mn, opt, mx) in shapes.items():
            profile.add(name, min=mn, opt=opt, max=mx)
        for name, shape in static.items():
            profile.add(name, min=shape, opt=shape, max=shape)
        profiles.append(profile)
    pools = {trt.MemoryPoolType.WORKSPACE: int(options.workspace_mib) << 20} if options.workspace_mib else None
    with _polygraphy_logging():
        with _polygraphy_errors(f"TensorRT could not parse {onnx_path.name}"):
            builder, network, parser = network_from_onnx_path(str(onnx_path), strongly_typed=True)
        with _polygraphy_errors("TensorRT rejected the builder configuration"):
            config = create_config(
                builder, network, profiles=profiles, builder_optimization_level=int(options.optimization_level),
                tf32=options.precision != "fp32",  # fp32 means fp32: no TF32 tensor-core rounding
                memory_pool_limits=pools,
            )
        warm = _attach_timing_cache(config, timing_cache)
        t0 = time.perf_counter()
        with _polygraphy_errors(f"TensorRT failed to build an engine from {onnx_path.name}"):
            serialized = engine_bytes_from_network((builder, network, parser), config=config)
        seconds = time.perf_counter() - t0
    if timing_cache is not None:
        _save_timing_cache(config, timing_cache)
    facts = {
        "build_seconds": round(seconds, 2),
        "timing_cache": None if timing_cache is None else str(timing_cache),
        "timing_cache_was_warm": warm,
    }
    return bytes(serialized), facts


# --- validation ----------------------------------------------------------------------------
def _backend_runner(backend: Any, inputs: list[dict[str, Any]], name: str):
    """A polygraphy runner over a cmrt backend, so that polygraphy's Comparator drives the engine
    exactly as it is served (pinned staging, one upload, one context and CUDA graph per batch size)."""
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    class BackendRunner(BaseRunner):
        def activate_impl(self):
            pass

        def get_input_metadata_impl(self):
            meta = TensorMetadata()
            for t in inputs:
                dims = list(t["shape"])
                meta.add(t["name"], dtype=np.dtype(t["dtype"]), shape=[None, *dims[1:]] if dims[:1] == ["batch"] else dims)
            return meta

        def infer_impl(self, feed_dict):
            t0 = time.perf_counter()
            out = backend.step_outputs(feed_dict)
            self.inference_time = time.perf_counter() - t0
            return out

        def deactivate_impl(self):
            pass

    return BackendRunner(name=name)


def validate_plan(
    plan_path: Path,
    folder: Path,
    data: dict[str, Any],
    batches: Profile,
    precision: str,
    tolerance: float,
) -> dict[str, Any]:
    """Run the engine (the TensorRT backend, as served) against ONNX Runtime fp32 on the step graph.

    At every profile's min, opt and max batch (`validation_batches`), on both steps of a 2-step
    schedule (`cmrt.build.step_graph.validation_cases`: samples at each step's sigma, the
    step's constants, a renoising term), polygraphy's Comparator runs both on the same inputs
    and compares both outputs, `x_next` and the UNet output, with `SimpleCompareFunc` on the
    max abs error; NaN/Inf in the engine's output fails first (Comparator.validate), an error
    over `tolerance` next."""
    _polygraphy()
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator, SimpleCompareFunc

    from ..runtime.backends.tensorrt_backend import TensorRTBackend
    from .step_graph import validation_cases

    ref_precision = "fp32" if step_record(data, "fp32") else precision
    if ref_precision != "fp32":
        logger.warning("the folder has no fp32 step graph: validating the TensorRT engine against %s ONNX Runtime", ref_precision)
    ref_path = folder / step_record(data, ref_precision)["file"]
    step = step_record(data, precision)
    io = {"inputs": step["inputs"], "outputs": step["outputs"]}
    profiles = optimization_profiles(batches)
    sizes = validation_batches(profiles)
    cases = [(f"batch {b}, step {i}", b, feeds) for i, b, _, feeds in validation_cases(data["unet"], data["scheduler"], sizes)]
    candidate = TensorRTBackend(plan_path, io, profiles)
    runners = [
        OnnxrtRunner(SessionFromOnnx(str(ref_path), providers=["cpu"]), name="onnxruntime"),
        _backend_runner(candidate, io["inputs"], name="tensorrt"),
    ]
    try:
        with _polygraphy_logging(), _polygraphy_errors(f"could not run {plan_path.name} against ONNX Runtime"):
            results = Comparator.run(runners, data_loader=[feeds for _, _, feeds in cases])
    finally:
        candidate.close()
    with _polygraphy_logging():
        compared = Comparator.compare_accuracy(
            results, compare_func=SimpleCompareFunc(atol=tolerance, rtol=0.0, check_error_stat="max")
        )
    (pair,) = compared[0].values()  # one comparison: onnxruntime vs tensorrt, one entry per case
    per_case: dict[str, dict[str, Any]] = {}
    per_batch: dict[str, dict[str, Any]] = {}
    for (key, b, _), out, cmp in zip(cases, results["tensorrt"], pair):
        with _polygraphy_logging():
            finite = bool(Comparator.validate(_one_run("tensorrt", out), check_inf=True, check_nan=True))
        case = {"finite": finite}
        for name in (STEP_OUTPUT, OUTPUT):
            stats = cmp[name]
            case[f"{name}_max_abs_error"] = float(stats.max_absdiff) if finite else float("inf")
            case[f"{name}_mean_abs_error"] = float(stats.mean_absdiff) if finite else float("inf")
        per_case[key] = case
        worst_case = max(case[f"{n}_max_abs_error"] for n in (STEP_OUTPUT, OUTPUT))
        mean_case = max(case[f"{n}_mean_abs_error"] for n in (STEP_OUTPUT, OUTPUT))
        got = per_batch.setdefault(str(b), {"finite": True, "max_abs_error": 0.0, "mean_abs_error": 0.0})
        got["finite"] = got["finite"] and finite
        got["max_abs_error"] = max(got["max_abs_error"], worst_case)
        got["mean_abs_error"] = max(got["mean_abs_error"], mean_case)
    worst = max(v["max_abs_error"] for v in per_batch.values())
    result = {
        "reference": f"onnxruntime {ref_precision} step graph ({ref_path.name}), CPUExecutionProvider",
        "metric": f"max abs error of {STEP_OUTPUT} and of the UNet output ({OUTPUT})",
        "comparator": "polygraphy Comparator, SimpleCompareFunc(check_error_stat='max')",
        "inputs": "both steps of num_inference_steps=2 (samples at each step's sigma, its constants, a renoising term)",
        "batch_sizes": sizes,
        "tolerance": float(tolerance),
        "max_abs_error": worst,
        "mean_abs_error": max(v["mean_abs_error"] for v in per_batch.values()),
        "per_batch": per_batch,
        "per_case": per_case,
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
                plan_path.name, ref_precision, worst, tolerance, sizes)
    return result


def _one_run(name: str, iteration: Any):
    from polygraphy.comparator import RunResults

    run = RunResults()
    run.append((name, [iteration]))
    return run


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
    from ..engine.manifest import file_record, read_manifest, seed_verified, write_manifest

    folder = Path(folder)
    options = options or TensorRTOptions()
    manifest = read_manifest(folder, verify=True)
    platform = current_platform(device_index)
    blocker = rebuild_blocker(manifest.data, options.precision)
    batches = profile_for(manifest.build_options, options)
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
        blocker = rebuild_blocker(data, options.precision)
        if blocker:
            raise EngineFolderError(f"{folder}: cannot build a TensorRT engine: {blocker}")
        step = step_record(data, options.precision)  # what the engine is built from: the step graph
        timing_cache = None
        if options.use_timing_cache:
            timing_cache = Path(options.timing_cache) if options.timing_cache else default_timing_cache(platform)
        with tempfile.TemporaryDirectory(prefix=".sanitized-", dir=folder) as tmp:
            graph, sanitized = sanitize_onnx(folder / step["file"], Path(tmp))
            plan_bytes, facts = build_plan(graph, step["inputs"], batches, options, timing_cache)
        name = engine_file_name(options.precision, platform.tensorrt_version, platform.compute_capability, batches,
                                optimization_level=options.optimization_level)
        tmp_plan = folder / f".{name}.validating"
        write_bytes_atomic(tmp_plan, plan_bytes)
        try:
            validation = validate_plan(tmp_plan, folder, data, batches, options.precision, options.effective_tolerance)
            os.replace(tmp_plan, folder / name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp_plan.unlink()
        new_entry = engine_entry(name, options, batches, platform, step["file"], digest, validation, facts, io=step)
        new_entry["options"]["onnx_sanitized"] = sanitized  # what TensorRT parsed: the folder's graph, constants folded
        new_data = dict(data)
        files = dict(data["files"])
        old_file = entry.get("file") if isinstance(entry, dict) else None
        if old_file and old_file != name:
            files.pop(old_file, None)
        files[name] = file_record(folder, name)
        new_data["files"] = files
        new_data[ENTRY_KEY] = new_entry
        write_manifest(folder, new_data)
        seed_verified(read_manifest(folder, verify=False))  # the record keeps the files verified above
        if old_file and old_file != name:
            with contextlib.suppress(FileNotFoundError):
                (folder / old_file).unlink()
        logger.info("TensorRT engine %s built in %.1f s and validated (max abs error %.3g, tolerance %g)",
                    name, facts["build_seconds"], validation["max_abs_error"], validation["tolerance"])
        return EngineResult(folder / name, new_entry, decision_now, built=True)

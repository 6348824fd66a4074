"""`cmrt build`: turn a checkpoint into a self-contained, verified engine folder.

A folder is reused when its manifest's build key (source fingerprint + options) matches;
anything else is rebuilt in a staging folder and swapped in atomically, so an interrupted
build never leaves a folder that loads. A build holds its target's lock
(`cmrt.engine.atomic.target_lock`) from the up-to-date check to the swap: concurrent builds
of one target wait for each other, and the later one reuses what the first built.
"""
from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

from .._version import __version__
from ..engine.atomic import staging_dir, target_lock
from ..engine.errors import BackendUnavailableError, EngineFolderError
from ..engine.manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME, file_record, read_manifest, seed_verified, write_manifest
from ..engine.models import ModelSource, resolve_model
from ..engine.options import BUILD_BACKENDS, BuildOptions
from ..engine.winograd import PER_CALL_CHOICES
from ..engine.paths import default_engine_dir

logger = logging.getLogger(__name__)

# Bump when the exported graph changes for the same source and options.
# 2: fp32 weights in a separate file, shared with the Winograd CPU graph; 3: its filters as inputs;
# 4: a step graph beside every graph, sharing its weight file (fp16 weights in a separate file too);
# 5: the Winograd graph's transformed filters stored in the folder; 6: F(2x2) tiles on maps below
# 32x32, channels folded into the batch for the input transform; 7: per-call filter transforms
# ordered after their convolution's input transform, convolutions with a large V in bands of rows
EXPORT_RECIPE = 7


def build_key(source_record: dict[str, Any], options: BuildOptions) -> str:
    blob = json.dumps(
        {"recipe": EXPORT_RECIPE, "format": FORMAT_VERSION, "source": source_record["fingerprint"], "options": options.to_dict()},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _tool_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"cmrt": __version__, "python": platform.python_version()}
    for dist in ("torch", "diffusers", "onnx", "onnxruntime", "onnxruntime-gpu"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return versions


def up_to_date(out: Path, key: str) -> bool:
    """True when `out` is a complete folder built with this key (sizes checked, hashes at load)."""
    if not (out / MANIFEST_NAME).is_file():
        return False
    try:
        manifest = read_manifest(out, verify=False)
    except EngineFolderError as e:
        logger.info("existing folder %s is not usable (%s); rebuilding", out, e)
        return False
    return manifest.data.get("build_key") == key


def build_engine_folder(
    model: str,
    out: str | Path | None = None,
    options: BuildOptions | None = None,
    force: bool = False,
    revision: str | None = None,
    backend: str = "onnxruntime",
    tensorrt: Any = None,
) -> Path:
    """Build (or reuse) the engine folder for `model` and return its path.

    `backend`: "onnxruntime" builds the ONNX folder only; "tensorrt" also builds (or reuses)
    a validated TensorRT engine in it, and fails at once where TensorRT cannot run; "auto"
    does the TensorRT step where a GPU and TensorRT are present, else says so in one log line
    and leaves the ONNX folder that ONNX Runtime serves. `tensorrt`: a
    `cmrt.engine.tensorrt.TensorRTOptions` (profile opt/max, optimization level, timing cache, tolerance).
    The TensorRT step never changes the folder's build key.
    """
    if backend not in BUILD_BACKENDS:
        raise ValueError(f"backend must be one of {BUILD_BACKENDS}, got {backend!r}")
    trt_missing = None
    if backend != "onnxruntime":
        from ..engine.tensorrt import TensorRTOptions
        from ..runtime.backends.probe import probe_environment

        tensorrt = tensorrt or TensorRTOptions()
        trt_missing = probe_environment().tensorrt_missing_reason
        if trt_missing and backend == "tensorrt":  # fail before the (long) export
            raise BackendUnavailableError(
                f"--backend tensorrt: TensorRT cannot run here: {trt_missing}. Use --backend auto or onnxruntime "
                "to build the ONNX folder that ONNX Runtime serves"
            )
        if tensorrt.precision not in (options or BuildOptions()).precisions:
            no_onnx = f"the TensorRT engine is built from the {tensorrt.precision} ONNX graph, which --precision leaves out"
            if backend == "tensorrt":
                raise ValueError(f"--backend tensorrt: {no_onnx}; add {tensorrt.precision} to --precision")
            trt_missing = trt_missing or no_onnx
    out = _build_onnx_folder(model, out=out, options=options, force=force, revision=revision)
    if backend == "onnxruntime":
        return out
    if trt_missing:
        logger.info("no TensorRT engine built (%s): %s holds the ONNX models that ONNX Runtime serves", trt_missing, out)
        return out
    from ..engine.tensorrt import rebuild_blocker
    from .tensorrt import ensure_tensorrt_engine

    blocker = rebuild_blocker(read_manifest(out, verify=False).data, tensorrt.precision)
    if blocker:
        if backend == "tensorrt":
            raise EngineFolderError(f"--backend tensorrt: cannot build a TensorRT engine in {out}: {blocker}")
        logger.info("no TensorRT engine built (%s): %s holds the ONNX models that ONNX Runtime serves", blocker, out)
        return out
    ensure_tensorrt_engine(out, tensorrt, force=force)
    return out


def _build_onnx_folder(
    model: str,
    out: str | Path | None = None,
    options: BuildOptions | None = None,
    force: bool = False,
    revision: str | None = None,
) -> Path:
    """Build (or reuse) the ONNX engine folder for `model` and return its path."""
    from .checkpoints import model_folder

    options = options or BuildOptions()
    source = resolve_model(model, revision=revision)
    out = Path(out) if out is not None else default_engine_dir(source.slug)
    _, record = model_folder(source)
    key = build_key(record, options)
    with target_lock(out):  # a concurrent build of `out` finishes first; this one may then reuse it
        if not force and up_to_date(out, key):
            logger.info("engine folder %s is up to date; reusing it", out)
            return out
        _export_folder(source, out, options, key)
    return out


def _measure_cpu_batching(stage: Path, entry: dict, unet: dict, scheduler: dict, options: BuildOptions) -> None:
    """The batch per ONNX Runtime CPU call (cmrt/build/cpu_batching.py) of each fp32 graph the CPU may
    run, as its record's `batching`: the plain graph, and the Winograd graph where the build kept it."""
    from ..engine.winograd_filters import mapped_filters
    from .cpu_batching import measure_batching

    entry["batching"] = measure_batching(stage / entry["file"], None, unet, scheduler, options.opt_batch, options.max_batch)
    wino = entry.get("winograd")
    if wino and wino["used"]:
        wino["batching"] = measure_batching(stage / wino["file"], mapped_filters(stage, wino), unet, scheduler,
                                            options.opt_batch, options.max_batch)


def _export_folder(source: ModelSource, out: Path, options: BuildOptions, key: str) -> None:
    """Export, validate and write the folder of `source` in a staging folder swapped in at `out`."""
    from tqdm.auto import tqdm

    from .checkpoints import load_model
    from .cpu_graph import add_winograd_graph
    from .onnx_export import export_onnx, unet_record, validate_onnx
    from .step_graph import add_step_graph, add_winograd_step_graph

    t0 = time.perf_counter()
    stages = ["load"] + [f"{s} {p}" for p in options.precisions for s in ("export", "validate", "step graph")] + ["manifest"]
    if "fp32" in options.precisions and options.winograd != "never":
        stages.append("winograd fp32")
    if "fp32" in options.precisions:
        stages.append("batching fp32")
    with tqdm(total=len(stages), desc=f"cmrt build {source.name}", unit="stage") as bar, staging_dir(out) as stage:
        bar.set_postfix_str("load")
        loaded = load_model(source)
        unet = loaded.unet
        bar.update()
        onnx_entries: dict[str, Any] = {}
        files: list[str] = []
        cpu_variant = "fp32" in options.precisions and options.winograd != "never"
        unet_facts = unet_record(unet)
        for precision in options.precisions:
            bar.set_postfix_str(f"export {precision}")
            # weights in their own file: the step graph (and the Winograd graph) share it
            entry = export_onnx(
                unet, stage / f"unet.{precision}.onnx", precision, loaded.scheduler_config, opset=options.opset,
                separate_weights=True,
            )
            bar.update()
            bar.set_postfix_str(f"validate {precision}")
            entry["validation"] = validate_onnx(unet, stage / entry["file"], precision, loaded.scheduler_config)
            bar.update()
            files += entry.pop("files")
            bar.set_postfix_str(f"step graph {precision}")
            entry["step"] = add_step_graph(stage, entry["file"], unet_facts, loaded.scheduler_config)
            files.append(entry["step"]["file"])
            bar.update()
            if cpu_variant and precision == "fp32":
                bar.set_postfix_str("winograd fp32")
                wino = entry["winograd"] = add_winograd_graph(stage, entry, unet, options.winograd, loaded.scheduler_config,
                                                              (options.winograd_min_size, options.winograd_f4_min_size),
                                                              PER_CALL_CHOICES[options.winograd_per_call], options.winograd_band_mib)
                if wino["used"]:
                    wino["step"] = add_winograd_step_graph(stage, wino, unet_facts, loaded.scheduler_config)
                    files += [wino["file"], wino["filters_file"], wino["step"]["file"]]
                bar.update()
            if precision == "fp32":
                bar.set_postfix_str("batching fp32")
                _measure_cpu_batching(stage, entry, unet_facts, loaded.scheduler_config, options)
                bar.update()
            onnx_entries[precision] = entry
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "build_key": key,
            "created_unix": int(time.time()),
            "source": loaded.source,
            "unet": unet_facts,
            "scheduler": loaded.scheduler_config,
            "build_options": options.to_dict(),
            "onnx": onnx_entries,
            "tools": _tool_versions(),
            "files": {name: file_record(stage, name) for name in files},
        }
        write_manifest(stage, manifest)
        bar.update()
    # the files were hashed for the manifest just now: the first load need not read them again
    seed_verified(read_manifest(out, verify=False))
    logger.info("built %s in %.1f s", out, time.perf_counter() - t0)

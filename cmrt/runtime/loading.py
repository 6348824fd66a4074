"""`cmrt.load`: an engine folder (or a model name whose folder exists or can be built) to a Pipeline.

This is the run time's only door into build time, and it is lazy: `_build` imports
`cmrt.build` when a model name has no engine folder yet, or when the folder's TensorRT
engine must be (re)built for this GPU. Loading a built folder never imports it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from ..engine.errors import BackendUnavailableError
from ..engine.io_spec import PRECISIONS
from ..engine.manifest import MANIFEST_NAME, Manifest, read_manifest, start_verification
from ..engine.models import is_diffusers_folder, resolve_model
from ..engine.paths import default_engine_dir
from ..engine.tensorrt import TensorRTOptions
from .backends.probe import Environment, probe_environment
from .backends.selection import BACKENDS, DEVICES, Selection, select_backend
from .pipeline import Pipeline

logger = logging.getLogger(__name__)


def _build(what: str, *args, **kwargs):
    """The door into build time: `cmrt.build.folder.build_engine_folder` or
    `cmrt.build.tensorrt.ensure_tensorrt_engine`, imported on first use."""
    try:
        if what == "folder":
            from ..build.folder import build_engine_folder as fn
        else:
            from ..build.tensorrt import ensure_tensorrt_engine as fn
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            f"building needs the export extra (`pip install 'cmrt[export]'`): {e}; or build the engine folder "
            "elsewhere with `cmrt build` and copy it here"
        ) from e
    return fn(*args, **kwargs)


def find_engine_folder(model_or_dir: str | os.PathLike) -> Path:
    """An engine folder as given, or the default folder of a model name, built if it does not exist."""
    path = Path(model_or_dir).expanduser()
    if (path / MANIFEST_NAME).is_file():
        return path
    if path.is_dir() and not is_diffusers_folder(path):
        raise ValueError(f"{path} is neither an engine folder (no {MANIFEST_NAME}) nor a diffusers model folder")
    source = resolve_model(os.fspath(model_or_dir))  # raises ValueError for unknown names
    folder = default_engine_dir(source.slug)
    if (folder / MANIFEST_NAME).is_file():
        return folder
    logger.info("no engine folder for %s yet; building %s", model_or_dir, folder)
    return _build("folder", os.fspath(model_or_dir), out=folder)


def choose_precision(manifest: Manifest, device: str, precision: str | None) -> str:
    if precision is not None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        return precision
    # fp16 graphs only pay off where the hardware has fast fp16 (a GPU); on a CPU they are slower.
    if device == "cuda" and "fp16" in manifest.precisions:
        return "fp16"
    return "fp32" if "fp32" in manifest.precisions else manifest.precisions[0]


def load(
    model_or_engine_dir: str | os.PathLike,
    backend: str = "auto",
    device: str = "auto",
    precision: str | None = None,
    threads: int | None = None,
    verify: bool = True,
    use_cuda_graph: bool = True,
    winograd: bool | None = None,
) -> Pipeline:
    """Open an engine folder (checksums verified) and return a ready Pipeline.

    `backend`: "auto" (TensorRT where a GPU and TensorRT are present and the folder's engine
    is current or can be built from its ONNX; else ONNX Runtime on CUDA, else on the CPU),
    "onnxruntime", "tensorrt" (an error where it cannot run) or "openvino" (CPU; `precision`
    "fp32" or, opt-in and approximate, "bf16"). `cmrt doctor` shows what "auto" picks on this
    machine and why. `use_cuda_graph` applies to the GPU backends. `winograd` applies to ONNX
    Runtime on the CPU: None runs the Winograd graph where the build measured it faster,
    False the plain graph, True the Winograd graph or an error.

    `model_or_engine_dir` is an engine folder written by `cmrt build`, or a model name / hub
    id / diffusers folder, whose default engine folder (`$CMRT_ENGINE_DIR`, default
    ./engines) is used or built.

    The folder's files are hashed on background threads while the backend opens, and joined
    before this returns: a file that does not match its checksum raises EngineFolderError here,
    before any image. The returned Pipeline's `load_seconds` says where the load went
    (manifest, backend import, weights, session, the wait for the verification, and the
    verification's own wall time).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if not isinstance(model_or_engine_dir, (str, os.PathLike)):
        raise TypeError(f"model_or_engine_dir must be a path or model name, got {type(model_or_engine_dir).__name__}")
    t0 = time.perf_counter()
    folder = find_engine_folder(model_or_engine_dir)
    manifest = read_manifest(folder, verify=False)  # presence and sizes; the hashes run beside the backend's opening
    verification = start_verification(manifest) if verify else None
    times = {"manifest": time.perf_counter() - t0}
    try:
        manifest, engine = open_backend(manifest, backend, device, precision, threads, use_cuda_graph, winograd, times)
    finally:
        t1 = time.perf_counter()
        if verification is not None:
            verification.join()  # raises for a file that does not match, before any image
    finish = getattr(engine, "check_cache", None)  # ONNX Runtime CPU: join its graph cache's check too
    if finish is not None:
        finish()
    times["verification_wait"] = time.perf_counter() - t1
    times["verification"] = verification.seconds if verification is not None else 0.0
    times["total"] = time.perf_counter() - t0
    pipe = Pipeline(manifest, engine)
    pipe.load_seconds = times
    logger.info("loaded %s in %.2f s (%s)", folder, times["total"], ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))
    return pipe


def graph_id(manifest: Manifest, path: Path) -> str:
    """A digest of the files an fp32 CPU graph reads (itself and the fp32 weight file), from the
    manifest's checksums: what ONNX Runtime's optimized-graph cache is keyed by."""
    names = sorted({path.name, manifest.data["onnx"].get("fp32", {}).get("external_data")} - {None})
    records = {n: manifest.files[n]["sha256"] for n in names if n in manifest.files}
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()


def open_backend(
    manifest: Manifest,
    backend: str = "auto",
    device: str = "auto",
    precision: str | None = None,
    threads: int | None = None,
    use_cuda_graph: bool = True,
    winograd: bool | None = None,
    times: dict[str, float] | None = None,
):
    """Select (see `backends.selection`) and construct the backend; returns (manifest, backend).

    The manifest is returned too because a TensorRT engine built or rebuilt here rewrites it.
    `times`, when given, receives the seconds of the ONNX Runtime CPU path's parts: the backend
    import, the Winograd filters ("weights": mapped from the folder, or computed for a folder
    built before they were stored) and the session.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if backend != "openvino" and precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    trt_options = TensorRTOptions(precision=precision) if backend != "openvino" and precision else None
    # device='cpu' never needs the (slower) machine probe, except to find OpenVINO
    env = probe_environment() if device != "cpu" or backend == "openvino" else Environment()
    sel = select_backend(env, backend, device, manifest.data, trt_options)
    if sel.fallback:
        logger.warning("%s; using ONNX Runtime on %s", sel.fallback, sel.device.upper() if sel.device == "cpu" else "CUDA")
    logger.info("backend %s on %s: %s", sel.backend, sel.device, sel.reason)
    if sel.backend == "openvino":
        return manifest, _open_openvino(manifest, precision, threads)
    if sel.backend == "tensorrt":
        try:
            return _open_tensorrt(manifest, sel, trt_options, use_cuda_graph)
        except Exception as e:
            if backend == "tensorrt":
                raise
            logger.warning("TensorRT could not be used (%s); falling back to ONNX Runtime", e)
            sel = select_backend(env, "onnxruntime", device, manifest.data)
    prec = choose_precision(manifest, sel.device, precision)
    if sel.device == "cuda":
        from .backends.ort_cuda_backend import OrtCudaBackend

        engine = OrtCudaBackend(
            manifest.onnx_path(prec), use_cuda_graph=use_cuda_graph, min_batch=manifest.min_batch, max_batch=manifest.max_batch
        )
    else:
        times = {} if times is None else times
        t0 = time.perf_counter()
        from .backends.onnxruntime_backend import OnnxRuntimeBackend, import_onnxruntime

        import_onnxruntime()  # timed apart: the import is part of every cold start

        t1 = time.perf_counter()
        path, wino = manifest.cpu_graph(prec, winograd)
        extra = None
        if wino and wino.get("filters"):
            from ..engine.winograd import winograd_filters

            extra = winograd_filters(manifest.folder, wino)
        t2 = time.perf_counter()
        engine = OnnxRuntimeBackend(path, threads=threads, extra_inputs=extra, graph_id=graph_id(manifest, path))
        times.update(backend_import=t1 - t0, weights=t2 - t1, session=time.perf_counter() - t2)
    return manifest, engine


def _open_openvino(manifest: Manifest, precision: str | None, threads: int | None):
    """OpenVINO on the CPU, from the fp32 ONNX; precision 'fp32' (default) or 'bf16' (opt-in, approximate)."""
    from .backends.openvino_backend import OpenVINOBackend

    return OpenVINOBackend(manifest.onnx_path("fp32"), precision=precision or "fp32", threads=threads)


def _open_tensorrt(manifest: Manifest, sel: Selection, trt_options, use_cuda_graph: bool):
    from .backends.tensorrt_backend import TensorRTBackend

    if sel.engine_action in ("build", "rebuild"):
        logger.warning("%s: %s; building its TensorRT engine now (once; it is stored in the folder)", manifest.folder, sel.engine_reason)
        _build("tensorrt", manifest.folder, trt_options)
        manifest = read_manifest(manifest.folder, verify=True)
    entry = manifest.tensorrt
    if not entry:
        raise BackendUnavailableError(f"{manifest.folder} has no TensorRT engine; build one with `cmrt build ... --backend tensorrt`")
    prof = entry["profile"]
    engine = TensorRTBackend(
        manifest.folder / entry["file"],
        manifest.io_spec(entry["precision"]),
        profile=(prof["min"], prof["opt"], prof["max"]),
        use_cuda_graph=use_cuda_graph,
    )
    return manifest, engine


def generate(model_or_engine_dir: str | os.PathLike, backend: str = "auto", device: str = "auto", **kwargs):
    """One call: load (cached per process) and generate; kwargs go to `Pipeline.__call__`."""
    key = (os.fspath(model_or_engine_dir), backend, device)
    pipe = _PIPELINES.get(key)
    if pipe is None:
        pipe = _PIPELINES[key] = load(model_or_engine_dir, backend=backend, device=device)
    return pipe(**kwargs)


_PIPELINES: dict[tuple[str, str, str], Pipeline] = {}

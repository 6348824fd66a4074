"""`cmrt.load`: an engine folder (or a model name whose folder exists or can be built) to a Pipeline.

This is the run time's only door into build time, and it is lazy: `_build` imports
`cmrt.build` when a model name has no engine folder yet, or when the folder's TensorRT
engine must be (re)built for this GPU. Loading a built folder never imports it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from ..engine.errors import BackendUnavailableError
from ..engine.io_spec import PRECISIONS
from ..engine.manifest import MANIFEST_NAME, Manifest, read_manifest
from ..engine.models import is_diffusers_folder, resolve_model
from ..engine.paths import default_engine_dir
from ..engine.step_graph import has_step_graph
from ..engine.step_graph import step_graph as step_graph_file
from ..engine.tensorrt import Profile, TensorRTOptions
from .backends.probe import Environment, probe_environment
from .backends.selection import BACKENDS, DEVICES, Selection, select_backend
from .pipeline import Pipeline, check_warmup

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


# Whether generation runs through the folder's step graph when `step_graph=None`, per (backend,
# device) that can run one. ONNX Runtime on the CPU: the numpy loop; the step graph measured
# neither faster nor slower there (`python -m benchmarks.host_overhead ENGINE --step-graph-only`,
# docs/benchmarks.md), the host being the CPU either way. On a GPU the step graph: the steps
# stay on the device, with one host synchronize per generation instead of one per step
# (TensorRT: one CUDA graph for every step; ONNX Runtime CUDA: device-resident buffers).
STEP_GRAPH_DEFAULTS = {("onnxruntime", "cpu"): False, ("tensorrt", "cuda"): True, ("onnxruntime", "cuda"): True}


def use_step_graph(backend: str, device: str, step_graph: bool | None) -> bool:
    """Resolve `step_graph` for the backend that runs; ValueError where it cannot run a step graph."""
    if step_graph not in (None, True, False):
        raise TypeError(f"step_graph must be None, True or False, got {step_graph!r}")
    key = (backend, device)
    if key not in STEP_GRAPH_DEFAULTS:
        if step_graph:
            able = ", ".join(f"{b} on {d}" for b, d in STEP_GRAPH_DEFAULTS)
            raise ValueError(f"step_graph=True: {backend} on {device} runs each step's arithmetic in numpy; "
                             f"the step graph runs on {able} (or load with step_graph=None)")
        return False
    return STEP_GRAPH_DEFAULTS[key] if step_graph is None else step_graph


def load(
    model_or_engine_dir: str | os.PathLike,
    backend: str = "auto",
    device: str = "auto",
    precision: str | None = None,
    threads: int | None = None,
    verify: bool = True,
    use_cuda_graph: bool = True,
    winograd: bool | None = None,
    step_graph: bool | None = None,
    warmup: Sequence[int] | None = None,
) -> Pipeline:
    """Open an engine folder (checksums verified) and return a ready Pipeline.

    `backend`: "auto" (TensorRT where a GPU and TensorRT are present and the folder's engine
    is current or can be built from its ONNX; else ONNX Runtime on CUDA, else on the CPU),
    "onnxruntime", "tensorrt" (an error where it cannot run) or "openvino" (CPU; `precision`
    "fp32" or, opt-in and approximate, "bf16"). `cmrt doctor` shows what "auto" picks on this
    machine and why. `use_cuda_graph` applies to the GPU backends. `winograd` applies to ONNX
    Runtime on the CPU: None runs the Winograd graph where the build measured it faster,
    False the plain graph, True the Winograd graph or an error. `step_graph`: True runs
    generation through the folder's step graph (each step's arithmetic inside the graph; on
    ONNX Runtime on the CPU, the step graph of the graph `winograd` picks), False the numpy
    loop, None the backend's default (`STEP_GRAPH_DEFAULTS`). `warmup`: batch sizes to warm
    up before returning, e.g. [1, 4] (`Pipeline.warmup`), so that no request pays for it.

    `model_or_engine_dir` is an engine folder written by `cmrt build`, or a model name / hub
    id / diffusers folder, whose default engine folder (`$CMRT_ENGINE_DIR`, default
    ./engines) is used or built.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if not isinstance(model_or_engine_dir, (str, os.PathLike)):
        raise TypeError(f"model_or_engine_dir must be a path or model name, got {type(model_or_engine_dir).__name__}")
    folder = find_engine_folder(model_or_engine_dir)
    manifest = read_manifest(folder, verify=verify)
    if warmup is not None:  # checked before the (slow) backend is opened
        warmup = check_warmup(warmup, manifest.min_batch, manifest.max_batch)
    manifest, engine = open_backend(manifest, backend, device, precision, threads, use_cuda_graph, winograd, step_graph)
    pipe = Pipeline(manifest, engine)
    if warmup is not None:
        pipe.warmup(warmup)
    return pipe


def open_backend(
    manifest: Manifest,
    backend: str = "auto",
    device: str = "auto",
    precision: str | None = None,
    threads: int | None = None,
    use_cuda_graph: bool = True,
    winograd: bool | None = None,
    step_graph: bool | None = None,
):
    """Select (see `backends.selection`) and construct the backend; returns (manifest, backend).

    The manifest is returned too because a TensorRT engine built or rebuilt here rewrites it.
    A GPU backend that was selected but cannot be constructed (an engine that fails to build,
    a CUDA EP that does not load) falls back to the next one, with one warning saying why,
    unless it was asked for by name (`backend='tensorrt'`) or the CPU was ruled out (`device='cuda'`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if backend != "openvino" and precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if step_graph not in (None, True, False):
        raise TypeError(f"step_graph must be None, True or False, got {step_graph!r}")
    trt_options = TensorRTOptions(precision=precision) if backend != "openvino" and precision else None
    # device='cpu' never needs the (slower) machine probe, except to find OpenVINO
    env = probe_environment() if device != "cpu" or backend == "openvino" else Environment()
    sel = select_backend(env, backend, device, manifest.data, trt_options)
    if sel.fallback:
        logger.warning("%s; using ONNX Runtime on %s", sel.fallback, sel.device.upper() if sel.device == "cpu" else "CUDA")
    logger.info("backend %s on %s: %s", sel.backend, sel.device, sel.reason)
    use_step_graph(sel.backend, sel.device, step_graph)  # a clear error before anything is opened
    if sel.backend == "openvino":
        return manifest, _open_openvino(manifest, precision, threads)
    if sel.backend == "tensorrt":
        try:
            return _open_tensorrt(manifest, sel, trt_options, use_cuda_graph, step_graph)
        except Exception as e:
            if backend == "tensorrt":
                raise
            sel = select_backend(env, "onnxruntime", device, manifest.data)
            logger.warning("TensorRT could not be used (%s); falling back to ONNX Runtime on %s", _first_line(e), sel.device.upper())
    if sel.device == "cuda":
        try:
            return manifest, _open_ort_cuda(manifest, precision, use_cuda_graph, step_graph)
        except Exception as e:
            if device == "cuda":  # the CPU was not an option
                raise
            logger.warning("the ONNX Runtime CUDA EP could not be used (%s); falling back to ONNX Runtime on the CPU", _first_line(e))
    from .backends.onnxruntime_backend import OnnxRuntimeBackend

    prec = choose_precision(manifest, "cpu", precision)
    if use_step_graph("onnxruntime", "cpu", step_graph):
        path, _, wino = step_graph_file(manifest, prec, winograd)
    else:
        path, wino = manifest.cpu_graph(prec, winograd)
    extra = None
    if wino and wino.get("filters"):
        from ..engine.winograd import filters_from_weight_file

        extra = filters_from_weight_file(manifest.folder, wino)
    engine = OnnxRuntimeBackend(path, threads=threads, extra_inputs=extra)
    return manifest, engine


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _open_ort_cuda(manifest: Manifest, precision: str | None, use_cuda_graph: bool, step_graph: bool | None = None):
    """ONNX Runtime's CUDA EP on the folder's step graph (its plain graph with `step_graph=False`, or
    by default on a folder built before step graphs, which is said in one log line)."""
    from .backends.ort_cuda_backend import OrtCudaBackend

    prec = choose_precision(manifest, "cuda", precision)
    steps_on_device = use_step_graph("onnxruntime", "cuda", step_graph)
    if steps_on_device and step_graph is None and not has_step_graph(manifest, prec):
        logger.info("%s has no step graph of its %s graph (built by an older cmrt): ONNX Runtime CUDA runs the numpy "
                    "loop, one synchronize per step; rebuild the folder with `cmrt build` for one per generation",
                    manifest.folder, prec)
        steps_on_device = False
    path = step_graph_file(manifest, prec)[0] if steps_on_device else manifest.onnx_path(prec)
    return OrtCudaBackend(path, use_cuda_graph=use_cuda_graph, min_batch=manifest.min_batch, max_batch=manifest.max_batch)


def _open_openvino(manifest: Manifest, precision: str | None, threads: int | None):
    """OpenVINO on the CPU, from the fp32 ONNX; precision 'fp32' (default) or 'bf16' (opt-in, approximate)."""
    from .backends.openvino_backend import OpenVINOBackend

    return OpenVINOBackend(manifest.onnx_path("fp32"), precision=precision or "fp32", threads=threads)


def _open_tensorrt(manifest: Manifest, sel: Selection, trt_options, use_cuda_graph: bool, step_graph: bool | None = None):
    """The folder's TensorRT engine (built from its step graph), built or rebuilt first where the
    selection says so. `step_graph=False` drives it step by step from the numpy loop (`run()`)."""
    from .backends.tensorrt_backend import TensorRTBackend

    steps_on_device = use_step_graph("tensorrt", "cuda", step_graph)
    if sel.engine_action in ("build", "rebuild"):
        logger.warning("%s: %s; building its TensorRT engine now (once; it is stored in the folder)", manifest.folder, sel.engine_reason)
        _build("tensorrt", manifest.folder, trt_options)
        manifest = read_manifest(manifest.folder, verify=True)
    entry = manifest.tensorrt
    if not entry:
        raise BackendUnavailableError(f"{manifest.folder} has no TensorRT engine; build one with `cmrt build ... --backend tensorrt`")
    engine = TensorRTBackend(
        manifest.folder / entry["file"],
        entry["io"],
        [Profile(**p) for p in entry["profiles"]],
        use_cuda_graph=use_cuda_graph,
        step_graph=steps_on_device,
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

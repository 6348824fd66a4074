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
import threading
import time
from pathlib import Path
from typing import Sequence

from ..engine.errors import BackendUnavailableError, EngineFolderError
from ..engine.io_spec import PRECISIONS
from ..engine.manifest import MANIFEST_NAME, Manifest, read_manifest, start_verification
from ..engine.models import DEFAULT_MODEL, is_diffusers_folder, looks_like_path, resolve_model
from ..engine.paths import default_engine_dir, engine_root
from ..engine.step_graph import has_step_graph, step_graph as step_graph_file
from ..engine.tensorrt import Profile, TensorRTOptions
from .backends.onnxruntime_backend import check_batch_chunk
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


# What `cmrt.load` may build when its engine folder is missing: the built-in models, the
# openai checkpoints and local diffusers folders. Any other hub id is built with `cmrt build`,
# never as a side effect of loading a name.
BUILT_ON_LOAD = ("builtin", "openai", "local")


def find_engine_folder(model_or_dir: str | os.PathLike) -> Path:
    """An engine folder as given, or the default folder of a model name, built if it does not exist.

    Never a download for what looks like a path (`cmrt.engine.models.looks_like_path`): a
    missing folder is an error. Only the built-in models, the nine openai checkpoints and a
    local diffusers folder are built on load; the folder of another hub id must exist
    (`cmrt build ID`).
    """
    text = os.fspath(model_or_dir)
    path = Path(text).expanduser()
    if (path / MANIFEST_NAME).is_file():
        return path
    if path.exists() and not (path.is_dir() and is_diffusers_folder(path)):
        raise EngineFolderError(f"{path} is neither an engine folder (no {MANIFEST_NAME}) nor a diffusers model folder")
    if not path.exists() and looks_like_path(text, (engine_root(),)):
        raise EngineFolderError(
            f"engine folder {text} does not exist (a path, so it is not looked up on the hub); build it with "
            f"`cmrt build MODEL --out {text}`, or pass a model name such as {DEFAULT_MODEL!r}"
        )
    source = resolve_model(text)  # raises ValueError for unknown names
    folder = default_engine_dir(source.slug)
    if (folder / MANIFEST_NAME).is_file():
        return folder
    if source.kind not in BUILT_ON_LOAD:
        raise ValueError(
            f"no engine folder for the hub model {text!r} at {folder}; cmrt.load downloads only the built-in models "
            f"and the openai checkpoints. Build it with `cmrt build {text}` (this downloads what is published under "
            "that name), then load it by the same name or folder"
        )
    logger.info("no engine folder for %s yet; building %s", model_or_dir, folder)
    return _build("folder", text, out=folder)


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
    batch_chunk: int | None | str = "auto",
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
    `batch_chunk` applies to ONNX Runtime on the CPU: the most images per UNet call, a larger batch
    running as consecutive calls; "auto" takes what the build measured on its graph (on a large
    model, 1: batching buys no speed on a CPU and multiplies the activations' memory), None one call
    for the whole batch, an integer that many at most.

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
    if warmup is not None:  # checked before the (slow) backend is opened
        warmup = check_warmup(warmup, manifest.min_batch, manifest.max_batch)
    batch_chunk = check_batch_chunk_option(batch_chunk)
    verification = start_verification(manifest) if verify else None
    times = {"manifest": time.perf_counter() - t0}
    try:
        manifest, engine = open_backend(manifest, backend, device, precision, threads, use_cuda_graph, winograd, step_graph,
                                        times, batch_chunk)
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
    if warmup is not None:
        pipe.warmup(warmup)
    return pipe


def check_batch_chunk_option(batch_chunk) -> int | None | str:
    """`load`'s `batch_chunk`: "auto", None or an integer >= 1."""
    if isinstance(batch_chunk, str) and batch_chunk == "auto":
        return batch_chunk
    return check_batch_chunk(batch_chunk)


def graph_id(manifest: Manifest, path: Path) -> str:
    """A digest of which file is the graph and of the files it reads (itself and the weight
    files), from the manifest's checksums: what ONNX Runtime's optimized-graph cache is keyed by.

    The graph's name is part of it, and a file the manifest does not list counts as such (None),
    so two different graphs never share an id: a manifest that names another file as its graph
    cannot open the cached graph of a legitimate one.
    """
    names = {path.name} | {manifest.onnx_entry(p).get("external_data") for p in manifest.precisions}
    files = manifest.files
    digests = {n: files[n]["sha256"] if n in files else None for n in sorted(names - {None})}
    return hashlib.sha256(json.dumps({"graph": path.name, "files": digests}, sort_keys=True).encode()).hexdigest()


def open_backend(
    manifest: Manifest,
    backend: str = "auto",
    device: str = "auto",
    precision: str | None = None,
    threads: int | None = None,
    use_cuda_graph: bool = True,
    winograd: bool | None = None,
    step_graph: bool | None = None,
    times: dict[str, float] | None = None,
    batch_chunk: int | None | str = "auto",
):
    """Select (see `backends.selection`) and construct the backend; returns (manifest, backend).

    The manifest is returned too because a TensorRT engine built or rebuilt here rewrites it.
    A GPU backend that was selected but cannot be constructed (an engine that fails to build,
    a CUDA EP that does not load) falls back to the next one, with one warning saying why,
    unless it was asked for by name (`backend='tensorrt'`) or the CPU was ruled out (`device='cuda'`).
    `times`, when given, receives the seconds of the ONNX Runtime CPU path's parts: the backend
    import, the Winograd filters ("weights": mapped from the folder, or computed for a folder
    built before they were stored) and the session. `batch_chunk`: as `load`'s.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if backend != "openvino" and precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if step_graph not in (None, True, False):
        raise TypeError(f"step_graph must be None, True or False, got {step_graph!r}")
    batch_chunk = check_batch_chunk_option(batch_chunk)
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
    from .backends.onnxruntime_backend import OnnxRuntimeBackend, import_onnxruntime

    prec = choose_precision(manifest, "cpu", precision)
    if use_step_graph("onnxruntime", "cpu", step_graph):
        path, record, wino = step_graph_file(manifest, prec, winograd)
        spec = {"inputs": record["inputs"], "outputs": record["outputs"]}
    else:
        path, wino = manifest.cpu_graph(prec, winograd)
        spec = manifest.io_spec(prec)
    times = {} if times is None else times
    t0 = time.perf_counter()
    import_onnxruntime()  # timed apart: the import is part of every cold start
    t1 = time.perf_counter()
    extra = None
    if wino and wino.get("filters"):
        from ..engine.winograd_filters import winograd_filters

        extra = winograd_filters(manifest.folder, wino)
    t2 = time.perf_counter()
    try:
        chunk = manifest.batch_chunk(path) if batch_chunk == "auto" else batch_chunk
        engine = OnnxRuntimeBackend(path, threads=threads, extra_inputs=extra, graph_id=graph_id(manifest, path),
                                    batch_chunk=chunk)
    except Exception as e:
        if type(e).__module__.partition(".")[0] != "onnxruntime":
            raise
        # the file passed its checksum, so the folder holds something other than what its manifest says
        message = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise EngineFolderError(
            f"ONNX Runtime cannot open {path} ({message}): the engine folder does not hold what its manifest "
            "describes; rebuild the folder with `cmrt build`"
        ) from e
    times.update(backend_import=t1 - t0, weights=t2 - t1, session=time.perf_counter() - t2)
    _check_graph_io(spec, path, engine.session, extra)
    return manifest, engine


def _check_graph_io(spec: dict, path: Path, session, extra) -> None:
    """The graph ONNX Runtime opened takes the inputs and gives the outputs its manifest records
    (names, and every dimension but the batch), so that a mismatch is found here, not mid-call."""

    def shapes(tensors, skip=()):
        return {t.name: [d if isinstance(d, int) else "batch" for d in t.shape] for t in tensors if t.name not in skip}

    want = {t["name"]: t["shape"] for t in spec["inputs"] + spec["outputs"]}
    got = {**shapes(session.get_inputs(), skip=set(extra or {})), **shapes(session.get_outputs())}
    if got != want:
        raise EngineFolderError(
            f"{path} takes and gives {got}, its manifest says {want}: the engine folder does not hold what its "
            "manifest describes; rebuild the folder with `cmrt build`"
        )


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
        # the options the selection judged the folder's engine by (folder_engine_decision): a rebuild keeps its precision
        _build("tensorrt", manifest.folder, trt_options or TensorRTOptions(precision=(manifest.tensorrt or {}).get("precision", "fp16")))
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
    """One call: load (cached per process) and generate; kwargs go to `Pipeline.__call__`.

    Safe to call from many threads: a cache entry is loaded once, by the first caller,
    while the others wait for it (entries of different models load side by side).
    """
    key = (os.fspath(model_or_engine_dir), backend, device)
    pipe = _PIPELINES.get(key)
    if pipe is None:
        with _PIPELINES_GUARD:
            key_lock = _LOADING.setdefault(key, threading.Lock())
        with key_lock:
            pipe = _PIPELINES.get(key)
            if pipe is None:  # the first caller; a failed load leaves no entry, so the next caller tries again
                pipe = _PIPELINES[key] = load(model_or_engine_dir, backend=backend, device=device)
    return pipe(**kwargs)


_PIPELINES: dict[tuple[str, str, str], Pipeline] = {}
_LOADING: dict[tuple[str, str, str], threading.Lock] = {}  # one lock per cache entry, held while it loads
_PIPELINES_GUARD = threading.Lock()  # guards _LOADING

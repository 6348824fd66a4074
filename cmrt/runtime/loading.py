"""`cmrt.load`: an engine folder (or a model name whose folder exists or can be built) to a Pipeline."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ..engine.manifest import MANIFEST_NAME, Manifest, read_manifest
from .backends.onnxruntime_backend import OnnxRuntimeBackend, available_providers
from .pipeline import Pipeline

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime")
DEVICES = ("auto", "cpu", "cuda")


def engine_root() -> Path:
    return Path(os.environ.get("CMRT_ENGINE_DIR", "engines"))


def find_engine_folder(model_or_dir: str | os.PathLike) -> Path:
    """An engine folder as given, or the default folder of a model name, built if it does not exist."""
    path = Path(model_or_dir).expanduser()
    if (path / MANIFEST_NAME).is_file():
        return path
    from ..registry import is_diffusers_folder, resolve_model

    if path.is_dir() and not is_diffusers_folder(path):
        raise ValueError(f"{path} is neither an engine folder (no {MANIFEST_NAME}) nor a diffusers model folder")
    source = resolve_model(os.fspath(model_or_dir))  # raises ValueError for unknown names
    folder = engine_root() / source.slug
    if (folder / MANIFEST_NAME).is_file():
        return folder
    try:
        from ..engine.build import build_engine_folder
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            f"no engine folder for {model_or_dir!r} at {folder}, and building one needs the export extra "
            f"(`pip install 'cmrt[export]'`); or run `cmrt build {model_or_dir} --out {folder}` elsewhere and copy it"
        ) from e
    logger.info("no engine folder for %s yet; building %s", model_or_dir, folder)
    return build_engine_folder(os.fspath(model_or_dir), out=folder)


def resolve_device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        return "cuda" if "CUDAExecutionProvider" in available_providers() else "cpu"
    return device


def choose_precision(manifest: Manifest, device: str, precision: str | None) -> str:
    if precision is not None:
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
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
) -> Pipeline:
    """Open an engine folder (checksums verified) and return a ready Pipeline.

    `model_or_engine_dir` is an engine folder written by `cmrt build`, or a model name / hub
    id / diffusers folder, whose default engine folder (`$CMRT_ENGINE_DIR`, default
    ./engines) is used or built.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(model_or_engine_dir, (str, os.PathLike)):
        raise TypeError(f"model_or_engine_dir must be a path or model name, got {type(model_or_engine_dir).__name__}")
    folder = find_engine_folder(model_or_engine_dir)
    manifest = read_manifest(folder, verify=verify)
    dev = resolve_device(device)
    prec = choose_precision(manifest, dev, precision)
    engine = OnnxRuntimeBackend(manifest.onnx_path(prec), device=dev, threads=threads)
    return Pipeline(manifest, engine)


def generate(model_or_engine_dir: str | os.PathLike, backend: str = "auto", device: str = "auto", **kwargs):
    """One call: load (cached per process) and generate; kwargs go to `Pipeline.__call__`."""
    key = (os.fspath(model_or_engine_dir), backend, device)
    pipe = _PIPELINES.get(key)
    if pipe is None:
        pipe = _PIPELINES[key] = load(model_or_engine_dir, backend=backend, device=device)
    return pipe(**kwargs)


_PIPELINES: dict[tuple[str, str, str], Pipeline] = {}

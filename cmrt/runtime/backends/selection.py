"""Which backend `auto` picks, and why: a pure function of machine facts, the request and
(optionally) an engine folder's manifest, for `cmrt.load` and `cmrt doctor` alike.

Order for `backend="auto"`: TensorRT (GPU + TensorRT + cuda-bindings, and an engine that is
current or can be (re)built from the folder's ONNX) > ONNX Runtime CUDA EP with CUDA graphs
(GPU + onnxruntime-gpu) > ONNX Runtime on the CPU. OpenVINO (CPU) runs only when asked for.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from ...engine.errors import BackendUnavailableError
from ...engine.tensorrt import (
    ENTRY_KEY,
    EngineDecision,
    TensorRTOptions,
    engine_decision,
    onnx_digest,
    profile_for,
    rebuild_blocker,
    wanted_settings,
)
from .probe import Environment

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Selection:
    """What will run: a backend on a device, the reason, and for TensorRT what happens to the engine."""

    backend: str  # "tensorrt" | "onnxruntime" | "openvino"
    device: str  # "cuda" | "cpu"
    reason: str
    engine_action: str | None = None  # tensorrt only: "reuse" | "build" | "rebuild" | None (no folder)
    engine_reason: str | None = None
    fallback: str | None = None  # set when a GPU backend here cannot run (the folder's engine, the CUDA EP): the one log line
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["notes"] = list(self.notes)
        return d


# --- the decision ---------------------------------------------------------------------
def folder_engine_decision(
    data: dict[str, Any], env: Environment, options: TensorRTOptions | None = None
) -> tuple[EngineDecision, str | None]:
    """(what happens to the folder's TensorRT engine on this machine, what blocks a (re)build or None)."""
    options = options or TensorRTOptions(precision=(data.get(ENTRY_KEY) or {}).get("precision", "fp16"))
    platform = env.platform()
    if platform is None:
        return EngineDecision("unavailable", str(env.tensorrt_missing_reason)), env.tensorrt_missing_reason
    try:
        profile = profile_for(data["build_options"], options)
    except ValueError as e:
        return EngineDecision("unavailable", str(e)), str(e)
    decision = engine_decision(
        data.get(ENTRY_KEY), platform, onnx_digest(data, options.precision), wanted_settings(profile, options)
    )
    blocker = rebuild_blocker(data, options.precision) if decision.needs_build else None
    return decision, blocker


def _describe_gpu(env: Environment) -> str:
    g = env.gpu
    return f"{g.name} (compute capability {g.cc})" if g else "no GPU"


def _entry_summary(entry: dict[str, Any]) -> str:
    try:
        return f"built for {entry['gpu']['name']} with TensorRT {entry['tensorrt_version']}"
    except (KeyError, TypeError):
        return "of unknown origin"


def select_backend(
    env: Environment,
    backend: str = "auto",
    device: str = "auto",
    data: dict[str, Any] | None = None,
    tensorrt_options: TensorRTOptions | None = None,
) -> Selection:
    """Pick the backend. `data` is an engine folder's manifest (optional). Pure; raises for impossible explicit requests.

    Raises ValueError for unknown names or contradictory requests, BackendUnavailableError
    when what was explicitly asked for cannot run here.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    entry = (data or {}).get(ENTRY_KEY)
    gpu = _describe_gpu(env)

    if backend == "openvino":
        if device == "cuda":
            raise ValueError("backend='openvino' runs on the CPU; it cannot be combined with device='cuda'")
        if not env.openvino_installed:
            raise BackendUnavailableError(
                "backend='openvino' was requested but openvino is not installed: `pip install 'cmrt[openvino]'`"
            )
        notes = (f"the folder's TensorRT engine ({_entry_summary(entry)}) is not used: OpenVINO was requested",) if entry else ()
        return Selection("openvino", "cpu", "requested; OpenVINO on the CPU (fp32 ONNX graph)", notes=notes)

    if backend == "tensorrt":
        if device == "cpu":
            raise ValueError("backend='tensorrt' runs on an NVIDIA GPU; it cannot be combined with device='cpu'")
        if not env.tensorrt_usable:
            raise BackendUnavailableError(
                f"backend='tensorrt' was requested but TensorRT cannot run here: {env.tensorrt_missing_reason}. "
                "Use backend='auto' or 'onnxruntime' to run this folder's ONNX model with ONNX Runtime"
            )
        if data is None:
            return Selection("tensorrt", "cuda", f"requested; {gpu} and TensorRT {env.tensorrt_version} are present")
        decision, blocker = folder_engine_decision(data, env, tensorrt_options)
        if blocker:
            raise BackendUnavailableError(f"backend='tensorrt': {decision.reason}, and it cannot be (re)built here: {blocker}")
        return Selection(
            "tensorrt", "cuda", f"requested; {gpu} and TensorRT {env.tensorrt_version} are present",
            engine_action=decision.action, engine_reason=decision.reason,
        )

    if backend == "onnxruntime" or device == "cpu":
        why = "requested" if backend == "onnxruntime" else "device='cpu' was requested"
        # asked for explicitly: a note, not a fallback warning
        notes = (f"the folder's TensorRT engine ({_entry_summary(entry)}) is not used: {why}",) if entry else ()
        if device == "cpu":
            return Selection("onnxruntime", "cpu", f"{why}; ONNX Runtime on the CPU", notes=notes)
        if env.ort_cuda_usable:
            return Selection("onnxruntime", "cuda", f"{why}; {gpu} with the ONNX Runtime CUDA EP (IO binding, CUDA graphs)", notes=notes)
        if device == "cuda":
            raise BackendUnavailableError(f"device='cuda' was requested but ONNX Runtime cannot use CUDA here: {env.ort_cuda_missing_reason}")
        return Selection("onnxruntime", "cpu", f"{why}; ONNX Runtime on the CPU ({env.ort_cuda_missing_reason})", notes=notes)

    # backend == "auto", device in ("auto", "cuda")
    notes: list[str] = []
    trt_skip: str | None = None
    if env.tensorrt_usable:
        if data is None:
            return Selection("tensorrt", "cuda", f"{gpu} and TensorRT {env.tensorrt_version} are present")
        decision, blocker = folder_engine_decision(data, env, tensorrt_options)
        if not blocker:
            return Selection(
                "tensorrt", "cuda", f"{gpu} and TensorRT {env.tensorrt_version} are present",
                engine_action=decision.action, engine_reason=decision.reason,
            )
        trt_skip = f"{decision.reason}, and it cannot be (re)built here: {blocker}"
        if not entry:  # with an entry, `fallback` says it
            notes.append(f"TensorRT not used: {trt_skip}")
    else:
        trt_skip = f"TensorRT cannot run here: {env.tensorrt_missing_reason}"
    skipped = []  # GPU backends this machine has that cannot run: the one fallback line says why
    if entry:
        skipped.append(f"the folder's TensorRT engine ({_entry_summary(entry)}) is not used: {trt_skip}")
    if env.has_gpu and env.onnxruntime_cuda_error:
        skipped.append(env.onnxruntime_cuda_error)
    fallback = "; ".join(skipped) or None
    if env.ort_cuda_usable:
        return Selection(
            "onnxruntime", "cuda",
            f"{trt_skip}; using {gpu} through the ONNX Runtime CUDA EP (IO binding, CUDA graphs)",
            fallback=fallback, notes=tuple(notes),
        )
    if device == "cuda":
        raise BackendUnavailableError(
            f"device='cuda' was requested but neither TensorRT ({trt_skip}) nor the ONNX Runtime CUDA EP "
            f"({env.ort_cuda_missing_reason}) can run here"
        )
    return Selection(
        "onnxruntime", "cpu",
        f"{trt_skip}; ONNX Runtime on the CPU" + ("" if not env.has_gpu else f" ({env.ort_cuda_missing_reason})"),
        fallback=fallback, notes=tuple(notes),
    )

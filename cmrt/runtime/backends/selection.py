"""Which backend `auto` picks, and why — as data, for `cmrt.load` and `cmrt doctor`.

`probe_environment()` gathers machine facts (GPU, driver, CUDA runtime, cuda-python,
TensorRT, ONNX Runtime providers) without ever raising; `select_backend()` is a pure
function of those facts, the request, and (optionally) an engine folder's manifest, so
every branch is unit-tested on a CPU by handing it a made-up `Environment`.

Order for `backend="auto"`: TensorRT (GPU + TensorRT + cuda-python, and an engine that is
current or can be (re)built from the folder's ONNX) > ONNX Runtime CUDA EP with CUDA
graphs (GPU + onnxruntime-gpu) > ONNX Runtime on the CPU.
"""
from __future__ import annotations

import functools
import logging
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

from ...engine.tensorrt_build import (
    ENTRY_KEY,
    BackendUnavailableError,
    EngineDecision,
    Platform,
    TensorRTOptions,
    engine_decision,
    onnx_digest,
    profile_for,
    rebuild_blocker,
    wanted_settings,
)

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt")
DEVICES = ("auto", "cpu", "cuda")

__all__ = [
    "BACKENDS",
    "DEVICES",
    "BackendUnavailableError",
    "Environment",
    "GpuInfo",
    "Selection",
    "probe_environment",
    "select_backend",
]


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: tuple[int, int]
    total_memory_bytes: int | None = None
    index: int = 0

    @property
    def cc(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


@dataclass(frozen=True)
class Environment:
    """Facts about this machine. Every field is optional: what could not be found is None, with a reason."""

    gpus: tuple[GpuInfo, ...] = ()
    gpu_source: str | None = None  # "cuda-python" | "nvidia-smi" | None
    gpu_error: str | None = None
    driver_version: str | None = None  # highest CUDA version the driver supports (or nvidia-smi's driver version)
    cuda_runtime_version: str | None = None
    cuda_python_version: str | None = None
    cuda_python_error: str | None = None
    tensorrt_version: str | None = None
    tensorrt_error: str | None = None
    onnxruntime_version: str | None = None
    onnxruntime_providers: tuple[str, ...] = ()
    onnxruntime_error: str | None = None

    @property
    def gpu(self) -> GpuInfo | None:
        return self.gpus[0] if self.gpus else None

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    @property
    def tensorrt_missing_reason(self) -> str | None:
        """None when TensorRT can run here, else why not (one clause)."""
        if not self.gpus:
            return f"no NVIDIA GPU found ({self.gpu_error or 'none visible'})"
        if self.cuda_python_version is None:
            return f"cuda-python is not installed ({self.cuda_python_error or 'cuda.bindings not importable'}); `pip install 'cmrt[gpu]'`"
        if self.gpu_source != "cuda-python":
            return f"the CUDA runtime cannot reach the GPU ({self.gpu_error or 'cudaGetDeviceCount failed'})"
        if self.tensorrt_version is None:
            return f"TensorRT is not installed ({self.tensorrt_error or 'tensorrt not importable'}); `pip install 'cmrt[gpu]'`"
        return None

    @property
    def tensorrt_usable(self) -> bool:
        return self.tensorrt_missing_reason is None

    @property
    def ort_cuda_missing_reason(self) -> str | None:
        if not self.gpus:
            return f"no NVIDIA GPU found ({self.gpu_error or 'none visible'})"
        if self.onnxruntime_version is None:
            return f"onnxruntime is not installed ({self.onnxruntime_error})"
        if "CUDAExecutionProvider" not in self.onnxruntime_providers:
            return "this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu instead of onnxruntime)"
        return None

    @property
    def ort_cuda_usable(self) -> bool:
        return self.ort_cuda_missing_reason is None

    def platform(self) -> Platform | None:
        if not self.tensorrt_usable:
            return None
        g = self.gpus[0]
        return Platform(g.name, tuple(g.compute_capability), str(self.tensorrt_version))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gpus"] = [{**asdict(g), "compute_capability": g.cc} for g in self.gpus]
        d["onnxruntime_providers"] = list(self.onnxruntime_providers)
        d["tensorrt_usable"] = self.tensorrt_usable
        d["tensorrt_missing_reason"] = self.tensorrt_missing_reason
        d["ort_cuda_usable"] = self.ort_cuda_usable
        d["ort_cuda_missing_reason"] = self.ort_cuda_missing_reason
        return d


@dataclass(frozen=True)
class Selection:
    """What will run: a backend on a device, the reason, and for TensorRT what happens to the engine."""

    backend: str  # "tensorrt" | "onnxruntime"
    device: str  # "cuda" | "cpu"
    reason: str
    engine_action: str | None = None  # tensorrt only: "reuse" | "build" | "rebuild" | None (no folder)
    engine_reason: str | None = None
    fallback: str | None = None  # set when the folder's TensorRT engine is skipped: the one log line to show
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["notes"] = list(self.notes)
        return d


# --- probing --------------------------------------------------------------------------
def _probe_cuda_python() -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        import importlib.metadata as md

        from . import cuda

        cuda.cudart_module()
        try:
            out["cuda_python_version"] = md.version("cuda-bindings")
        except md.PackageNotFoundError:
            out["cuda_python_version"] = "unknown"
    except Exception as e:
        out["cuda_python_error"] = f"{type(e).__name__}: {e}".splitlines()[0]
        return out
    try:
        n = cuda.device_count()
        gpus = tuple(
            GpuInfo(p["name"], p["compute_capability"], p["total_memory_bytes"], p["index"])
            for p in (cuda.device_properties(i) for i in range(n))
        )
        if gpus:
            out["gpus"] = gpus
            out["gpu_source"] = "cuda-python"
        else:
            out["gpu_error"] = "cudaGetDeviceCount found no device"
        out["driver_version"], out["cuda_runtime_version"] = cuda.driver_and_runtime_versions()
    except Exception as e:
        out["gpu_error"] = f"CUDA runtime: {e}".splitlines()[0]
    return out


def _probe_nvidia_smi() -> dict[str, Any]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"gpu_error": "no nvidia-smi on PATH and cuda-python not installed"}
    try:
        r = subprocess.run(
            [exe, "--query-gpu=name,compute_cap,memory.total,driver_version", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=15,
        )
    except (OSError, subprocess.SubprocessError) as e:
        return {"gpu_error": f"nvidia-smi failed: {e}"}
    if r.returncode != 0:
        return {"gpu_error": f"nvidia-smi failed: {(r.stderr or r.stdout).strip().splitlines()[:1]}"}
    gpus, driver = [], None
    for i, line in enumerate(l for l in r.stdout.splitlines() if l.strip()):
        parts = [p.strip() for p in line.split(",")]
        try:
            major, _, minor = parts[1].partition(".")
            gpus.append(GpuInfo(parts[0], (int(major), int(minor or 0)), int(float(parts[2])) << 20, i))
            driver = parts[3]
        except (IndexError, ValueError):
            continue
    if not gpus:
        return {"gpu_error": "nvidia-smi lists no GPU"}
    return {"gpus": tuple(gpus), "gpu_source": "nvidia-smi", "driver_version": driver}


def _probe_tensorrt() -> dict[str, Any]:
    try:
        import tensorrt as trt

        return {"tensorrt_version": str(trt.__version__)}
    except Exception as e:  # ImportError, or OSError when the libraries are missing
        return {"tensorrt_error": f"{type(e).__name__}: {e}".splitlines()[0]}


def _probe_onnxruntime() -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except Exception as e:
        return {"onnxruntime_error": f"{type(e).__name__}: {e}".splitlines()[0]}
    return {"onnxruntime_version": ort.__version__, "onnxruntime_providers": tuple(ort.get_available_providers())}


@functools.lru_cache(maxsize=4)
def probe_environment(tensorrt: bool | None = None) -> Environment:
    """Machine facts, gathered once per process (`probe_environment.cache_clear()` to redo). Never raises.

    `tensorrt`: None imports TensorRT only when a GPU is visible (where it could run), True
    always (`cmrt doctor` reports its version anyway), False never.
    """
    facts: dict[str, Any] = {}
    facts.update(_probe_cuda_python())
    if not facts.get("gpus"):
        smi = _probe_nvidia_smi()
        if smi.get("gpus"):
            reason = facts.get("gpu_error")
            facts.update(smi)
            if reason and facts.get("cuda_python_version"):
                facts["gpu_error"] = reason  # cuda-python is there but cannot use the GPU: say why
        elif "gpu_error" not in facts or facts.get("cuda_python_error"):
            facts["gpu_error"] = smi["gpu_error"]
    if tensorrt or (tensorrt is None and facts.get("gpus")):
        facts.update(_probe_tensorrt())
    else:
        facts["tensorrt_error"] = "not probed: no GPU" if tensorrt is None else "not probed"
    facts.update(_probe_onnxruntime())
    return Environment(**facts)


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
    fallback = None
    if entry:
        fallback = f"the folder's TensorRT engine ({_entry_summary(entry)}) is not used: {trt_skip}"
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

"""What this machine has for cmrt: GPUs, driver, CUDA runtime, cuda-bindings, TensorRT, ONNX Runtime.

`probe_environment()` gathers the facts without ever raising; what could not be found is
None with a reason. `selection.select_backend` decides from these facts alone, so every
branch of the decision is tested on a CPU by handing it a made-up `Environment`.
"""
from __future__ import annotations

import functools
import importlib.util
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

from ...engine.tensorrt import Platform


def _first_reason(*checks: tuple[bool, str | None]) -> str | None:
    """The reason of the first (failed, reason) pair that failed, or None when none did."""
    return next((reason for failed, reason in checks if failed), None)


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
    # why a session cannot really run on the CUDA EP although the providers list it (None: it can, or not probed)
    onnxruntime_cuda_error: str | None = None
    openvino_installed: bool = False

    @property
    def gpu(self) -> GpuInfo | None:
        return self.gpus[0] if self.gpus else None

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    @property
    def _no_gpu(self) -> str:
        return f"no NVIDIA GPU found ({self.gpu_error or 'none visible'})"

    @property
    def tensorrt_missing_reason(self) -> str | None:
        """None when TensorRT can run here, else why not (one clause): the first check that fails."""
        return _first_reason(
            (not self.gpus, self._no_gpu),
            (self.cuda_python_version is None,
             f"cuda-python is not installed ({self.cuda_python_error or 'cuda.bindings not importable'}); "
             "`pip install cuda-bindings` (in the gpu extras)"),
            (self.gpu_source != "cuda-python",
             f"the CUDA runtime cannot reach the GPU ({self.gpu_error or 'cudaGetDeviceCount failed'})"),
            (self.tensorrt_version is None,
             f"TensorRT is not installed ({self.tensorrt_error or 'tensorrt not importable'}); "
             "`pip install 'cmrt[gpu]' --extra-index-url https://pypi.nvidia.com`"),
        )

    @property
    def tensorrt_usable(self) -> bool:
        return self.tensorrt_missing_reason is None

    @property
    def ort_cuda_missing_reason(self) -> str | None:
        """None when ONNX Runtime's CUDA provider can run here, else why not: the first check that fails."""
        return _first_reason(
            (not self.gpus, self._no_gpu),
            (self.onnxruntime_version is None, f"onnxruntime is not installed ({self.onnxruntime_error})"),
            ("CUDAExecutionProvider" not in self.onnxruntime_providers,
             "this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu instead of onnxruntime)"),
            (bool(self.onnxruntime_cuda_error), self.onnxruntime_cuda_error),
        )

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


# A one-node ONNX model (Identity on a float[1], opset 13, IR 8), serialized: what the CUDA EP
# probe opens, so that probing needs neither the onnx package nor a model file.
# tests/runtime/backends/test_probe.py rebuilds it with onnx.helper and checks these bytes.
PROBE_MODEL = (
    b"\x08\x08\x12\x04cmrt:;\n\x10\n\x01x\x12\x01y\"\x08Identity\x12\x05probeZ\x0f\n\x01x\x12\n\n\x08\x08\x01"
    b"\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\r"
)


def ort_cuda_load_error(ort: Any) -> str | None:
    """Why an ONNX Runtime session cannot run on the CUDA EP here, or None when it can.

    `get_available_providers()` lists the CUDA EP whenever onnxruntime-gpu is installed; whether
    its libraries (CUDA, cuDNN, cuBLAS) load shows only when a session is created, and a session
    that cannot load them silently runs on the CPU. So: preload the pip-installed libraries and
    open a one-node session, as the ONNX Runtime CUDA backend will."""
    from .ort_cuda_backend import preload_cuda_libraries

    preload_error = preload_cuda_libraries(ort)
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 4  # the failure is reported here, not as ONNX Runtime's log line
        session = ort.InferenceSession(PROBE_MODEL, so, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        active = list(session.get_providers())
    except Exception as e:
        return f"ONNX Runtime lists the CUDA EP but a session on it fails: {type(e).__name__}: {e}".splitlines()[0]
    if active[:1] != ["CUDAExecutionProvider"]:
        why = f"; {preload_error}" if preload_error else ""
        return (
            "ONNX Runtime lists the CUDA EP but cannot load it (CUDA or cuDNN libraries missing: install "
            f"`onnxruntime-gpu[cuda,cudnn]`){why}; a session would run on {active[0] if active else 'the CPU'}"
        )
    return None


def _probe_onnxruntime(cuda_check: bool) -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except Exception as e:
        return {"onnxruntime_error": f"{type(e).__name__}: {e}".splitlines()[0]}
    out = {"onnxruntime_version": ort.__version__, "onnxruntime_providers": tuple(ort.get_available_providers())}
    if cuda_check and "CUDAExecutionProvider" in out["onnxruntime_providers"]:
        out["onnxruntime_cuda_error"] = ort_cuda_load_error(ort)
    return out


@functools.lru_cache(maxsize=4)
def probe_environment(tensorrt: bool | None = None) -> Environment:
    """Machine facts, gathered once per process (`probe_environment.cache_clear()` to redo). Never raises.

    `tensorrt`: None imports TensorRT only when a GPU is visible (where it could run), True
    always (`cmrt doctor` reports its version anyway), False never. Where a GPU is visible and
    ONNX Runtime lists its CUDA EP, a one-node session checks that the EP really loads.
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
    facts.update(_probe_onnxruntime(cuda_check=bool(facts.get("gpus"))))
    facts["openvino_installed"] = importlib.util.find_spec("openvino") is not None  # located, not imported (slow)
    return Environment(**facts)

"""Made-up machines for backend selection, and fake TensorRT build steps for the folder logic.

`CPU_ENV` / `gpu_env()` are `Environment`s as `probe_environment` would report them; `patch_env`
makes every caller see one. `FakeTensorRT` replaces the TensorRT-touching steps of
`ensure_tensorrt_engine` (platform, build, validation), so what is tested is the folder and
manifest logic around them. `add_fake_engine` writes a well-formed TensorRT entry.
"""
from __future__ import annotations

import json
from pathlib import Path

from cmrt.build import tensorrt as tb
from cmrt.engine.tensorrt import (
    Platform,
    TensorRTOptions,
    engine_entry,
    engine_file_name,
    onnx_digest,
    profile_for,
    short_version,
    sm_tag,
    step_record,
)
from cmrt.runtime.backends.probe import Environment, GpuInfo

FOLDER_OPTS = {"min_batch": 1, "opt_batch": 4, "max_batch": 16}
H100 = Platform("NVIDIA H100 80GB HBM3", (9, 0), "11.4.0.9")
H100_PCIE = Platform("NVIDIA H100 PCIe", (9, 0), "11.4.0.9")
A100 = Platform("NVIDIA A100-SXM4-80GB", (8, 0), "11.4.0.9")
H100_TRT113 = Platform("NVIDIA H100 80GB HBM3", (9, 0), "11.3.0.1")

CPU_ENV = Environment(
    gpu_error="no nvidia-smi on PATH and cuda-python not installed",
    cuda_python_error="ImportError: cuda.bindings",
    tensorrt_error="not probed: no GPU",
    onnxruntime_version="1.32.0",
    onnxruntime_providers=("CPUExecutionProvider",),
)


def gpu_env(platform: Platform = H100, tensorrt: bool = True, ort_cuda: bool = False) -> Environment:
    return Environment(
        gpus=(GpuInfo(platform.gpu_name, platform.compute_capability, 80 << 30, 0),),
        gpu_source="cuda-python",
        driver_version="13.0",
        cuda_runtime_version="13.0",
        cuda_python_version="13.5.0",
        tensorrt_version=platform.tensorrt_version if tensorrt else None,
        tensorrt_error=None if tensorrt else "ModuleNotFoundError: No module named 'tensorrt'",
        onnxruntime_version="1.31.1",
        onnxruntime_providers=("CUDAExecutionProvider", "CPUExecutionProvider") if ort_cuda else ("CPUExecutionProvider",),
    )


def patch_env(monkeypatch, env: Environment) -> None:
    """Make every caller of probe_environment see `env`."""
    import cmrt.runtime.backends.probe as probe
    import cmrt.runtime.loading as loading

    monkeypatch.setattr(probe, "probe_environment", lambda tensorrt=None: env)
    monkeypatch.setattr(loading, "probe_environment", lambda tensorrt=None: env)


def fake_validation(tolerance: float = 0.05, error: float = 1e-3) -> dict:
    return {"reference": "fake", "tolerance": tolerance, "max_abs_error": error, "batch_sizes": [1, 4, 8], "per_batch": {}}


def format1_entry(entry: dict, file: str) -> dict:
    """`entry` as cmrt wrote it before latency profiles (entry format 1): one profile over the
    batch range, optimization level 3, no `profiles`, the plan named by the range alone."""
    old = {k: v for k, v in entry.items() if k not in ("profiles", "io")}
    old.update(format=1, file=file, options={**entry["options"], "optimization_level": 3})
    return old


def add_fake_engine(folder: Path, platform: Platform = H100, precision: str = "fp32", options: TensorRTOptions | None = None,
                    before_profiles: bool = False) -> dict:
    """Write a (fake) plan file and a well-formed tensorrt entry into `folder`'s manifest;
    `before_profiles`: the entry a cmrt before latency profiles wrote (`format1_entry`)."""
    from cmrt.engine.manifest import file_record, write_manifest

    data = json.loads((folder / "manifest.json").read_text())
    options = options or TensorRTOptions(precision=precision)
    batches = profile_for(data["build_options"], options)
    name = engine_file_name(precision, platform.tensorrt_version, platform.compute_capability, batches,
                            optimization_level=options.optimization_level)  # as the builder names it
    if before_profiles:
        name = f"unet.{precision}.trt{short_version(platform.tensorrt_version)}.{sm_tag(platform.compute_capability)}.b{batches.tag}.plan"
    (folder / name).write_bytes(b"not a real plan " + platform.gpu_name.encode())
    step = step_record(data, precision) or {"file": f"unet.{precision}.step.onnx", "inputs": [], "outputs": []}
    entry = engine_entry(
        name, options, batches, platform, step["file"], onnx_digest(data, precision),
        fake_validation(options.effective_tolerance), {"build_seconds": 1.0}, io=step,
    )
    if before_profiles:
        entry = format1_entry(entry, name)
    data["tensorrt"] = entry
    data["files"][name] = file_record(folder, name)
    write_manifest(folder, data)
    return entry


class FakeTensorRT:
    """Stands in for the TensorRT-touching steps of ensure_tensorrt_engine."""

    def __init__(self, monkeypatch, platform: Platform = H100):
        self.platform = platform
        self.builds = 0
        self.validate_error: Exception | None = None
        monkeypatch.setattr(tb, "current_platform", lambda device_index=0: self.platform)
        monkeypatch.setattr(tb, "build_plan", self.build_plan)
        monkeypatch.setattr(tb, "validate_plan", self.validate_plan)

    def build_plan(self, onnx_path, inputs, batches, options, timing_cache):
        self.builds += 1
        self.last = {"onnx": Path(onnx_path).name, "inputs": [t["name"] for t in inputs], "batches": batches,
                     "timing_cache": timing_cache}
        return f"PLAN {self.platform.gpu_name} {batches} #{self.builds}".encode(), {
            "build_seconds": 0.1, "timing_cache": None if timing_cache is None else str(timing_cache), "timing_cache_was_warm": False,
        }

    def validate_plan(self, plan_path, folder, data, batches, precision, tolerance):
        assert Path(plan_path).is_file() and Path(plan_path).name.startswith(".")  # validated before it is installed
        if self.validate_error is not None:
            raise self.validate_error
        return fake_validation(tolerance)



"""Which backend `auto` picks and why, the clear failures, and `cmrt.load` falling back — on the CPU.

`select_backend` is pure: it is given made-up machines (`Environment`s). `cmrt.load` is run
on real engine folders with the machine probe replaced, and, for the TensorRT path, with
the TensorRT steps replaced by fakes (the real ones run in tests/gpu).
"""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

import cmrt
from cmrt.engine import tensorrt as te
from cmrt.engine.errors import BackendUnavailableError, EngineValidationError
from cmrt.engine.tensorrt import TensorRTOptions
from cmrt.runtime.backends.probe import Environment, GpuInfo, probe_environment
from cmrt.runtime.backends.selection import select_backend

from tests.fakes.environments import A100, CPU_ENV, H100, FakeTensorRT, add_fake_engine, gpu_env, patch_env

GPU_TRT = gpu_env(H100, tensorrt=True)
GPU_ORT = gpu_env(H100, tensorrt=False, ort_cuda=True)
GPU_BOTH = gpu_env(H100, tensorrt=True, ort_cuda=True)
GPU_NOTHING = gpu_env(H100, tensorrt=False, ort_cuda=False)


def folder_data(with_fp16: bool = True, entry_platform=None, step_graphs: bool = True) -> dict:
    """A manifest dict with ONNX entries (with their step graphs, unless `step_graphs` is False: a
    folder built before them) and (optionally) a TensorRT entry."""
    onnx = {"fp32": {"file": "unet.fp32.onnx"}}
    files = {"unet.fp32.onnx": {"sha256": "a" * 64, "bytes": 1}, "unet.fp32.step.onnx": {"sha256": "c" * 64, "bytes": 1}}
    if with_fp16:
        onnx["fp16"] = {"file": "unet.fp16.onnx"}
        files["unet.fp16.onnx"] = {"sha256": "b" * 64, "bytes": 1}
        files["unet.fp16.step.onnx"] = {"sha256": "d" * 64, "bytes": 1}
    if step_graphs:
        for precision, entry in onnx.items():
            entry["step"] = {"file": f"unet.{precision}.step.onnx", "inputs": [], "outputs": []}
    data = {"onnx": onnx, "files": files, "build_options": {"min_batch": 1, "opt_batch": 4, "max_batch": 16}}
    if entry_platform is not None:
        opts = TensorRTOptions()
        batches = te.profile_for(data["build_options"], opts)
        data["tensorrt"] = te.engine_entry(
            "x.plan", opts, batches, entry_platform, "unet.fp16.step.onnx", "d" * 64,
            {"tolerance": opts.effective_tolerance, "max_abs_error": 1e-3}, {},
        )
    return data


# --- auto without a folder ----------------------------------------------------------------
def test_auto_picks_tensorrt_then_ort_cuda_then_cpu():
    s = select_backend(GPU_BOTH)
    assert (s.backend, s.device) == ("tensorrt", "cuda") and "NVIDIA H100" in s.reason and "11.4.0.9" in s.reason
    s = select_backend(GPU_ORT)
    assert (s.backend, s.device) == ("onnxruntime", "cuda")
    assert "TensorRT is not installed" in s.reason and "CUDA graphs" in s.reason
    s = select_backend(CPU_ENV)
    assert (s.backend, s.device) == ("onnxruntime", "cpu") and "no NVIDIA GPU" in s.reason
    s = select_backend(GPU_NOTHING)
    assert (s.backend, s.device) == ("onnxruntime", "cpu") and "CUDAExecutionProvider" in s.reason
    assert s.to_dict()["backend"] == "onnxruntime"


def test_device_and_backend_requests():
    assert select_backend(GPU_BOTH, device="cpu").backend == "onnxruntime"
    assert (select_backend(GPU_BOTH, backend="onnxruntime").device) == "cuda"
    assert (select_backend(GPU_TRT, backend="onnxruntime").device) == "cpu"
    with pytest.raises(BackendUnavailableError, match="device='cuda'.*no CUDAExecutionProvider"):
        select_backend(GPU_TRT, backend="onnxruntime", device="cuda")
    with pytest.raises(BackendUnavailableError, match="device='cuda'"):
        select_backend(CPU_ENV, device="cuda")
    with pytest.raises(ValueError, match="device='cpu'"):
        select_backend(GPU_BOTH, backend="tensorrt", device="cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        select_backend(CPU_ENV, backend="trt")
    with pytest.raises(ValueError, match="device must be one of"):
        select_backend(CPU_ENV, device="gpu")


def test_explicit_tensorrt_without_it_is_a_clear_error():
    with pytest.raises(BackendUnavailableError, match="TensorRT cannot run here: no NVIDIA GPU"):
        select_backend(CPU_ENV, backend="tensorrt")
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        select_backend(GPU_ORT, backend="tensorrt")
    no_cuda_python = Environment(
        gpus=(GpuInfo("NVIDIA L4", (8, 9)),), gpu_source="nvidia-smi", tensorrt_version="11.4.0.9",
        cuda_python_error="ModuleNotFoundError: cuda",
    )
    with pytest.raises(BackendUnavailableError, match="cuda-python is not installed"):
        select_backend(no_cuda_python, backend="tensorrt")
    assert GPU_BOTH.tensorrt_usable and not CPU_ENV.tensorrt_usable and GPU_ORT.ort_cuda_usable


# --- auto with an engine folder ---------------------------------------------------------------
def test_folder_engine_current_stale_or_missing():
    s = select_backend(GPU_BOTH, data=folder_data(entry_platform=H100))
    assert s.backend == "tensorrt" and s.engine_action == "reuse"
    s = select_backend(GPU_BOTH, data=folder_data(entry_platform=A100))
    assert s.backend == "tensorrt" and s.engine_action == "rebuild" and "A100" in s.engine_reason
    s = select_backend(GPU_BOTH, data=folder_data())
    assert s.backend == "tensorrt" and s.engine_action == "build"


def _stale_gpu_folder():
    return folder_data(with_fp16=False, entry_platform=A100)


def _folder_before_step_graphs():
    """A folder built before step graphs: its engine (of any format) cannot be rebuilt from a step graph."""
    data = folder_data(entry_platform=H100, step_graphs=False)
    data["tensorrt"]["format"] = 2
    return data


@pytest.mark.parametrize("make_data, why, blocked", [
    (_stale_gpu_folder, ("built for NVIDIA A100-SXM4-80GB", "no fp16 ONNX model"), "the folder has no fp16 ONNX"),
    (_folder_before_step_graphs, ("built from the plain UNet graph", "no step graph of its fp16 graph"), "the folder has no step graph"),
])
def test_an_engine_that_cannot_be_rebuilt_falls_back_or_fails(make_data, why, blocked):
    data = make_data()
    s = select_backend(GPU_BOTH, data=data)
    assert (s.backend, s.device) == ("onnxruntime", "cuda")
    assert all(w in s.fallback for w in why), s.fallback
    with pytest.raises(BackendUnavailableError, match=f"cannot be \\(re\\)built here: {blocked}"):
        select_backend(GPU_BOTH, backend="tensorrt", data=data)


def test_engine_in_folder_on_a_machine_without_tensorrt():
    data = folder_data(entry_platform=H100)
    s = select_backend(CPU_ENV, data=data)
    assert (s.backend, s.device) == ("onnxruntime", "cpu")
    assert "TensorRT engine (built for NVIDIA H100 80GB HBM3 with TensorRT 11.4.0.9) is not used" in s.fallback
    assert "no NVIDIA GPU" in s.fallback
    s = select_backend(GPU_BOTH, device="cpu", data=data)  # asked for: a note, no fallback warning
    assert s.backend == "onnxruntime" and s.fallback is None and "device='cpu'" in s.notes[0]
    with pytest.raises(BackendUnavailableError):
        select_backend(CPU_ENV, backend="tensorrt", data=data)


def test_probe_never_raises_and_feeds_selection():
    env = probe_environment()
    assert isinstance(env, Environment)
    s = select_backend(env)
    assert s.backend in ("tensorrt", "onnxruntime") and s.reason
    d = env.to_dict()
    assert {"gpus", "tensorrt_usable", "onnxruntime_providers", "driver_version"} <= set(d)
    json.dumps(d)


# --- cmrt.load ------------------------------------------------------------------------------
@pytest.fixture
def engine_with_trt_entry(small_models, tmp_path):
    folder = tmp_path / "engine"
    shutil.copytree(small_models["cond"][1], folder)
    add_fake_engine(folder, platform=H100, precision="fp32")
    return folder


def test_load_auto_falls_back_to_ort_with_one_log_line(engine_with_trt_entry, monkeypatch, caplog):
    patch_env(monkeypatch, CPU_ENV)
    with caplog.at_level(logging.INFO, logger="cmrt"):
        pipe = cmrt.load(engine_with_trt_entry)
    assert (pipe.backend.name, pipe.backend.device) == ("onnxruntime", "cpu")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "TensorRT engine" in warnings[0] and "not used" in warnings[0] and "using ONNX Runtime on CPU" in warnings[0]
    images = pipe(batch_size=2, seed=0, output_type="np").images
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()


def test_load_tensorrt_without_tensorrt_errors(engine_with_trt_entry, monkeypatch):
    patch_env(monkeypatch, CPU_ENV)
    with pytest.raises(BackendUnavailableError, match="backend='tensorrt' was requested but TensorRT cannot run here"):
        cmrt.load(engine_with_trt_entry, backend="tensorrt")
    with pytest.raises(ValueError, match="backend must be one of"):
        cmrt.load(engine_with_trt_entry, backend="trt")
    with pytest.raises(ValueError, match="device='cpu'"):
        cmrt.load(engine_with_trt_entry, backend="tensorrt", device="cpu")


def test_load_on_this_machine_unpatched(engine_with_trt_entry):
    """Whatever this machine is, auto loads something that runs; here (no GPU) it is ONNX Runtime on the CPU."""
    pipe = cmrt.load(engine_with_trt_entry)
    if not probe_environment().has_gpu:
        assert (pipe.backend.name, pipe.backend.device) == ("onnxruntime", "cpu")


class FakeTensorRTBackend:
    """Stands in for TensorRTBackend: serves the plan's step graph through ONNX Runtime on the CPU."""

    name, device = "tensorrt", "cuda"
    opened: list = []

    def __init__(self, plan_path, io_spec, profiles, use_cuda_graph=True, device_index=0, step_graph=True):
        from cmrt.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

        self.plan_path, self.profiles, self.use_cuda_graph, self.step_graph = plan_path, profiles, use_cuda_graph, step_graph
        assert [t["name"] for t in io_spec["inputs"]] == ["x", "timestep", "class_labels", "step_coefs", "noise_term"]
        self._ort = OnnxRuntimeBackend(plan_path.parent / "unet.fp32.step.onnx")
        FakeTensorRTBackend.opened.append(self)

    def _check(self, batch):
        assert self.profiles[0].min <= batch <= self.profiles[-1].max

    def run(self, sample, timestep, class_labels=None):
        self._check(sample.shape[0])
        return self._ort.run(sample, timestep, class_labels)

    def run_steps(self, sample, *args, **kwargs):
        self._check(sample.shape[0])
        return self._ort.run_steps(sample, *args, **kwargs)


def test_load_rebuilds_a_stale_engine_then_uses_it(small_models, tmp_path, monkeypatch, caplog):
    import cmrt.runtime.backends.tensorrt_backend as trt_backend

    folder = tmp_path / "engine"
    shutil.copytree(small_models["cond"][1], folder)
    add_fake_engine(folder, platform=A100, precision="fp32")
    patch_env(monkeypatch, GPU_TRT)
    fake = FakeTensorRT(monkeypatch, platform=H100)
    monkeypatch.setattr(trt_backend, "TensorRTBackend", FakeTensorRTBackend)
    with caplog.at_level(logging.INFO, logger="cmrt"):
        pipe = cmrt.load(folder, backend="tensorrt", precision="fp32", use_cuda_graph=False)
    assert fake.builds == 1 and isinstance(pipe.backend, FakeTensorRTBackend)
    assert "sm90" in pipe.backend.plan_path.name and pipe.backend.use_cuda_graph is False
    assert any("building its TensorRT engine" in r.getMessage() and "A100" in r.getMessage() for r in caplog.records)
    assert pipe.manifest.data["tensorrt"]["gpu"]["name"] == H100.gpu_name
    ref = cmrt.load(folder, device="cpu")
    a = pipe(batch_size=2, seed=3, timesteps=[22, 0], output_type="np").images
    b = ref(batch_size=2, seed=3, timesteps=[22, 0], output_type="np").images
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)  # the CPU reference may be the Winograd graph
    # loading again is a cache hit
    cmrt.load(folder, backend="auto", precision="fp32")
    assert fake.builds == 1


def test_load_auto_falls_back_when_the_engine_build_fails(small_models, tmp_path, monkeypatch, caplog):
    folder = tmp_path / "engine"
    shutil.copytree(small_models["cond"][1], folder)
    patch_env(monkeypatch, GPU_TRT)
    fake = FakeTensorRT(monkeypatch)
    fake.validate_error = EngineValidationError("TensorRT differs from ONNX Runtime by 0.5")
    with caplog.at_level(logging.WARNING, logger="cmrt"):
        pipe = cmrt.load(folder, precision="fp32")
    assert (pipe.backend.name, pipe.backend.device) == ("onnxruntime", "cpu")
    assert any("TensorRT could not be used" in r.getMessage() and "0.5" in r.getMessage() for r in caplog.records)
    with pytest.raises(EngineValidationError):
        cmrt.load(folder, backend="tensorrt", precision="fp32")

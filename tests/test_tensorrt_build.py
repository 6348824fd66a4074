"""TensorRT engine build decisions, profile/option handling and the build orchestration — on the CPU.

TensorRT itself cannot run here: the pure decisions are tested directly, and
`ensure_tensorrt_engine` / `build_engine_folder(backend=...)` are driven with the
TensorRT-touching steps (`current_platform`, `build_plan`, `validate_plan`) replaced by
fakes, so what is tested is exactly the folder/manifest logic around them. The real
engine is tested by tests/gpu/test_gpu_path.py on a GPU.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from cmrt.engine import tensorrt_build as tb
from cmrt.engine.manifest import EngineFolderError, read_manifest
from cmrt.engine.tensorrt_build import (
    BackendUnavailableError,
    EngineValidationError,
    Platform,
    Profile,
    TensorRTOptions,
    engine_decision,
    engine_file_name,
    profile_for,
    rebuild_blocker,
    wanted_settings,
)
from cmrt.runtime.backends import selection
from cmrt.runtime.backends.selection import Environment, GpuInfo

FOLDER_OPTS = {"min_batch": 1, "opt_batch": 4, "max_batch": 16}
H100 = Platform("NVIDIA H100 80GB HBM3", (9, 0), "11.4.0.9")
H100_PCIE = Platform("NVIDIA H100 PCIe", (9, 0), "11.4.0.9")
A100 = Platform("NVIDIA A100-SXM4-80GB", (8, 0), "11.4.0.9")
H100_TRT113 = Platform("NVIDIA H100 80GB HBM3", (9, 0), "11.3.0.1")

# --- helpers shared with test_backend_selection.py and test_doctor.py -----------------------
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
    import cmrt.runtime.loading as loading

    monkeypatch.setattr(selection, "probe_environment", lambda tensorrt=None: env)
    monkeypatch.setattr(loading, "probe_environment", lambda tensorrt=None: env)


def fake_validation(tolerance: float = 0.05, error: float = 1e-3) -> dict:
    return {"reference": "fake", "tolerance": tolerance, "max_abs_error": error, "batch_sizes": [1, 4, 8], "per_batch": {}}


def add_fake_engine(folder: Path, platform: Platform = H100, precision: str = "fp32", options: TensorRTOptions | None = None) -> dict:
    """Write a (fake) plan file and a well-formed tensorrt entry into `folder`'s manifest."""
    from cmrt._atomic import write_json_atomic
    from cmrt.engine.manifest import file_record

    data = json.loads((folder / "manifest.json").read_text())
    options = options or TensorRTOptions(precision=precision)
    batches = profile_for(data["build_options"], options)
    name = engine_file_name(precision, platform.tensorrt_version, platform.compute_capability, batches)
    (folder / name).write_bytes(b"not a real plan " + platform.gpu_name.encode())
    entry = tb.engine_entry(
        name, options, batches, platform, data["onnx"][precision]["file"], tb.onnx_digest(data, precision),
        fake_validation(options.effective_tolerance), {"build_seconds": 1.0},
    )
    data["tensorrt"] = entry
    data["files"][name] = file_record(folder, name)
    write_json_atomic(folder / "manifest.json", data)
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

    def build_plan(self, onnx_path, input_shapes, batches, options, timing_cache):
        self.builds += 1
        self.last = {"onnx": Path(onnx_path).name, "shapes": input_shapes, "batches": batches, "timing_cache": timing_cache}
        return f"PLAN {self.platform.gpu_name} {batches} #{self.builds}".encode(), {
            "build_seconds": 0.1, "timing_cache": None if timing_cache is None else str(timing_cache), "timing_cache_was_warm": False,
        }

    def validate_plan(self, plan_path, folder, data, batches, precision, tolerance):
        assert Path(plan_path).is_file() and Path(plan_path).name.startswith(".")  # validated before it is installed
        if self.validate_error is not None:
            raise self.validate_error
        return fake_validation(tolerance)


# --- profile and options -------------------------------------------------------------------
def test_profile_defaults_come_from_the_folder():
    assert profile_for(FOLDER_OPTS, TensorRTOptions()) == Profile(1, 4, 16)
    assert profile_for({"min_batch": 2, "opt_batch": 4, "max_batch": 8}, TensorRTOptions()) == Profile(2, 4, 8)
    assert Profile(1, 4, 16).validation_batches == [1, 4, 16]
    assert Profile(1, 1, 1).validation_batches == [1]


def test_profile_overrides_and_their_limits():
    assert profile_for(FOLDER_OPTS, TensorRTOptions(opt_batch=2, max_batch=8)) == Profile(1, 2, 8)
    assert profile_for(FOLDER_OPTS, TensorRTOptions(max_batch=2)) == Profile(1, 2, 2)  # default opt clamps to max
    with pytest.raises(ValueError, match="exceeds the engine folder's max_batch 16"):
        profile_for(FOLDER_OPTS, TensorRTOptions(max_batch=32))
    with pytest.raises(ValueError, match="min <= opt <= max"):
        profile_for(FOLDER_OPTS, TensorRTOptions(opt_batch=8, max_batch=4))
    with pytest.raises(ValueError, match="min <= opt <= max"):
        profile_for({"min_batch": 2, "opt_batch": 4, "max_batch": 8}, TensorRTOptions(opt_batch=1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"precision": "int8"}, "precision"),
        ({"optimization_level": 6}, "optimization_level"),
        ({"optimization_level": True}, "optimization_level"),
        ({"opt_batch": 0}, "opt_batch"),
        ({"max_batch": 2.5}, "max_batch"),
        ({"tolerance": 0}, "tolerance"),
        ({"tolerance": float("nan")}, "tolerance"),
        ({"tolerance": "0.1"}, "tolerance"),
    ],
)
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TensorRTOptions(**kwargs)


def test_tolerance_defaults_and_file_names():
    assert TensorRTOptions().effective_tolerance == 5e-2
    assert TensorRTOptions(precision="fp32").effective_tolerance == 1e-3
    assert TensorRTOptions(tolerance=0.1).effective_tolerance == 0.1
    assert engine_file_name("fp16", "11.4.0.9", (9, 0), Profile(1, 4, 16)) == "unet.fp16.trt11.4.sm90.b1-4-16.plan"
    assert engine_file_name("fp32", "11.4", (12, 0), Profile(2, 2, 8)) == "unet.fp32.trt11.4.sm120.b2-2-8.plan"
    assert tb.sm_tag("8.6") == "sm86" and tb.short_version("11") == "11"


def test_timing_cache_is_per_gpu_and_tensorrt(monkeypatch, tmp_path):
    monkeypatch.setenv("CMRT_CACHE", str(tmp_path))
    p = tb.default_timing_cache(H100)
    assert p.parent == tmp_path / "tensorrt"
    assert p.name == "timing-nvidia-h100-80gb-hbm3-sm90-trt11.4.0.9.cache"
    assert tb.default_timing_cache(A100) != p and tb.default_timing_cache(H100_TRT113) != p


# --- rebuild decisions ----------------------------------------------------------------------
def _entry(platform=H100, sha="sha-a", options=TensorRTOptions(), batches=Profile(1, 4, 16)):
    return tb.engine_entry(
        "x.plan", options, batches, platform, "unet.fp16.onnx", sha, fake_validation(options.effective_tolerance), {}
    )


def test_no_engine_is_built_and_a_matching_one_reused():
    wanted = wanted_settings(Profile(1, 4, 16), TensorRTOptions())
    d = engine_decision(None, H100, "sha-a", wanted)
    assert d.action == "build" and d.needs_build and "no TensorRT engine" in d.reason
    d = engine_decision(_entry(), H100, "sha-a", wanted)
    assert d.action == "reuse" and not d.needs_build
    assert engine_decision(_entry(), H100, None, None).action == "reuse"  # nothing to compare: reuse


def test_stale_gpu_is_rebuilt():
    d = engine_decision(_entry(platform=A100), H100, "sha-a")
    assert d.action == "rebuild"
    assert "NVIDIA A100-SXM4-80GB (compute capability 8.0)" in d.reason and "NVIDIA H100 80GB HBM3 (compute capability 9.0)" in d.reason
    d = engine_decision(_entry(platform=H100_PCIE), H100, "sha-a")  # same sm90, other model
    assert d.action == "rebuild" and "tunes engines per GPU model" in d.reason


def test_stale_tensorrt_version_is_rebuilt():
    d = engine_decision(_entry(platform=H100_TRT113), H100, "sha-a")
    assert d.action == "rebuild" and "TensorRT 11.3.0.1" in d.reason and "11.4.0.9" in d.reason


def test_changed_onnx_is_rebuilt():
    d = engine_decision(_entry(sha="sha-a"), H100, "sha-b")
    assert d.action == "rebuild" and "ONNX model changed" in d.reason


def test_changed_settings_are_rebuilt():
    entry = _entry()
    for opts, batches, what in [
        (TensorRTOptions(), Profile(1, 4, 8), "profile"),
        (TensorRTOptions(optimization_level=5), Profile(1, 4, 16), "optimization_level"),
        (TensorRTOptions(tolerance=0.01), Profile(1, 4, 16), "tolerance"),
        (TensorRTOptions(precision="fp32"), Profile(1, 4, 16), "precision"),
    ]:
        d = engine_decision(entry, H100, "sha-a", wanted_settings(batches, opts))
        assert d.action == "rebuild" and what in d.reason, (what, d)


def test_broken_entries_are_rebuilt_not_trusted():
    assert engine_decision({"file": "x.plan"}, H100, None).action == "rebuild"
    e = _entry()
    e["format"] = 99
    d = engine_decision(e, H100, "sha-a")
    assert d.action == "rebuild" and "format 99" in d.reason


def test_rebuild_blockers():
    data = {"onnx": {"fp32": {}}}
    msg = rebuild_blocker(data, "fp16")
    assert "no fp16 ONNX model" in msg and "--precision fp32 fp16" in msg
    assert rebuild_blocker({"onnx": {"fp16": {}}}, "fp16") is None
    assert rebuild_blocker({"onnx": {"fp16": {}}}, "fp16", tensorrt_missing="no GPU") == "no GPU"


def test_onnx_digest_covers_external_data():
    data = {
        "onnx": {"fp16": {"file": "a.onnx", "external_data": "a.onnx.data"}, "fp32": {"file": "b.onnx", "external_data": None}},
        "files": {"a.onnx": {"sha256": "1"}, "a.onnx.data": {"sha256": "2"}, "b.onnx": {"sha256": "3"}},
    }
    assert tb.onnx_digest(data, "fp16") == "1+2"
    assert tb.onnx_digest(data, "fp32") == "3"
    assert tb.onnx_digest(data, "int8") is None


def test_validation_inputs_and_comparison():
    unet = {"sample_size": 8, "in_channels": 3, "num_class_embeds": 10}
    f = tb.validation_inputs(unet, 3, seed=0)
    assert f["sample"].shape == (3, 3, 8, 8) and f["sample"].dtype == np.float32
    assert f["timestep"].dtype == np.float32 and (-1554 < f["timestep"]).all() and (f["timestep"] < 1096).all()
    assert f["class_labels"].dtype == np.int64 and ((0 <= f["class_labels"]) & (f["class_labels"] < 10)).all()
    assert "class_labels" not in tb.validation_inputs({**unet, "num_class_embeds": None}, 2, seed=0)
    ref = np.ones((2, 3), np.float32)
    r = tb.compare_outputs(ref + 0.01, ref)
    assert r["finite"] and r["max_abs_error"] == pytest.approx(0.01, rel=1e-4)
    bad = ref.copy()
    bad[0, 0] = np.nan
    r = tb.compare_outputs(bad, ref)
    assert not r["finite"] and math.isinf(r["max_abs_error"])
    with pytest.raises(EngineValidationError, match="shape"):
        tb.compare_outputs(ref[:1], ref)


# --- the build orchestration with fake TensorRT steps ------------------------------------
@pytest.fixture
def folder(small_models, tmp_path):
    engine = tmp_path / "engine"
    shutil.copytree(small_models["cond"][1], engine)
    return engine


def test_engine_is_added_to_the_folder_then_reused(folder, monkeypatch, tmp_path):
    fake = FakeTensorRT(monkeypatch)
    before = json.loads((folder / "manifest.json").read_text())
    opts = TensorRTOptions(precision="fp32", timing_cache=str(tmp_path / "tc.cache"))
    r = tb.ensure_tensorrt_engine(folder, opts)
    assert r.built and fake.builds == 1 and r.decision.action == "build"
    assert r.plan.name == "unet.fp32.trt11.4.sm90.b1-4-8.plan" and r.plan.is_file()
    assert fake.last["shapes"] == {"sample": (3, 16, 16), "timestep": (), "class_labels": ()}
    assert fake.last["timing_cache"] == tmp_path / "tc.cache"
    m = read_manifest(folder, verify=True)  # the plan is checksummed like every other file
    e = m.data["tensorrt"]
    assert e["gpu"] == {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    assert e["tensorrt_version"] == "11.4.0.9" and e["profile"] == {"min": 1, "opt": 4, "max": 8}
    assert e["onnx_sha256"] == tb.onnx_digest(before, "fp32") and e["onnx_file"] == "unet.fp32.onnx"
    assert e["onnx_sha256"].startswith(before["files"]["unet.fp32.onnx"]["sha256"] + "+")  # graph + its weight file
    assert e["validation"]["tolerance"] == 1e-3 and e["options"]["optimization_level"] == 3
    assert set(m.data["files"]) == set(before["files"]) | {r.plan.name}
    assert m.data["build_key"] == before["build_key"]  # the ONNX folder's identity is unchanged
    assert not [p for p in folder.iterdir() if p.name.endswith(".validating")]
    # second time: a cache hit, nothing built
    r2 = tb.ensure_tensorrt_engine(folder, opts)
    assert not r2.built and r2.decision.action == "reuse" and fake.builds == 1


def test_engine_for_another_gpu_is_replaced(folder, monkeypatch):
    add_fake_engine(folder, platform=A100)
    old = read_manifest(folder).data["tensorrt"]["file"]
    assert "sm80" in old
    fake = FakeTensorRT(monkeypatch, platform=H100)
    r = tb.ensure_tensorrt_engine(folder, TensorRTOptions(precision="fp32", use_timing_cache=False))
    assert r.built and r.decision.action == "rebuild" and "A100" in r.decision.reason
    assert fake.last["timing_cache"] is None
    m = read_manifest(folder, verify=True)
    assert "sm90" in m.data["tensorrt"]["file"] and old not in m.data["files"] and not (folder / old).exists()


def test_failed_validation_leaves_the_folder_untouched(folder, monkeypatch):
    add_fake_engine(folder, platform=A100)
    before = (folder / "manifest.json").read_bytes()
    names = sorted(p.name for p in folder.iterdir())
    fake = FakeTensorRT(monkeypatch)
    fake.validate_error = EngineValidationError("TensorRT differs from ONNX Runtime fp32 by 0.3 (max abs)")
    with pytest.raises(EngineValidationError, match="0.3"):
        tb.ensure_tensorrt_engine(folder, TensorRTOptions(precision="fp32", use_timing_cache=False))
    assert (folder / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir() if p.name != ".tensorrt.lock") == [n for n in names if n != ".tensorrt.lock"]


def test_missing_onnx_precision_is_refused_clearly(folder, monkeypatch):
    FakeTensorRT(monkeypatch)
    with pytest.raises(EngineFolderError, match="no fp16 ONNX model"):
        tb.ensure_tensorrt_engine(folder, TensorRTOptions(precision="fp16"))


def test_build_with_backend_tensorrt_fails_fast_without_tensorrt(small_models, tmp_path, monkeypatch):
    from cmrt.engine.build import build_engine_folder

    patch_env(monkeypatch, CPU_ENV)
    model = small_models["uncond"][0]
    with pytest.raises(BackendUnavailableError, match="TensorRT cannot run here: no NVIDIA GPU"):
        build_engine_folder(str(model), out=tmp_path / "e", backend="tensorrt")
    assert not (tmp_path / "e").exists()  # refused before the export, nothing written
    with pytest.raises(ValueError, match="backend must be one of"):
        build_engine_folder(str(model), out=tmp_path / "e", backend="trt")


def test_build_with_backend_auto_says_so_in_one_line(small_models, tmp_path, monkeypatch, caplog):
    from cmrt.engine.build import BuildOptions, build_engine_folder

    patch_env(monkeypatch, CPU_ENV)
    model = small_models["uncond"][0]
    opts = BuildOptions(precisions=("fp32",), max_batch=4)
    with caplog.at_level(logging.INFO, logger="cmrt.engine.build"):
        out = build_engine_folder(str(model), out=tmp_path / "e", options=opts, backend="auto")
    lines = [r.getMessage() for r in caplog.records if "TensorRT" in r.getMessage()]
    assert len(lines) == 1 and "no TensorRT engine built" in lines[0] and "ONNX Runtime serves" in lines[0]
    data = read_manifest(out).data
    assert "tensorrt" not in data
    # the same folder is an up-to-date ONNX-only build: same build key as backend="onnxruntime"
    out2 = build_engine_folder(str(model), out=out, options=opts)
    assert read_manifest(out2).data["build_key"] == data["build_key"]


def test_build_auto_on_a_gpu_builds_and_reuses_the_engine(small_models, tmp_path, monkeypatch, caplog):
    from cmrt.engine.build import BuildOptions, build_engine_folder

    patch_env(monkeypatch, gpu_env(H100))
    fake = FakeTensorRT(monkeypatch)
    model = small_models["uncond"][0]
    opts = BuildOptions(precisions=("fp32",), max_batch=4)
    trt_opts = TensorRTOptions(precision="fp32", use_timing_cache=False)
    out = build_engine_folder(str(model), out=tmp_path / "e", options=opts, backend="auto", tensorrt=trt_opts)
    assert fake.builds == 1 and read_manifest(out).data["tensorrt"]["profile"] == {"min": 1, "opt": 4, "max": 4}
    build_engine_folder(str(model), out=out, options=opts, backend="tensorrt", tensorrt=trt_opts)
    assert fake.builds == 1  # cache hit
    # auto with a folder that cannot feed the engine (no fp16 ONNX): one line, no error
    with caplog.at_level(logging.INFO, logger="cmrt.engine.build"):
        build_engine_folder(str(model), out=out, options=opts, backend="auto")
    lines = [r.getMessage() for r in caplog.records if "TensorRT" in r.getMessage()]
    assert len(lines) == 1 and "fp16 ONNX graph, which --precision leaves out" in lines[0]
    with pytest.raises(ValueError, match="add fp16 to --precision"):
        build_engine_folder(str(model), out=out, options=opts, backend="tensorrt")


def test_cli_build_backend_tensorrt_without_tensorrt_exits_nonzero(small_models, tmp_path, monkeypatch, capsys):
    from cmrt.cli import main

    patch_env(monkeypatch, CPU_ENV)
    model = small_models["uncond"][0]
    rc = main(["build", str(model), "--out", str(tmp_path / "e"), "--backend", "tensorrt", "--precision", "fp32"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--backend tensorrt" in err and "TensorRT cannot run here" in err and "Traceback" not in err
    rc = main(["build", str(model), "--out", str(tmp_path / "e"), "--trt-opt-level", "9", "--precision", "fp32"])
    assert rc == 2 and "optimization_level" in capsys.readouterr().err


# --- the real TensorRT glue against a simulated cuda-python + TensorRT ---------------------
# Neither can be installed here. These fakes follow the documented call shapes (cuda-python's
# `(err, value)` tuples, TensorRT's name-based I/O); "device" memory is host memory and the
# "engine" runs the ONNX it was built from in ONNX Runtime. What this checks is cmrt's own
# glue: build_plan, validate_plan, TensorRTBackend (pooled aligned buffers, pinned staging,
# one context + CUDA graph per batch size, capture fallback) and cmrt.load, end to end.
import ctypes  # noqa: E402
import enum  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402


class _Sim:
    def __init__(self):
        self.buffers: dict[int, object] = {}
        self.capturing: dict[int, list] = {}
        self.enqueues = self.launches = 0
        self.capture_fails = False
        self.corrupt = 0.0
        self.contexts = 0
        self.next_stream = 1

    def alloc(self, n: int) -> int:
        buf = ctypes.create_string_buffer(int(n) + 256)
        ptr = (ctypes.addressof(buf) + 255) // 256 * 256
        self.buffers[ptr] = buf
        return ptr


def _fake_cudart(sim: _Sim) -> types.ModuleType:
    rt = types.ModuleType("cuda.bindings.runtime")

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorStreamCaptureInvalidated = 901

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStreamCaptureMode(enum.IntEnum):
        cudaStreamCaptureModeGlobal = 0
        cudaStreamCaptureModeThreadLocal = 1

    class cudaStream_t:
        def __init__(self, v):
            self.v = v

        def __int__(self):
            return self.v

    ok = cudaError_t.cudaSuccess

    def stream_id(s):
        return int(s)

    def memcpy(dst, src, n, kind, stream):
        assert kind in (cudaMemcpyKind.cudaMemcpyHostToDevice, cudaMemcpyKind.cudaMemcpyDeviceToHost)
        op = lambda: ctypes.memmove(dst, src, n)  # noqa: E731
        if stream_id(stream) in sim.capturing:
            sim.capturing[stream_id(stream)].append(op)
        else:
            op()
        return (ok,)

    def new_stream(flags):
        assert flags == rt.cudaStreamNonBlocking
        sim.next_stream += 1
        return ok, cudaStream_t(sim.next_stream)

    def end_capture(stream):
        ops = sim.capturing.pop(stream_id(stream))
        if sim.capture_fails:
            return cudaError_t.cudaErrorStreamCaptureInvalidated, None
        return ok, ops

    def launch(graph_exec, stream):
        sim.launches += 1
        for op in graph_exec:
            op()
        return (ok,)

    rt.cudaError_t, rt.cudaMemcpyKind, rt.cudaStreamCaptureMode, rt.cudaStream_t = (
        cudaError_t, cudaMemcpyKind, cudaStreamCaptureMode, cudaStream_t)
    rt.cudaStreamNonBlocking = 1
    rt.cudaGetErrorName = lambda e: (ok, cudaError_t(e).name.encode())
    rt.cudaGetErrorString = lambda e: (ok, b"simulated error")
    rt.cudaGetDeviceCount = lambda: (ok, 1)
    rt.cudaSetDevice = lambda i: (ok,)
    rt.cudaGetDeviceProperties = lambda i: (
        ok, types.SimpleNamespace(name=b"NVIDIA Simulated GPU\x00\x00", major=9, minor=0, totalGlobalMem=80 << 30))
    rt.cudaDriverGetVersion = lambda: (ok, 13000)
    rt.cudaRuntimeGetVersion = lambda: (ok, 13000)
    rt.cudaStreamCreateWithFlags = new_stream
    rt.cudaStreamSynchronize = lambda s: (ok,)
    rt.cudaStreamDestroy = lambda s: (ok,)
    rt.cudaMalloc = lambda n: (ok, sim.alloc(n))
    rt.cudaMallocHost = lambda n: (ok, sim.alloc(n))
    rt.cudaFree = rt.cudaFreeHost = lambda p: (ok,) if sim.buffers.pop(p, None) is not None else (901,)
    rt.cudaMemcpyAsync = memcpy
    rt.cudaStreamBeginCapture = lambda s, mode: (sim.capturing.setdefault(stream_id(s), []), (ok,))[1]
    rt.cudaStreamEndCapture = end_capture
    rt.cudaGraphInstantiate = lambda g, flags: (ok, list(g))
    rt.cudaGraphLaunch = launch
    rt.cudaGraphDestroy = rt.cudaGraphExecDestroy = lambda g: (ok,)
    rt.cudaGetLastError = lambda: (ok,)
    return rt


def _fake_tensorrt(sim: _Sim) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "11.4.0.9"

    class Logger:
        WARNING = 2

        def __init__(self, level=2):
            self.level = level

    class Network:
        onnx_path = None

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            self.network.onnx_path = str(path)
            return Path(path).is_file()

    class OptProfile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, mn, opt, mx):
            assert mn[0] <= opt[0] <= mx[0] and mn[1:] == opt[1:] == mx[1:]
            self.shapes[name] = (list(mn), list(opt), list(mx))

    class TimingCache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+"

    class Config:
        builder_optimization_level = 3

        def __init__(self):
            self.profiles, self.cache, self.flags_cleared = [], None, []

        def add_optimization_profile(self, p):
            self.profiles.append(p)

        def create_timing_cache(self, data):
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

        def clear_flag(self, flag):
            self.flags_cleared.append(flag)

        def set_memory_pool_limit(self, pool, size):
            pass

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            assert flags == 0  # strongly typed is the only kind in TensorRT 11
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return OptProfile()

        def build_serialized_network(self, network, config):
            assert len(config.profiles) == 1
            return json.dumps({"onnx": network.onnx_path, "shapes": config.profiles[0].shapes}).encode()

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addr, self.memory = engine, {}, {}, None
            sim.contexts += 1

        def set_device_memory(self, ptr, size):
            assert ptr % 256 == 0 and size >= self.engine.device_memory_size_v2
            self.memory = ptr
            return None

        def set_input_shape(self, name, shape):
            mn, _, mx = self.engine.profile[name]
            self.shapes[name] = tuple(shape)
            return mn[0] <= shape[0] <= mx[0] and list(shape[1:]) == mn[1:]

        def set_tensor_address(self, name, ptr):
            assert ptr % 256 == 0
            self.addr[name] = ptr
            return True

        def get_tensor_shape(self, name):
            batch = next(iter(self.shapes.values()))[0]
            return (batch, *self.engine.tails[name])

        def execute_async_v3(self, stream):
            assert isinstance(stream, int) and self.memory is not None
            if stream in sim.capturing:
                sim.capturing[stream].append(self._compute)
            else:
                sim.enqueues += 1
                self._compute()
            return True

        def _compute(self):
            feeds = {}
            for i in self.engine.session.get_inputs():
                shape = self.shapes[i.name]
                dt = self.engine.dtypes[i.name]
                n = int(np.prod(shape)) * dt.itemsize
                raw = (ctypes.c_byte * n).from_address(self.addr[i.name])
                feeds[i.name] = np.frombuffer(raw, dtype=dt).reshape(shape).copy()
            out = self.engine.session.run(None, feeds)[0].astype(np.float32) + np.float32(sim.corrupt)
            ctypes.memmove(self.addr[self.engine.output], out.ctypes.data, out.nbytes)

    class Engine:
        device_memory_size_v2 = 4096

        def __init__(self, spec):
            import onnxruntime as ort

            self.session = ort.InferenceSession(spec["onnx"], providers=["CPUExecutionProvider"])
            self.profile = spec["shapes"]
            types_ = {"tensor(float)": np.float32, "tensor(int64)": np.int64}
            ios = list(self.session.get_inputs()) + list(self.session.get_outputs())
            self.names = [t.name for t in ios]
            self.dtypes = {t.name: np.dtype(types_[t.type]) for t in ios}
            self.tails = {t.name: tuple(t.shape[1:]) for t in ios}
            self.output = self.session.get_outputs()[0].name
            self.num_io_tensors = len(self.names)

        def get_tensor_name(self, i):
            return self.names[i]

        def create_execution_context(self, strategy):
            assert strategy == trt.ExecutionContextAllocationStrategy.USER_MANAGED
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            try:
                return Engine(json.loads(bytes(data)))
            except ValueError:
                return None

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    trt.BuilderFlag = types.SimpleNamespace(TF32="TF32")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.ExecutionContextAllocationStrategy = types.SimpleNamespace(STATIC=0, USER_MANAGED=2)
    return trt


@pytest.fixture
def simulated_gpu(monkeypatch):
    from cmrt.runtime.backends import cuda

    sim = _Sim()
    rt = _fake_cudart(sim)
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = rt
    pkg = types.ModuleType("cuda")
    pkg.bindings = bindings
    for name, mod in (("cuda", pkg), ("cuda.bindings", bindings), ("cuda.bindings.runtime", rt), ("tensorrt", _fake_tensorrt(sim))):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(cuda, "_CUDART", None)
    selection.probe_environment.cache_clear()
    yield sim
    selection.probe_environment.cache_clear()


def test_simulated_gpu_is_probed_like_a_real_one(simulated_gpu, capsys):
    from cmrt.cli import main

    env = selection.probe_environment()
    assert env.tensorrt_usable and env.gpu.name == "NVIDIA Simulated GPU" and env.gpu.cc == "9.0"
    assert (env.driver_version, env.cuda_runtime_version, env.tensorrt_version) == ("13.0", "13.0", "11.4.0.9")
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "NVIDIA Simulated GPU  compute capability 9.0" in out and "auto picks      tensorrt on cuda" in out


def test_simulated_build_load_and_cuda_graphs(simulated_gpu, small_models, tmp_path, monkeypatch, capsys):
    import cmrt
    from cmrt.cli import main

    sim = simulated_gpu
    model = small_models["cond"][0]
    cache = tmp_path / "timing.cache"
    rc = main(["build", str(model), "--out", str(tmp_path / "e"), "--precision", "fp32", "--max-batch", "8",
               "--backend", "tensorrt", "--trt-precision", "fp32", "--timing-cache", str(cache)])
    assert rc == 0
    assert "tensorrt engine: unet.fp32.trt11.4.sm90.b1-4-8.plan" in capsys.readouterr().out
    assert cache.read_bytes() == b"+"  # the timing cache was saved after the build
    data = read_manifest(tmp_path / "e", verify=True).data
    e = data["tensorrt"]
    assert e["validation"]["max_abs_error"] == 0.0 and e["validation"]["batch_sizes"] == [1, 4, 8]
    assert e["gpu"] == {"name": "NVIDIA Simulated GPU", "compute_capability": "9.0"}
    assert main(["info", str(tmp_path / "e")]) == 0
    assert "tensorrt        unet.fp32.trt11.4.sm90.b1-4-8.plan  TensorRT 11.4.0.9, NVIDIA Simulated GPU" in capsys.readouterr().out

    ref = cmrt.load(tmp_path / "e", device="cpu")
    sim.enqueues = sim.launches = 0
    pipe = cmrt.load(tmp_path / "e")  # auto: TensorRT on the (simulated) GPU
    assert (pipe.backend.name, pipe.backend.device) == ("tensorrt", "cuda")
    for batch in (1, 3, 8, 3):
        kw = dict(batch_size=batch, seed=batch, timesteps=[22, 0], output_type="np")
        np.testing.assert_array_equal(pipe(**kw).images, ref(**kw).images)
    assert pipe.backend.graph_batches == [1, 3, 8]
    # one warm-up enqueue per batch size, every call after that a graph replay
    assert sim.enqueues == 3 and sim.launches == 8
    with pytest.raises(ValueError, match="outside this TensorRT engine's profile 1..8"):
        pipe.backend.run(np.zeros((9, 3, 16, 16), np.float32), np.zeros(9, np.float32), np.zeros(9, np.int64))

    plain = cmrt.load(tmp_path / "e", backend="tensorrt", use_cuda_graph=False)
    kw = dict(batch_size=2, seed=5, output_type="np")
    np.testing.assert_array_equal(plain(**kw).images, ref(**kw).images)
    assert plain.backend.graph_batches == []

    # capture failure: a warning, then plain enqueue with the same results
    sim.capture_fails = True
    flaky = cmrt.load(tmp_path / "e", backend="tensorrt")
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed for batch 2"):
        out = flaky(**kw).images
    np.testing.assert_array_equal(out, ref(**kw).images)
    assert flaky.backend.graph_batches == [] and 2 in flaky.backend.graph_failures
    flaky.backend.close()
    flaky.backend.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        flaky.backend.run(np.zeros((1, 3, 16, 16), np.float32), np.zeros(1, np.float32), np.zeros(1, np.int64))

    # the second build is a cache hit
    mtime = (tmp_path / "e" / e["file"]).stat().st_mtime_ns
    assert not tb.ensure_tensorrt_engine(tmp_path / "e", TensorRTOptions(precision="fp32", timing_cache=str(cache))).built
    assert (tmp_path / "e" / e["file"]).stat().st_mtime_ns == mtime


def test_simulated_engine_that_misses_fails_the_build(simulated_gpu, small_models, tmp_path):
    from cmrt.engine.build import BuildOptions, build_engine_folder

    sim = simulated_gpu
    model = small_models["uncond"][0]
    opts = BuildOptions(precisions=("fp32",), max_batch=4)
    out = build_engine_folder(str(model), out=tmp_path / "e", options=opts)  # ONNX only
    before = (out / "manifest.json").read_bytes()
    sim.corrupt = 0.25
    with pytest.raises(EngineValidationError, match=r"differs from ONNX Runtime fp32 by 0.25 .*tolerance 0.001"):
        build_engine_folder(str(model), out=out, options=opts, backend="auto",
                            tensorrt=TensorRTOptions(precision="fp32", use_timing_cache=False))
    assert (out / "manifest.json").read_bytes() == before
    assert not [p for p in out.iterdir() if p.suffix in (".plan", ".validating")]
    sim.corrupt = float("nan")
    with pytest.raises(EngineValidationError, match="NaN or Inf"):
        build_engine_folder(str(model), out=out, options=opts, backend="tensorrt",
                            tensorrt=TensorRTOptions(precision="fp32", use_timing_cache=False))

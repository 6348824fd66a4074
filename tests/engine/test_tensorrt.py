"""The pure TensorRT decisions (cmrt.engine.tensorrt): profiles, options, names, reuse and rebuild."""
from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from cmrt.build import tensorrt as tb
from cmrt.engine import tensorrt as te
from cmrt.engine.errors import BackendUnavailableError, EngineFolderError, EngineValidationError
from cmrt.engine.io_spec import sample_inputs
from cmrt.engine.manifest import read_manifest
from cmrt.engine.tensorrt import (
    Platform,
    Profile,
    TensorRTOptions,
    engine_decision,
    engine_file_name,
    profile_for,
    rebuild_blocker,
    wanted_settings,
)
from cmrt.runtime.backends import probe
from tests.fakes.environments import (
    A100,
    CPU_ENV,
    FOLDER_OPTS,
    H100,
    H100_PCIE,
    H100_TRT113,
    FakeTensorRT,
    add_fake_engine,
    fake_validation,
    gpu_env,
    patch_env,
)


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
    assert te.sm_tag("8.6") == "sm86" and te.short_version("11") == "11"


def test_timing_cache_is_per_gpu_and_tensorrt(monkeypatch, tmp_path):
    monkeypatch.setenv("CMRT_CACHE", str(tmp_path))
    p = te.default_timing_cache(H100)
    assert p.parent == tmp_path / "tensorrt"
    assert p.name == "timing-nvidia-h100-80gb-hbm3-sm90-trt11.4.0.9.cache"
    assert te.default_timing_cache(A100) != p and te.default_timing_cache(H100_TRT113) != p


# --- rebuild decisions ----------------------------------------------------------------------
def _entry(platform=H100, sha="sha-a", options=TensorRTOptions(), batches=Profile(1, 4, 16)):
    return te.engine_entry(
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
    assert te.onnx_digest(data, "fp16") == "1+2"
    assert te.onnx_digest(data, "fp32") == "3"
    assert te.onnx_digest(data, "int8") is None


SCHED = {"sigma_min": 0.002, "sigma_max": 80.0}


def test_validation_inputs_and_comparison():
    unet = {"sample_size": 8, "in_channels": 3, "num_class_embeds": 10}
    f = sample_inputs(unet, SCHED, 3, seed=0)
    assert f["sample"].shape == (3, 3, 8, 8) and f["sample"].dtype == np.float32
    assert f["timestep"].dtype == np.float32 and (-1554 < f["timestep"]).all() and (f["timestep"] < 1096).all()
    assert f["class_labels"].dtype == np.int64 and ((0 <= f["class_labels"]) & (f["class_labels"] < 10)).all()
    assert "class_labels" not in sample_inputs({**unet, "num_class_embeds": None}, SCHED, 2, seed=0)
    ref = np.ones((2, 3), np.float32)
    r = tb.compare_outputs(ref + 0.01, ref)
    assert r["finite"] and r["max_abs_error"] == pytest.approx(0.01, rel=1e-4)
    bad = ref.copy()
    bad[0, 0] = np.nan
    r = tb.compare_outputs(bad, ref)
    assert not r["finite"] and math.isinf(r["max_abs_error"])
    with pytest.raises(EngineValidationError, match="shape"):
        tb.compare_outputs(ref[:1], ref)



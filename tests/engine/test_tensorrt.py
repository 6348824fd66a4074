"""The pure TensorRT decisions (cmrt.engine.tensorrt): profiles, options, names, reuse and rebuild."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from cmrt.build import tensorrt as tb
from cmrt.engine import tensorrt as te
from cmrt.engine.errors import EngineValidationError
from cmrt.engine.io_spec import sample_inputs
from cmrt.engine.manifest import read_manifest
from cmrt.engine.tensorrt import (
    Profile,
    TensorRTOptions,
    engine_decision,
    engine_file_name,
    profile_for,
    rebuild_blocker,
    wanted_settings,
)
from tests.fakes.environments import (
    A100,
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
    assert engine_file_name("fp16", "11.4.0.9", (9, 0), Profile(1, 4, 16)) == "unet.fp16.trt11.4.sm90.b1-1-1+2-4-16.plan"
    assert engine_file_name("fp16", "11.4.0.9", (9, 0), Profile(1, 4, 16), 5) == "unet.fp16.trt11.4.sm90.b1-1-1+2-4-16.lvl5.plan"
    assert engine_file_name("fp32", "11.4", (12, 0), Profile(2, 2, 8), 3) == "unet.fp32.trt11.4.sm120.b2-2-8.lvl3.plan"
    assert engine_file_name("fp32", "11.4", (12, 0), Profile(1, 1, 1)) == "unet.fp32.trt11.4.sm120.b1-1-1.plan"
    assert te.sm_tag("8.6") == "sm86" and te.short_version("11") == "11"


def test_timing_cache_is_per_gpu_and_tensorrt(monkeypatch, tmp_path):
    monkeypatch.setenv("CMRT_CACHE", str(tmp_path))
    p = te.default_timing_cache(H100)
    assert p.parent == tmp_path / "tensorrt"
    assert p.name == "timing-nvidia-h100-80gb-hbm3-sm90-trt11.4.0.9.cache"
    assert te.default_timing_cache(A100) != p and te.default_timing_cache(H100_TRT113) != p


def test_latency_profiles_give_batch_1_its_own():
    assert te.DEFAULT_OPTIMIZATION_LEVEL == 5 and TensorRTOptions().optimization_level == 5
    assert te.optimization_profiles(Profile(1, 4, 16)) == (Profile(1, 1, 1), Profile(2, 4, 16))
    assert te.optimization_profiles(Profile(1, 1, 16)) == (Profile(1, 1, 1), Profile(2, 2, 16))  # opt 1 is the first's
    assert te.optimization_profiles(Profile(1, 2, 2)) == (Profile(1, 1, 1), Profile(2, 2, 2))
    assert te.optimization_profiles(Profile(1, 1, 1)) == (Profile(1, 1, 1),)
    assert te.optimization_profiles(Profile(2, 4, 8)) == (Profile(2, 4, 8),)  # no batch 1 to serve
    profiles = te.optimization_profiles(Profile(1, 4, 16))
    assert [te.profile_index_for(profiles, b) for b in (1, 2, 4, 16)] == [0, 1, 1, 1]
    assert te.validation_batches(profiles) == [1, 2, 4, 16]
    with pytest.raises(ValueError, match=r"batch 17 is outside this engine's profiles \(1..1, 2..16\)"):
        te.profile_index_for(profiles, 17)
    with pytest.raises(TypeError, match="batch must be an integer"):
        te.profile_index_for(profiles, 1.0)


def test_profile_shapes_are_what_the_builder_sets():
    from cmrt.engine.io_spec import io_spec, step_io_spec

    unet = {"sample_size": 16, "in_channels": 3, "out_channels": 3, "num_class_embeds": 10}
    profiles = te.optimization_profiles(Profile(1, 4, 16))
    shapes = te.profile_shapes(profiles, io_spec(unet)["inputs"])
    assert shapes == [
        {"sample": ((1, 3, 16, 16),) * 3, "timestep": ((1,),) * 3, "class_labels": ((1,),) * 3},
        {"sample": ((2, 3, 16, 16), (4, 3, 16, 16), (16, 3, 16, 16)), "timestep": ((2,), (4,), (16,)),
         "class_labels": ((2,), (4,), (16,))},
    ]
    step = te.profile_shapes(profiles, step_io_spec(unet)["inputs"])  # the step constants have one shape: not profiled
    assert set(step[1]) == {"x", "timestep", "class_labels", "noise_term"} and step[1]["noise_term"][2] == (16, 3, 16, 16)
    with pytest.raises(ValueError, match="only the first axis"):
        te.profile_shapes(profiles, [{"name": "a", "shape": ["batch", "h"]}])
    with pytest.raises(ValueError, match="first axis must be 'batch'"):
        te.profile_shapes(profiles, [{"name": "a", "shape": ["n", 3]}])


def test_the_entry_records_the_profiles_and_the_level():
    e = _entry(batches=Profile(1, 4, 8))
    assert e["format"] == te.ENTRY_FORMAT == 3
    assert e["profile"] == {"min": 1, "opt": 4, "max": 8}
    assert e["profiles"] == [{"min": 1, "opt": 1, "max": 1}, {"min": 2, "opt": 4, "max": 8}]
    assert e["options"]["optimization_level"] == 5
    wanted = wanted_settings(Profile(1, 4, 8), TensorRTOptions())
    assert wanted["profiles"] == e["profiles"] and engine_decision(e, H100, "sha-a", wanted).action == "reuse"


def test_an_engine_built_before_latency_profiles_is_rebuilt_with_the_reason():
    from tests.fakes.environments import format1_entry

    old = format1_entry(_entry(), "unet.fp16.trt11.4.sm90.b1-4-16.plan")
    assert old["format"] == 1 and "profiles" not in old and old["options"]["optimization_level"] == 3
    d = engine_decision(old, H100, "sha-a", wanted_settings(Profile(1, 4, 16), TensorRTOptions()))
    assert d.action == "rebuild"
    assert d.reason == ("the engine was built before latency profiles (one profile b1-4-16 at optimization level 3, so "
                        "batch 1 runs kernels tuned for batch 4); this cmrt builds profiles b1-1-1 and b2-4-16 at "
                        "optimization level 5")
    assert "built before latency profiles" in engine_decision(old, H100, "sha-a").reason
    broken = _entry()
    del broken["profiles"]
    assert "incomplete" in engine_decision(broken, H100, "sha-a").reason


def test_an_engine_built_from_the_plain_unet_graph_is_rebuilt_with_the_reason():
    """Entry format 2 (latency profiles, built from the plain UNet graph, before step-graph engines)."""
    old = dict(_entry(), format=2)
    d = engine_decision(old, H100, "sha-a", wanted_settings(Profile(1, 4, 16), TensorRTOptions()))
    assert d.action == "rebuild" and d.reason.startswith("the engine was built from the plain UNet graph")
    assert "one CUDA graph" in d.reason and "one host synchronize" in d.reason


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
        (TensorRTOptions(optimization_level=3), Profile(1, 4, 16), "optimization_level"),
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
    step = {"file": "unet.fp16.step.onnx"}
    assert rebuild_blocker({"onnx": {"fp16": {"step": step}}}, "fp16") is None
    assert rebuild_blocker({"onnx": {"fp16": {"step": step}}}, "fp16", tensorrt_missing="no GPU") == "no GPU"
    msg = rebuild_blocker({"onnx": {"fp16": {}}}, "fp16")  # a folder built before step graphs
    assert "no step graph of its fp16 graph" in msg and "rebuild the folder with `cmrt build MODEL`" in msg


def test_onnx_digest_is_the_step_graphs_and_its_weights():
    """The engine is built from the step graph, which reads its graph's weight file: both key it."""
    data = {
        "onnx": {"fp16": {"file": "a.onnx", "external_data": "a.onnx.data", "step": {"file": "a.step.onnx"}},
                 "fp32": {"file": "b.onnx", "external_data": None, "step": {"file": "b.step.onnx"}},
                 "old": {"file": "c.onnx", "external_data": None}},
        "files": {"a.onnx": {"sha256": "1"}, "a.onnx.data": {"sha256": "2"}, "b.onnx": {"sha256": "3"},
                  "a.step.onnx": {"sha256": "4"}, "b.step.onnx": {"sha256": "5"}, "c.onnx": {"sha256": "6"}},
    }
    assert te.onnx_digest(data, "fp16") == "4+2"
    assert te.onnx_digest(data, "fp32") == "5"
    assert te.onnx_digest(data, "old") is None  # no step graph: nothing to build from
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


# --- a folder built before latency profiles, through cmrt.load ----------------------------
@pytest.fixture
def old_folder(engine_copy):
    return engine_copy


def test_a_folder_built_before_latency_profiles_is_rebuilt_on_load(old_folder, monkeypatch, caplog):
    import cmrt
    import cmrt.runtime.backends.tensorrt_backend as trt_backend

    from tests.runtime.backends.test_selection import FakeTensorRTBackend

    old = add_fake_engine(old_folder, precision="fp32", before_profiles=True)
    assert old["file"] == "unet.fp32.trt11.4.sm90.b1-4-8.plan"
    patch_env(monkeypatch, gpu_env(H100))
    fake = FakeTensorRT(monkeypatch)
    monkeypatch.setattr(trt_backend, "TensorRTBackend", FakeTensorRTBackend)
    with caplog.at_level(logging.INFO, logger="cmrt"):
        pipe = cmrt.load(old_folder, backend="tensorrt", precision="fp32")
    logged = [r.getMessage() for r in caplog.records if "built before latency profiles" in r.getMessage()]
    assert logged and "this cmrt builds profiles b1-1-1 and b2-4-8 at optimization level 5" in logged[0]
    assert fake.builds == 1 and fake.last["batches"] == Profile(1, 4, 8)
    e = read_manifest(old_folder, verify=True).data["tensorrt"]
    assert e["format"] == 3 and e["options"]["optimization_level"] == 5
    assert e["profiles"] == [{"min": 1, "opt": 1, "max": 1}, {"min": 2, "opt": 4, "max": 8}]
    assert e["file"] == "unet.fp32.trt11.4.sm90.b1-1-1+2-4-8.lvl5.plan" == pipe.backend.plan_path.name
    assert not (old_folder / old["file"]).exists()
    cmrt.load(old_folder, backend="tensorrt", precision="fp32")
    assert fake.builds == 1  # now current: reused


def test_a_folder_built_before_latency_profiles_that_cannot_be_rebuilt_still_loads(old_folder, monkeypatch, caplog):
    """Its rebuild fails here (the new engine does not validate): auto says why it rebuilds, then
    falls back to ONNX Runtime; an explicit TensorRT request gets the build's error."""
    import cmrt

    add_fake_engine(old_folder, precision="fp32", before_profiles=True)
    patch_env(monkeypatch, gpu_env(H100))
    fake = FakeTensorRT(monkeypatch)
    fake.validate_error = EngineValidationError("TensorRT differs from ONNX Runtime fp32 by 0.3 (max abs)")
    with caplog.at_level(logging.WARNING, logger="cmrt"):
        pipe = cmrt.load(old_folder)
    messages = [r.getMessage() for r in caplog.records]
    assert (pipe.backend.name, pipe.backend.device) == ("onnxruntime", "cpu") and fake.builds == 1, messages
    assert any("built before latency profiles" in m for m in messages), messages
    assert any("TensorRT could not be used" in m and "differs from ONNX Runtime" in m for m in messages), messages
    assert pipe(batch_size=2, seed=1, output_type="np").images.shape == (2, 16, 16, 3)
    with pytest.raises(EngineValidationError, match="differs from ONNX Runtime"):
        cmrt.load(old_folder, backend="tensorrt")

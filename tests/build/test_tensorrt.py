"""TensorRT engine build orchestration (cmrt.build.tensorrt) on the CPU.

TensorRT itself cannot run here: `ensure_tensorrt_engine` / `build_engine_folder(backend=...)`
are driven with the TensorRT-touching steps replaced by `tests.fakes.environments.FakeTensorRT`,
and the real glue runs against the simulated GPU of `tests.fakes.gpu`. The real engine is
tested by tests/gpu/test_gpu_path.py on a GPU.
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from cmrt.build import tensorrt as tb
from cmrt.engine import tensorrt as te
from cmrt.engine.errors import BackendUnavailableError, EngineFolderError, EngineValidationError
from cmrt.engine.manifest import read_manifest
from cmrt.engine.tensorrt import (
    Platform,
    Profile,
    TensorRTOptions,
)
from cmrt.runtime.backends import probe
from tests.fakes.environments import (
    A100,
    CPU_ENV,
    H100,
    FakeTensorRT,
    add_fake_engine,
    fake_validation,
    gpu_env,
    patch_env,
)


# --- the build orchestration with fake TensorRT steps ------------------------------------
@pytest.fixture
def folder(engine_copy):
    return engine_copy


def test_engine_is_added_to_the_folder_then_reused(folder, monkeypatch, tmp_path):
    fake = FakeTensorRT(monkeypatch)
    before = json.loads((folder / "manifest.json").read_text())
    opts = TensorRTOptions(precision="fp32", timing_cache=str(tmp_path / "tc.cache"))
    r = tb.ensure_tensorrt_engine(folder, opts)
    assert r.built and fake.builds == 1 and r.decision.action == "build"
    assert r.plan.name == "unet.fp32.trt11.4.sm90.b1-1-1+2-4-8.lvl5.plan" and r.plan.is_file()
    # built from the (sanitized) step graph, over its inputs
    assert fake.last["onnx"] == "unet.fp32.step.sanitized.onnx"
    assert fake.last["inputs"] == ["x", "timestep", "class_labels", "step_coefs", "noise_term"]
    assert fake.last["timing_cache"] == tmp_path / "tc.cache"
    m = read_manifest(folder, verify=True)  # the plan is checksummed like every other file
    e = m.data["tensorrt"]
    assert e["gpu"] == {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    assert e["tensorrt_version"] == "11.4.0.9" and e["profile"] == {"min": 1, "opt": 4, "max": 8}
    assert e["onnx_sha256"] == tb.onnx_digest(before, "fp32") and e["onnx_file"] == "unet.fp32.step.onnx"
    # the step graph + the weight file it reads
    assert e["onnx_sha256"] == (before["files"]["unet.fp32.step.onnx"]["sha256"] + "+"
                                + before["files"]["unet.fp32.onnx.data"]["sha256"])
    assert e["validation"]["tolerance"] == 1e-3 and e["options"]["optimization_level"] == 5
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
    from cmrt.build.folder import build_engine_folder

    patch_env(monkeypatch, CPU_ENV)
    model = small_models["uncond"][0]
    with pytest.raises(BackendUnavailableError, match="TensorRT cannot run here: no NVIDIA GPU"):
        build_engine_folder(str(model), out=tmp_path / "e", backend="tensorrt")
    assert not (tmp_path / "e").exists()  # refused before the export, nothing written
    with pytest.raises(ValueError, match="backend must be one of"):
        build_engine_folder(str(model), out=tmp_path / "e", backend="trt")


def test_build_with_backend_auto_says_so_in_one_line(small_models, tmp_path, monkeypatch, caplog):
    from cmrt.build.folder import build_engine_folder
    from cmrt.engine.options import BuildOptions

    patch_env(monkeypatch, CPU_ENV)
    model = small_models["uncond"][0]
    opts = BuildOptions(precisions=("fp32",), max_batch=4)
    with caplog.at_level(logging.INFO, logger="cmrt.build.folder"):
        out = build_engine_folder(str(model), out=tmp_path / "e", options=opts, backend="auto")
    lines = [r.getMessage() for r in caplog.records if "TensorRT" in r.getMessage()]
    assert len(lines) == 1 and "no TensorRT engine built" in lines[0] and "ONNX Runtime serves" in lines[0]
    data = read_manifest(out).data
    assert "tensorrt" not in data
    # the same folder is an up-to-date ONNX-only build: same build key as backend="onnxruntime"
    out2 = build_engine_folder(str(model), out=out, options=opts)
    assert read_manifest(out2).data["build_key"] == data["build_key"]


def test_build_auto_on_a_gpu_builds_and_reuses_the_engine(small_models, tmp_path, monkeypatch, caplog):
    from cmrt.build.folder import build_engine_folder
    from cmrt.engine.options import BuildOptions

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
    with caplog.at_level(logging.INFO, logger="cmrt.build.folder"):
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


def test_simulated_gpu_is_probed_like_a_real_one(simulated_gpu, capsys):
    from cmrt.cli import main

    env = probe.probe_environment()
    assert env.tensorrt_usable and env.gpu.name == "NVIDIA Simulated GPU" and env.gpu.cc == "9.0"
    assert (env.driver_version, env.cuda_runtime_version, env.tensorrt_version) == ("13.0", "13.0", "11.4.0.9")
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "NVIDIA Simulated GPU  compute capability 9.0" in out and "auto picks      tensorrt on cuda" in out


def _build_simulated(model, out, cache=None, precision="fp32", max_batch=8):
    from cmrt.cli import main

    args = ["build", str(model), "--out", str(out), "--precision", precision, "--max-batch", str(max_batch),
            "--backend", "tensorrt", "--trt-precision", precision]
    args += ["--timing-cache", str(cache)] if cache else ["--no-timing-cache"]
    return main(args)


def test_simulated_build_load_and_cuda_graphs(simulated_gpu, small_models, tmp_path, capsys):
    """The whole TensorRT flow on the strict fake: build (polygraphy), validate, load, run, multi-step generation."""
    import cmrt
    from cmrt.cli import main
    from tests.fakes.tensorrt_sim import CACHE_MAGIC, plan_header

    sim = simulated_gpu
    model = small_models["cond"][0]
    cache = tmp_path / "timing.cache"
    assert _build_simulated(model, tmp_path / "e", cache) == 0
    assert "tensorrt engine: unet.fp32.trt11.4.sm90.b1-1-1+2-4-8.lvl5.plan" in capsys.readouterr().out
    assert cache.read_bytes().startswith(CACHE_MAGIC) and b"NVIDIA Simulated GPU" in cache.read_bytes()
    data = read_manifest(tmp_path / "e", verify=True).data
    e = data["tensorrt"]
    assert e["validation"]["max_abs_error"] < 1e-5 and e["validation"]["batch_sizes"] == [1, 2, 4, 8]  # folded graph
    assert set(e["validation"]["per_case"]) == {f"batch {b}, step {i}" for b in (1, 2, 4, 8) for i in (0, 1)}
    assert all(c["x_next_max_abs_error"] < 1e-5 and c["model_output_max_abs_error"] < 1e-5 for c in e["validation"]["per_case"].values())
    assert e["validation"]["comparator"].startswith("polygraphy Comparator")
    assert e["gpu"] == {"name": "NVIDIA Simulated GPU", "compute_capability": "9.0"}
    # the manifest records both profiles and the level, and the plan really has them
    assert e["format"] == 3 and e["onnx_file"] == "unet.fp32.step.onnx" and e["options"]["optimization_level"] == 5
    assert e["profiles"] == [{"min": 1, "opt": 1, "max": 1}, {"min": 2, "opt": 4, "max": 8}]
    assert e["io"] == {"inputs": data["onnx"]["fp32"]["step"]["inputs"], "outputs": data["onnx"]["fp32"]["step"]["outputs"]}
    header = plan_header(tmp_path / "e" / e["file"])
    sanitized = e["options"]["onnx_sanitized"]
    assert header["nodes"] == sanitized["nodes_after"] < sanitized["nodes_before"]  # built from the folded graph
    assert header["tf32"] is False and header["optimization_level"] == 5  # fp32 means no TF32
    assert [t["name"] for t in header["io"]] == ["x", "timestep", "class_labels", "step_coefs", "noise_term", "x_next", "model_output"]
    assert header["profiles"] == [
        {n: [[b, *rest] for b in batches] for n, rest in (("x", [3, 16, 16]), ("timestep", []), ("class_labels", []),
                                                          ("noise_term", [3, 16, 16]))} | {"step_coefs": [[5]] * 3}
        for batches in ((1, 1, 1), (2, 4, 8))
    ]
    assert main(["info", str(tmp_path / "e")]) == 0
    assert "tensorrt        unet.fp32.trt11.4.sm90.b1-1-1+2-4-8.lvl5.plan  TensorRT 11.4.0.9, NVIDIA Simulated GPU" in capsys.readouterr().out
    assert not sim.violations, sim.violations

    ref = cmrt.load(tmp_path / "e", device="cpu")
    pipe = cmrt.load(tmp_path / "e")  # auto: TensorRT on the (simulated) GPU, through the step graph
    assert (pipe.backend.name, pipe.backend.device) == ("tensorrt", "cuda") and pipe.step_graph
    with sim.measure() as counts:
        for batch in (1, 3, 8, 3):
            kw = dict(batch_size=batch, seed=batch, timesteps=[22, 0], output_type="np")
            np.testing.assert_allclose(pipe(**kw).images, ref(**kw).images, rtol=0, atol=1e-5)
    assert pipe.backend.graph_batches == [1, 3, 8]
    # per new batch size a context (one warm-up enqueue and its synchronize) and a capture; then every
    # generation is one graph launch (both steps) and one host synchronize
    assert (counts.enqueues, counts.graph_launches, counts.captures) == (3, 4, 3)
    assert counts.host_syncs == 3 + 4
    with sim.measure() as counts:
        pipe(batch_size=3, seed=1, timesteps=[22, 0], output_type="np")
    assert (counts.host_syncs, counts.graph_launches, counts.enqueues, counts.memcpy_async, counts.captures) == (1, 1, 0, 2, 0)
    pipe.backend.run(np.zeros((3, 3, 16, 16), np.float32), np.zeros(3, np.float32), np.zeros(3, np.int64))
    with sim.measure() as counts:
        pipe.backend.run(np.zeros((3, 3, 16, 16), np.float32), np.zeros(3, np.float32), np.zeros(3, np.int64))
    assert (counts.host_syncs, counts.graph_launches, counts.enqueues, counts.memcpy_async) == (1, 1, 0, 2)
    with pytest.raises(ValueError, match="outside this TensorRT engine's profiles 1..8"):
        pipe.backend.run(np.zeros((9, 3, 16, 16), np.float32), np.zeros(9, np.float32), np.zeros(9, np.int64))

    plain = cmrt.load(tmp_path / "e", backend="tensorrt", use_cuda_graph=False)
    kw = dict(batch_size=2, seed=5, output_type="np")
    np.testing.assert_allclose(plain(**kw).images, ref(**kw).images, rtol=0, atol=1e-5)
    assert plain.backend.graph_batches == []

    # an engine a capture cannot hold: a warning, then plain enqueue with the same results
    sim.trt.capture_unsupported = True
    flaky = cmrt.load(tmp_path / "e", backend="tensorrt")
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed for batch 2"):
        out = flaky(**kw).images
    np.testing.assert_allclose(out, ref(**kw).images, rtol=0, atol=1e-5)
    assert flaky.backend.graph_batches == [] and 2 in flaky.backend.graph_failures
    flaky.backend.close()
    flaky.backend.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        flaky.backend.run(np.zeros((1, 3, 16, 16), np.float32), np.zeros(1, np.float32), np.zeros(1, np.int64))
    sim.violations = [v for v in sim.violations if "cannot be captured" not in v and "inside a stream capture" not in v]
    assert not sim.violations, sim.violations

    # the second build is a cache hit
    mtime = (tmp_path / "e" / e["file"]).stat().st_mtime_ns
    assert not tb.ensure_tensorrt_engine(tmp_path / "e", TensorRTOptions(precision="fp32", timing_cache=str(cache))).built
    assert (tmp_path / "e" / e["file"]).stat().st_mtime_ns == mtime


def test_a_timing_cache_from_another_gpu_is_replaced_not_fatal(simulated_gpu, folder, tmp_path, caplog):
    """Issue #15 item 1: TensorRT refuses a cache made on another GPU (set_timing_cache returns False and
    get_timing_cache() is None afterwards); the build must go on with a fresh cache and say why."""
    from tests.fakes.tensorrt_sim import CACHE_MAGIC

    sim = simulated_gpu
    cache = tmp_path / "shared.cache"
    sim.devices[0].name = "NVIDIA A100-SXM4-80GB"  # the cache is made on another GPU
    cache.write_bytes(bytes(sim.trt.Builder(None).create_builder_config().create_timing_cache(b"").serialize()))
    sim.devices[0].name = "NVIDIA Simulated GPU"
    with caplog.at_level(logging.WARNING, logger="cmrt.build.tensorrt"):
        r = tb.ensure_tensorrt_engine(folder, TensorRTOptions(precision="fp32", timing_cache=str(cache)))
    assert r.built and r.entry["options"]["timing_cache_was_warm"] is False
    lines = [r.getMessage() for r in caplog.records if "timing cache" in r.getMessage()]
    assert len(lines) == 1 and "made on another GPU or by another TensorRT version" in lines[0]
    data = cache.read_bytes()
    assert data.startswith(CACHE_MAGIC) and b"NVIDIA Simulated GPU" in data and b"A100" not in data


def test_a_warm_timing_cache_is_used(simulated_gpu, folder, tmp_path):
    trt_opts = TensorRTOptions(precision="fp32", timing_cache=str(tmp_path / "tc.cache"))
    assert tb.ensure_tensorrt_engine(folder, trt_opts).entry["options"]["timing_cache_was_warm"] is False
    assert tb.ensure_tensorrt_engine(folder, trt_opts, force=True).entry["options"]["timing_cache_was_warm"] is True
    assert simulated_gpu.trt.timing_cache_hits == 1


def test_sanitized_graph_computes_what_the_folder_graph_does(small_models, tmp_path):
    """The graph TensorRT is built from: constants folded (polygraphy's surgeon), same outputs in ONNX Runtime."""
    import onnx
    import onnxruntime as ort

    from cmrt.engine.io_spec import sample_inputs

    folder = small_models["cond"][1]
    m = read_manifest(folder)
    src = m.onnx_path("fp32")
    out, facts = tb.sanitize_onnx(src, tmp_path / "s")
    assert facts["nodes_after"] < facts["nodes_before"] == len(onnx.load(str(src), load_external_data=False).graph.node)
    folded = onnx.load(str(out))
    assert not [n for n in folded.graph.node if n.op_type == "Constant"]
    assert [i.name for i in folded.graph.input] == ["sample", "timestep", "class_labels"]
    want = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        feeds = sample_inputs(m.unet, m.scheduler_config, batch, seed=batch)
        np.testing.assert_allclose(got.run(None, feeds)[0], want.run(None, feeds)[0], rtol=0, atol=1e-5)


def test_simulated_engine_that_misses_fails_the_build(simulated_gpu, folder):
    sim = simulated_gpu
    before = (folder / "manifest.json").read_bytes()
    names = sorted(p.name for p in folder.iterdir())
    opts = TensorRTOptions(precision="fp32", use_timing_cache=False)
    sim.trt.corrupt = 0.25
    with pytest.raises(EngineValidationError, match=r"differs from ONNX Runtime fp32 by 0.25 .*tolerance 0.001"):
        tb.ensure_tensorrt_engine(folder, opts)
    assert (folder / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir() if p.name != ".tensorrt.lock") == names  # no plan, no sanitized graph
    sim.trt.corrupt = float("nan")
    with pytest.raises(EngineValidationError, match="NaN or Inf"):
        tb.ensure_tensorrt_engine(folder, opts)


def _engine_of_an_older_cmrt(folder, fmt):
    """Install in `folder` the TensorRT engine an older cmrt built on this (simulated) GPU: from the plain
    UNet graph with one optimization profile over batch 1..8 (opt 4); entry format 2 (phase 1 of #17:
    latency profiles recorded, level 5) or 1 (before them: level 3)."""
    import tensorrt as trt

    from cmrt.engine.manifest import write_manifest
    from cmrt.engine.manifest import file_record
    from tests.fakes.environments import format1_entry

    data = json.loads((folder / "manifest.json").read_text())
    builder = trt.Builder(trt.Logger())
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    assert trt.OnnxParser(network, trt.Logger()).parse_from_file(str(folder / "unet.fp32.onnx"))
    config = builder.create_builder_config()
    config.builder_optimization_level = 5 if fmt == 2 else 3
    profile = builder.create_optimization_profile()
    for name, rest in (("sample", (3, 16, 16)), ("timestep", ()), ("class_labels", ())):
        profile.set_shape(name, (1, *rest), (4, *rest), (8, *rest))
    config.add_optimization_profile(profile)
    name = "unet.fp32.trt11.4.sm90." + ("b1-1-1+2-4-8.plan" if fmt == 2 else "b1-4-8.plan")
    (folder / name).write_bytes(bytes(builder.build_serialized_network(network, config)))
    options = TensorRTOptions(precision="fp32", optimization_level=config.builder_optimization_level)
    platform = Platform("NVIDIA Simulated GPU", (9, 0), "11.4.0.9")
    plain = data["files"]["unet.fp32.onnx"]["sha256"] + "+" + data["files"]["unet.fp32.onnx.data"]["sha256"]
    entry = te.engine_entry(name, options, Profile(1, 4, 8), platform, "unet.fp32.onnx", plain,
                            fake_validation(1e-3), {"build_seconds": 1.0})
    entry = dict(entry, format=2, io=None) if fmt == 2 else format1_entry(entry, name)
    data["tensorrt"] = entry
    data["files"][name] = file_record(folder, name)
    write_manifest(folder, data)
    return name


@pytest.mark.parametrize("fmt, reason", [(2, "built from the plain UNet graph"), (1, "built before latency profiles")])
def test_a_folder_built_by_an_older_cmrt_is_rebuilt_on_load_with_the_reason(simulated_gpu, folder, caplog, fmt, reason):
    """End to end on the strict fake: the older engine is never deserialized into the step-graph backend;
    `cmrt.load` logs why it rebuilds, builds from the step graph, and serves one synchronize per generation."""
    import cmrt

    sim = simulated_gpu
    old = _engine_of_an_older_cmrt(folder, fmt)
    ref = cmrt.load(folder, device="cpu")
    with caplog.at_level(logging.WARNING, logger="cmrt"):
        pipe = cmrt.load(folder, precision="fp32")  # auto
    warned = [r.getMessage() for r in caplog.records if "building its TensorRT engine now" in r.getMessage()]
    assert len(warned) == 1 and reason in warned[0]
    assert (pipe.backend.name, pipe.step_graph) == ("tensorrt", True)
    e = read_manifest(folder, verify=True).data["tensorrt"]
    assert e["format"] == 3 and e["onnx_file"] == "unet.fp32.step.onnx" and not (folder / old).exists()
    kw = dict(batch_size=4, seed=2, timesteps=[22, 0], output_type="np")
    pipe(**kw)
    with sim.measure() as c:
        np.testing.assert_allclose(pipe(**kw).images, ref(**kw).images, rtol=0, atol=1e-5)
    assert (c.host_syncs, c.graph_launches) == (1, 1)
    assert not sim.violations, sim.violations

"""The GPU path on a real NVIDIA GPU: TensorRT 11 engines and ONNX Runtime CUDA, against ONNX Runtime fp32.

Run with `make test-gpu` (pytest --run-gpu -m gpu tests) on any machine with an NVIDIA
GPU, the gpu extra (tensorrt-cu13, cuda-bindings, onnxruntime-gpu, polygraphy) and the export extra
(torch + diffusers, to build the folders). Checked on the built-in model and on the real
ImageNet-64 architecture with random weights:
  * fp16 TensorRT vs ONNX Runtime fp32 (CPU): per-step UNet output error within the
    manifest's tolerance, final images PSNR >= 40 dB;
  * every batch size in the engine's profile;
  * CUDA-graph replay gives the same images as plain enqueue;
  * the engine runs the step graph: a multi-step generation is one upload, one graph launch, one
    download and one host synchronize (cmrt's CUDA calls counted on the real driver), timed by real
    CUDA events; batch 1 runs on the opt-1 profile; after `warmup=[1, 4]` nothing is captured;
  * a second build is a cache hit; a stale engine is rebuilt on load.
The ONNX Runtime CUDA backend has its own tests (tests/gpu/test_ort_cuda.py), which need
onnxruntime-gpu but not TensorRT.
"""
from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

MODELS = ("tiny", "imagenet64")
PSNR_MIN_DB = 40.0


def _need_gpu_stack():
    pytest.importorskip("torch")
    pytest.importorskip("tensorrt")
    pytest.importorskip("cuda.bindings")
    from cmrt.runtime.backends.probe import probe_environment

    env = probe_environment(tensorrt=True)
    if not env.tensorrt_usable:
        pytest.skip(f"TensorRT cannot run here: {env.tensorrt_missing_reason}")
    return env


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """Engine folders (fp32 + fp16 ONNX, validated fp16 TensorRT engine, batch 1..8) per model, built once."""
    _need_gpu_stack()
    from cmrt.build.folder import build_engine_folder
    from cmrt.engine.options import BuildOptions
    from cmrt.engine.tensorrt import TensorRTOptions
    from cmrt.build.architectures import random_weight_folder

    root = tmp_path_factory.mktemp("gpu-engines")
    opts = BuildOptions(precisions=("fp32", "fp16"), min_batch=1, opt_batch=4, max_batch=8)
    trt_opts = TensorRTOptions(timing_cache=str(root / "timing.cache"))
    sources = {"tiny": "tiny-random", "imagenet64": str(random_weight_folder("imagenet64", root / "imagenet64-model"))}
    out, seconds = {}, {}
    for key, model in sources.items():
        t0 = time.perf_counter()
        out[key] = build_engine_folder(model, out=root / f"{key}-engine", options=opts, backend="tensorrt", tensorrt=trt_opts)
        seconds[key] = time.perf_counter() - t0
    print("build seconds:", seconds)
    return out


def _ref_backend(folder):
    from cmrt.engine.manifest import read_manifest
    from cmrt.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(read_manifest(folder).onnx_path("fp32"))


def _trt_backend(folder, use_cuda_graph=True):
    from cmrt.engine.manifest import read_manifest
    from cmrt.runtime.backends.tensorrt_backend import TensorRTBackend

    e = read_manifest(folder).data["tensorrt"]
    return TensorRTBackend(folder / e["file"], e["io"], e["profiles"], use_cuda_graph)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


class Recorder:
    """Wraps a backend and keeps every UNet call's inputs and output."""

    def __init__(self, inner):
        self.inner, self.name, self.device, self.calls = inner, inner.name, inner.device, []

    def run(self, sample, timestep, class_labels=None):
        out = self.inner.run(sample, timestep, class_labels)
        self.calls.append((sample.copy(), timestep.copy(), None if class_labels is None else class_labels.copy(), out.copy()))
        return out


# --- the engine and its manifest entry -------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_manifest_entry_describes_the_engine(engines, model):
    import re

    from cmrt.engine.manifest import read_manifest
    from cmrt.runtime.backends import cuda

    m = read_manifest(engines[model], verify=True)
    e = m.data["tensorrt"]
    assert re.fullmatch(r"unet\.fp16\.trt\d+\.\d+\.sm\d+\.b1-1-1\+2-4-8\.lvl5\.plan", e["file"]), e["file"]
    props = cuda.device_properties(0)
    assert e["gpu"]["name"] == props["name"] and e["gpu"]["compute_capability"] == "%d.%d" % props["compute_capability"]
    assert e["profile"] == {"min": 1, "opt": 4, "max": 8} and e["precision"] == "fp16" and e["format"] == 3
    assert e["profiles"] == [{"min": 1, "opt": 1, "max": 1}, {"min": 2, "opt": 4, "max": 8}]
    assert e["options"]["optimization_level"] == 5 and e["onnx_file"] == "unet.fp16.step.onnx"
    assert e["onnx_sha256"].startswith(m.data["files"][e["onnx_file"]]["sha256"])
    v = e["validation"]
    assert v["batch_sizes"] == [1, 2, 4, 8] and 0 <= v["max_abs_error"] <= v["tolerance"]
    print(f"{model}: {e['file']} validation max abs error {v['max_abs_error']:.3g} (tolerance {v['tolerance']})")


@pytest.mark.parametrize("model", MODELS)
def test_every_batch_size_matches_ort_fp32(engines, model, record_property):
    from cmrt.engine.manifest import read_manifest
    from cmrt.build.tensorrt import compare_outputs
    from cmrt.engine.io_spec import sample_inputs

    m = read_manifest(engines[model])
    tol = m.data["tensorrt"]["validation"]["tolerance"]
    ref, trt = _ref_backend(engines[model]), _trt_backend(engines[model])
    errors = {}
    try:
        for b in range(1, 9):
            feeds = sample_inputs(m.unet, m.scheduler_config, b, seed=100 + b)
            args = (feeds["sample"], feeds["timestep"], feeds.get("class_labels"))
            r = compare_outputs(trt.run(*args), ref.run(*args))
            assert r["finite"], f"NaN/Inf at batch {b}"
            errors[b] = r["max_abs_error"]
        assert trt.graph_batches == list(range(1, 9)), f"CUDA graph capture failed: {trt.graph_failures}"
    finally:
        trt.close()
    record_property("max_abs_error_per_batch", errors)
    print(f"{model}: max abs error per batch {errors}")
    assert max(errors.values()) <= tol, errors


@pytest.mark.parametrize("model", MODELS)
def test_per_step_error_and_image_psnr(engines, model, record_property):
    import cmrt
    from cmrt.build.tensorrt import compare_outputs

    folder = engines[model]
    ref = cmrt.load(folder, backend="onnxruntime", device="cpu", precision="fp32")
    pipe = cmrt.load(folder, backend="tensorrt")
    assert (pipe.backend.name, pipe.backend.device) == ("tensorrt", "cuda")
    tol = pipe.manifest.data["tensorrt"]["validation"]["tolerance"]
    ref.backend = Recorder(ref.backend)
    worst_step, worst_psnr = 0.0, float("inf")
    for seed in (0, 1):
        for timesteps in ([22, 0], None):
            ref.backend.calls.clear()
            kw = dict(batch_size=4, seed=seed, output_type="np")
            kw.update({"timesteps": timesteps} if timesteps else {"num_inference_steps": 1})
            want = ref(**kw).images
            got = pipe(**kw).images
            # per step: the TensorRT UNet on exactly the inputs the fp32 run saw
            for sample, t, labels, out in ref.backend.calls:
                r = compare_outputs(pipe.backend.run(sample, t, labels), out)
                assert r["finite"]
                worst_step = max(worst_step, r["max_abs_error"])
            worst_psnr = min(worst_psnr, psnr(got, want))
    record_property("per_step_max_abs_error", worst_step)
    record_property("psnr_db", worst_psnr)
    print(f"{model}: per-step UNet max abs error {worst_step:.3g} (tolerance {tol}), worst image PSNR {worst_psnr:.1f} dB")
    assert worst_step <= tol
    assert worst_psnr >= PSNR_MIN_DB


@pytest.mark.parametrize("model", MODELS)
def test_cuda_graph_replay_equals_plain_enqueue(engines, model, record_property):
    import cmrt

    folder = engines[model]
    graphs = cmrt.load(folder, backend="tensorrt", use_cuda_graph=True)
    plain = cmrt.load(folder, backend="tensorrt", use_cuda_graph=False)
    for batch in (1, 3, 8):
        kw = dict(batch_size=batch, seed=batch, timesteps=[22, 0], output_type="np")
        first = graphs(**kw).images  # captures the generation's graph (both steps), then launches it
        again = graphs(**kw).images  # launch only
        ref = plain(**kw).images
        np.testing.assert_array_equal(first, again)
        np.testing.assert_allclose(first, ref, rtol=0, atol=1e-6)
    assert graphs.backend.graph_batches == [1, 3, 8] and plain.backend.graph_batches == []
    # latency of one UNet call at batch 8, replay vs enqueue (reported, not asserted)
    x = np.zeros((8, 3, graphs.sample_size, graphs.sample_size), np.float32)
    t = np.full(8, 1095.5, np.float32)
    c = None if graphs.num_classes is None else np.zeros(8, np.int64)
    ms = {}
    for name, p in (("graph", graphs), ("enqueue", plain)):
        p.backend.run(x, t, c)
        t0 = time.perf_counter()
        for _ in range(20):
            p.backend.run(x, t, c)
        ms[name] = (time.perf_counter() - t0) / 20 * 1000
    record_property("unet_ms_batch8", ms)
    print(f"{model}: UNet call at batch 8 incl. copies: {ms}")


def test_second_build_is_a_cache_hit(engines):
    from cmrt.build.folder import build_engine_folder
    from cmrt.engine.options import BuildOptions
    from cmrt.build.tensorrt import ensure_tensorrt_engine
    from cmrt.engine.tensorrt import TensorRTOptions

    folder = engines["tiny"]
    before = json.loads((folder / "manifest.json").read_text())
    plan = folder / before["tensorrt"]["file"]
    mtime = plan.stat().st_mtime_ns
    t0 = time.perf_counter()
    opts = BuildOptions(precisions=("fp32", "fp16"), min_batch=1, opt_batch=4, max_batch=8)
    trt_opts = TensorRTOptions(timing_cache=before["tensorrt"]["options"]["timing_cache"])
    build_engine_folder("tiny-random", out=folder, options=opts, backend="tensorrt", tensorrt=trt_opts)
    seconds = time.perf_counter() - t0
    after = json.loads((folder / "manifest.json").read_text())
    assert after == before and plan.stat().st_mtime_ns == mtime
    assert seconds < 30, seconds
    assert not ensure_tensorrt_engine(folder, trt_opts).built


def test_stale_engine_is_rebuilt_on_load_never_deserialized(engines, tmp_path):
    import cmrt
    from cmrt.engine.manifest import write_manifest  # a sealed rewrite: what another build would have left

    folder = tmp_path / "copy"
    shutil.copytree(engines["tiny"], folder)
    data = json.loads((folder / "manifest.json").read_text())
    real_gpu = data["tensorrt"]["gpu"]["name"]
    data["tensorrt"]["gpu"] = {"name": "Some Other GPU", "compute_capability": "7.5"}
    write_manifest(folder, data)
    pipe = cmrt.load(folder, backend="tensorrt")
    assert pipe.manifest.data["tensorrt"]["gpu"]["name"] == real_gpu
    assert pipe(batch_size=2, seed=0, output_type="np").images.shape[0] == 2
    # a TensorRT version that is not this one is rebuilt too
    data = json.loads((folder / "manifest.json").read_text())
    data["tensorrt"]["tensorrt_version"] = "10.0.0.0"
    write_manifest(folder, data)
    pipe = cmrt.load(folder)  # auto on this GPU: TensorRT, rebuilt
    assert pipe.backend.name == "tensorrt" and pipe.manifest.data["tensorrt"]["tensorrt_version"] != "10.0.0.0"


def test_auto_picks_tensorrt_here(engines):
    import cmrt
    from cmrt.runtime.backends.probe import probe_environment
    from cmrt.runtime.backends.selection import select_backend

    s = select_backend(probe_environment())
    assert s.backend == "tensorrt", s
    assert cmrt.load(engines["tiny"]).backend.name == "tensorrt"


class CudaCalls:
    """Counts cmrt's own CUDA calls on the real driver (TensorRT's internal ones are not cmrt's)."""

    def __init__(self, monkeypatch):
        from cmrt.runtime.backends import cuda

        self.counts = {"synchronize": 0, "launch": 0, "htod": 0, "dtoh": 0, "capture": 0}
        for cls, attr, key in ((cuda.Stream, "synchronize", "synchronize"), (cuda.CudaGraph, "launch", "launch")):
            monkeypatch.setattr(cls, attr, self._counted(getattr(cls, attr), key))
        monkeypatch.setattr(cuda.CudaGraph, "capture", classmethod(self._counted(cuda.CudaGraph.capture.__func__, "capture")))
        for name, key in (("copy_htod_async", "htod"), ("copy_dtoh_async", "dtoh")):
            monkeypatch.setattr(cuda, name, self._counted(getattr(cuda, name), key))

    def _counted(self, fn, key):
        def counted(*args, **kwargs):
            self.counts[key] += 1
            return fn(*args, **kwargs)

        return counted

    def measure(self, fn):
        before = dict(self.counts)
        out = fn()
        return out, {k: self.counts[k] - before[k] for k in self.counts}


@pytest.mark.parametrize("model", MODELS)
def test_a_generation_is_one_launch_and_one_synchronize_on_the_gpu(engines, model, monkeypatch, record_property):
    """Issue #17 on a real GPU: after `warmup=[1, 4]`, a 2-step generation at batch 1 and 4 captures nothing and
    is one upload, one graph launch, one download, one synchronize; CUDA events time it; the profiles are 0 and 1."""
    import cmrt

    calls = CudaCalls(monkeypatch)
    folder = engines[model]
    ref = cmrt.load(folder, backend="onnxruntime", device="cpu", precision="fp32")
    pipe = cmrt.load(folder, backend="tensorrt", warmup=[1, 4])
    assert pipe.step_graph and pipe.backend.graph_keys == [(1, 1, False), (1, 2, True), (4, 1, False), (4, 2, True)]
    assert {b: s.context.active_optimization_profile for b, s in pipe.backend._slots.items()} == {1: 0, 4: 1}
    events = {}
    for batch in (1, 4):
        kw = dict(batch_size=batch, seed=batch, timesteps=[22, 0], output_type="np")
        t0 = time.perf_counter()
        images, counts = calls.measure(lambda: pipe(**kw).images)
        wall_ms = (time.perf_counter() - t0) * 1e3
        assert counts == {"synchronize": 1, "launch": 1, "htod": 1, "dtoh": 1, "capture": 0}, counts
        assert psnr(images, ref(**kw).images) >= PSNR_MIN_DB
        (gpu_ms,) = pipe.backend.pop_event_timings()
        assert 0 < gpu_ms <= wall_ms
        events[batch] = {"gpu_ms": gpu_ms, "wall_ms": wall_ms}
    record_property("generation_ms", events)
    print(f"{model}: 2-step generation, GPU (CUDA events) vs wall ms: {events}")

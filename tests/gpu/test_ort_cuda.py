"""The ONNX Runtime CUDA backend on a real NVIDIA GPU: needs onnxruntime-gpu (the gpu-ort extra), not TensorRT.

Run with `make test-gpu` (pytest --run-gpu -m gpu tests) where `make setup-gpu-ort` (public package
index only) or `make setup-gpu` installed the stack. The engine folders are built here (export extra:
torch + diffusers) with ONNX graphs only. Checked against ONNX Runtime fp32 on the CPU:
  * fp32 and fp16 graphs with IO binding and CUDA graphs, several batch sizes;
  * a batch size counts as captured only after ONNX Runtime's warm-up runs, and replays give the
    same output;
  * `cmrt.load(..., backend="onnxruntime", device="cuda")` runs a multi-step generation through the
    step graph: one upload, one synchronize by cmrt and one download per generation.
"""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def _need_ort_cuda():
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu: the gpu-ort extra)")
    from cmrt.runtime.backends.probe import ort_cuda_load_error

    why = ort_cuda_load_error(ort)
    if why:
        pytest.fail(f"onnxruntime-gpu is installed but its CUDA EP does not load: {why}")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    _need_ort_cuda()
    pytest.importorskip("torch")
    from cmrt.build.folder import build_engine_folder
    from cmrt.engine.options import BuildOptions

    root = tmp_path_factory.mktemp("ort-cuda")
    opts = BuildOptions(precisions=("fp32", "fp16"), min_batch=1, opt_batch=4, max_batch=8)
    return build_engine_folder("tiny-random", out=root / "tiny", options=opts, backend="onnxruntime")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_ort_cuda_with_cuda_graphs_matches_ort_cpu_fp32(folder, precision, record_property):
    from cmrt.build.tensorrt import compare_outputs
    from cmrt.engine.io_spec import TOLERANCE, sample_inputs
    from cmrt.engine.manifest import read_manifest
    from cmrt.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from cmrt.runtime.backends.ort_cuda_backend import RUNS_BEFORE_CAPTURE, OrtCudaBackend

    m = read_manifest(folder)
    ref = OnnxRuntimeBackend(m.onnx_path("fp32"))
    gpu = OrtCudaBackend(m.onnx_path(precision), use_cuda_graph=True, min_batch=1, max_batch=8)
    assert gpu.provider == "CUDAExecutionProvider"
    assert gpu.cuda_graph, f"ONNX Runtime refused CUDA graphs: {gpu.graph_error}"
    worst = 0.0
    for b in (1, 2, 8):
        feeds = sample_inputs(m.unet, m.scheduler_config, b, seed=300 + b)
        args = (feeds["sample"], feeds["timestep"], feeds.get("class_labels"))
        first = gpu.run(*args).copy()
        for _ in range(RUNS_BEFORE_CAPTURE + 1):  # the last of these is captured; then replays
            np.testing.assert_array_equal(gpu.run(*args), first)
        assert b in gpu.graph_batches
        r = compare_outputs(first, ref.run(*args))
        assert r["finite"]
        worst = max(worst, r["max_abs_error"])
    assert gpu.graph_batches == [1, 2, 8]
    record_property("max_abs_error", worst)
    print(f"ORT CUDA {precision} + CUDA graphs vs ORT CPU fp32: max abs error {worst:.3g}")
    assert worst <= TOLERANCE["tensorrt"][precision]


def test_load_ort_cuda_generates_like_the_cpu(folder):
    import cmrt

    ref = cmrt.load(folder, backend="onnxruntime", device="cpu", precision="fp32")
    pipe = cmrt.load(folder, backend="onnxruntime", device="cuda", precision="fp32")
    assert (pipe.backend.name, pipe.backend.device) == ("onnxruntime", "cuda") and pipe.step_graph
    for _ in range(3):  # each step's graph id: two ordinary runs, then the capture
        kw = dict(batch_size=4, seed=1, timesteps=[22, 0], output_type="np")
        np.testing.assert_allclose(pipe(**kw).images, ref(**kw).images, rtol=0, atol=1e-3)
    assert pipe.backend.graph_batches == [4]


@pytest.mark.parametrize("use_cuda_graph", [False, True])
def test_a_generation_on_ort_cuda_is_one_upload_one_synchronize_one_download(folder, monkeypatch, use_cuda_graph):
    """cmrt's own ONNX Runtime calls per generation, counted on the real library."""
    import onnxruntime as ort

    import cmrt

    counts = {"sync": 0, "upload": 0, "download": 0}

    def counted(fn, key):
        def wrapper(*args, **kwargs):
            counts[key] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(ort.IOBinding, "synchronize_outputs", counted(ort.IOBinding.synchronize_outputs, "sync"))
    monkeypatch.setattr(ort.OrtValue, "update_inplace", counted(ort.OrtValue.update_inplace, "upload"))
    monkeypatch.setattr(ort.OrtValue, "numpy", counted(ort.OrtValue.numpy, "download"))
    ref = cmrt.load(folder, backend="onnxruntime", device="cpu", precision="fp32")
    pipe = cmrt.load(folder, device="cuda", precision="fp32", use_cuda_graph=use_cuda_graph, warmup=[2])
    kw = dict(batch_size=2, seed=4, timesteps=[22, 0], output_type="np")
    for key in counts:
        counts[key] = 0
    np.testing.assert_allclose(pipe(**kw).images, ref(**kw).images, rtol=0, atol=1e-3)
    assert counts == {"sync": 1, "upload": 1, "download": 1}, counts
    if use_cuda_graph:
        assert pipe.backend.graph_batches == [2]  # captured by the warm-up

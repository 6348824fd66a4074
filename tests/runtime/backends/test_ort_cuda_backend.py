"""OrtCudaBackend and cmrt.load on the simulated onnxruntime-gpu (tests/fakes/ort_cuda_sim.py), no TensorRT.

The simulated CUDA EP loads only after `preload_dlls()`, captures a graph id only after ONNX
Runtime's ordinary runs, and refuses a replay whose bound buffers changed.
"""
from __future__ import annotations

import logging
import shutil
import threading

import numpy as np
import pytest

import cmrt
from cmrt.engine.errors import BackendUnavailableError
from cmrt.engine.io_spec import sample_inputs
from cmrt.engine.manifest import read_manifest


@pytest.fixture
def folder(small_models, tmp_path):
    out = tmp_path / "engine"
    shutil.copytree(small_models["cond"][1], out)
    return out


def _args(folder, batch, seed=0):
    m = read_manifest(folder)
    f = sample_inputs(m.unet, m.scheduler_config, batch, seed)
    return f["sample"], f["timestep"], f.get("class_labels")


def _backend(folder, **kw):
    from cmrt.runtime.backends.ort_cuda_backend import OrtCudaBackend

    return OrtCudaBackend(read_manifest(folder).onnx_path("fp32"), min_batch=1, max_batch=8, **kw)


def test_the_backend_preloads_the_cuda_libraries(simulated_ort_cuda, folder):
    """Issue #15 item 2: without `preload_dlls()` the session silently runs on the CPU."""
    backend = _backend(folder)
    assert backend.provider == "CUDAExecutionProvider" and backend.cuda_graph
    assert simulated_ort_cuda.counters["ort_preload_dlls"] >= 1


def test_graph_batches_lists_only_graphs_ort_has_captured(simulated_ort_cuda, folder):
    """Issue #15 item 4: a bound batch size is not a captured graph; ONNX Runtime captures after its ordinary runs."""
    import onnxruntime

    onnxruntime.preload_dlls()  # (so that this test is about item 4 alone, also on code that forgot item 2)
    backend = _backend(folder)
    (session,) = [s for s in simulated_ort_cuda.ort_sessions if s.cuda_graph]
    args = _args(folder, 2)
    first = backend.run(*args)
    assert backend.graph_batches == [] and not session.captured  # bound and run once: not captured yet
    backend.run(*args)
    assert backend.graph_batches == []
    np.testing.assert_array_equal(backend.run(*args), first)  # the third run captures (and replays)
    assert backend.graph_batches == [2] == sorted(session.captured)
    backend.run(*_args(folder, 5))
    assert backend.graph_batches == [2]
    assert not simulated_ort_cuda.violations, simulated_ort_cuda.violations


def test_runs_from_several_threads_are_serialized(simulated_ort_cuda, folder):
    backend = _backend(folder)
    args = _args(folder, 3)
    want = backend.run(*args)
    outs = []
    threads = [threading.Thread(target=lambda: outs.extend(backend.run(*args) for _ in range(3))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outs) == 9 and all((o == want).all() for o in outs)
    assert not simulated_ort_cuda.violations, simulated_ort_cuda.violations


def test_load_runs_a_multi_step_generation_on_ort_cuda(simulated_ort_cuda, folder):
    ref = cmrt.load(folder, device="cpu")
    pipe = cmrt.load(folder)  # auto, no TensorRT: the ONNX Runtime CUDA EP, through the step graph
    assert (pipe.backend.name, pipe.backend.device) == ("onnxruntime", "cuda") and pipe.step_graph
    for _ in range(3):
        for batch in (1, 4):
            kw = dict(batch_size=batch, seed=batch, timesteps=[22, 0], output_type="np")
            np.testing.assert_allclose(pipe(**kw).images, ref(**kw).images, rtol=0, atol=1e-5)
    assert pipe.backend.graph_batches == [1, 4]  # each step's graph id run three times: captured
    assert not simulated_ort_cuda.violations, simulated_ort_cuda.violations


@pytest.mark.parametrize("batch", [1, 4])
def test_a_generation_on_ort_cuda_is_one_upload_and_one_synchronize(simulated_ort_cuda, folder, batch):
    """Issue #17: device-resident buffers through IO binding, one synchronize at the end of a generation.
    Without ONNX Runtime's CUDA graphs that is the generation's only host synchronize."""
    sim = simulated_ort_cuda
    ref = cmrt.load(folder, device="cpu")
    pipe = cmrt.load(folder, device="cuda", use_cuda_graph=False)
    assert pipe.step_graph and not pipe.backend.cuda_graph
    for timesteps in ([0], [22, 0], [39, 20, 3]):
        kw = dict(batch_size=batch, seed=batch, timesteps=timesteps, output_type="np")
        pipe(**kw)  # the first call at this shape allocates its buffers
        with sim.measure() as c:
            got = pipe(**kw).images
        np.testing.assert_allclose(got, ref(**kw).images, rtol=0, atol=1e-5)
        # one synchronize; one blocking copy up (everything the steps read) and one down
        assert (c.host_syncs, c.ort_syncs, c.ort_run_syncs, c.ort_copies) == (1, 1, 0, 2), (timesteps, c)
    assert not sim.violations, sim.violations


def test_with_cuda_graphs_cmrt_adds_one_synchronize_to_onnx_runtimes_replays(simulated_ort_cuda, folder):
    """With CUDA graphs, ONNX Runtime's replay of each step's graph synchronizes (its CUDAGraphManager::Replay);
    cmrt's own part stays one synchronize and two copies per generation, and after `warmup` nothing is captured."""
    sim = simulated_ort_cuda
    ref = cmrt.load(folder, device="cpu")
    with sim.measure() as c:
        pipe = cmrt.load(folder, device="cuda", warmup=[1, 4])
    assert pipe.backend.cuda_graph and pipe.backend.graph_batches == [1, 4]
    assert c.ort_graph_captures == 2 * 3  # per batch size: a UNet call's graph, and both steps of a 2-step generation
    for batch in (1, 4):
        for timesteps in ([0], [22, 0]):
            kw = dict(batch_size=batch, seed=batch, timesteps=timesteps, output_type="np")
            with sim.measure() as c:
                got = pipe(**kw).images
            np.testing.assert_allclose(got, ref(**kw).images, rtol=0, atol=1e-5)
            assert c.ort_graph_captures == 0 and c.ort_graph_replays == len(timesteps)
            assert (c.ort_syncs, c.ort_copies, c.ort_run_syncs) == (1, 2, 0)
            assert c.host_syncs == 1 + c.ort_replay_syncs == 1 + len(timesteps)
    seen = []  # a callback: one synchronize per step, the same steps as the CPU's
    want = []
    kw = dict(batch_size=2, seed=3, timesteps=[39, 20, 3], output_type="np")
    ref(**kw, callback=lambda i, t, x: want.append(x))
    pipe(**kw, callback=lambda i, t, x: seen.append(x))
    assert len(seen) == 3 and all(np.abs(a - b).max() <= 1e-5 for a, b in zip(seen, want))
    assert not sim.violations, sim.violations


def test_plain_unet_calls_run_through_the_step_graph_on_ort_cuda(simulated_ort_cuda, folder):
    from cmrt.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    pipe = cmrt.load(folder, device="cuda")
    args = _args(folder, 3, seed=2)
    want = OnnxRuntimeBackend(read_manifest(folder).onnx_path("fp32")).run(*args)
    np.testing.assert_allclose(pipe.backend.run(*args), want, rtol=0, atol=1e-5)
    assert not simulated_ort_cuda.violations, simulated_ort_cuda.violations


def test_a_folder_without_step_graphs_runs_the_numpy_loop_on_ort_cuda(simulated_ort_cuda, folder, caplog):
    import json

    from cmrt.engine.manifest import write_manifest
    from cmrt.engine.errors import EngineFolderError

    data = json.loads((folder / "manifest.json").read_text())
    step = data["onnx"]["fp32"].pop("step")
    del data["files"][step["file"]]
    (folder / step["file"]).unlink()
    write_manifest(folder, data)
    with caplog.at_level(logging.INFO, logger="cmrt"):
        pipe = cmrt.load(folder, device="cuda")
    assert (pipe.backend.name, pipe.backend.device) == ("onnxruntime", "cuda") and not pipe.step_graph
    assert any("has no step graph of its fp32 graph" in r.getMessage() for r in caplog.records)
    assert pipe(batch_size=2, seed=0, timesteps=[22, 0], output_type="np").images.shape == (2, 16, 16, 3)
    with pytest.raises(EngineFolderError, match="no step graph"):
        cmrt.load(folder, device="cuda", step_graph=True)


def test_auto_skips_a_cuda_ep_that_does_not_load_with_one_log_line(simulated_ort_cuda, folder, caplog):
    """Issue #15 item 2: onnxruntime-gpu lists its CUDA EP although it cannot load (no cuda/cudnn extras);
    `auto` must find that out and run on the CPU, saying why once (cmrt doctor shows the same)."""
    from cmrt.runtime.backends.probe import probe_environment

    simulated_ort_cuda.cuda_libraries = False
    env = probe_environment()
    assert "CUDAExecutionProvider" in env.onnxruntime_providers and not env.ort_cuda_usable
    assert "cannot load it" in env.ort_cuda_missing_reason and "onnxruntime-gpu[cuda,cudnn]" in env.ort_cuda_missing_reason
    with caplog.at_level(logging.INFO, logger="cmrt"):
        pipe = cmrt.load(folder)
    assert (pipe.backend.name, pipe.backend.device) == ("onnxruntime", "cpu")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "cannot load it" in warnings[0] and "using ONNX Runtime on CPU" in warnings[0]
    assert pipe(batch_size=1, seed=0, output_type="np").images.shape == (1, 16, 16, 3)
    with pytest.raises(BackendUnavailableError, match=r"device='cuda' was requested .* CUDA EP \(ONNX Runtime lists the CUDA EP but cannot load it"):
        cmrt.load(folder, device="cuda")


def test_load_falls_back_when_the_cuda_ep_fails_after_the_probe(simulated_ort_cuda, folder, caplog):
    from cmrt.runtime.backends.probe import probe_environment

    assert probe_environment().ort_cuda_usable
    simulated_ort_cuda.cuda_libraries = False  # the libraries go away between the probe and the session
    with caplog.at_level(logging.WARNING, logger="cmrt"):
        pipe = cmrt.load(folder)
    assert (pipe.backend.name, pipe.backend.device) == ("onnxruntime", "cpu")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "ONNX Runtime CUDA EP could not be used" in warnings[0] and "CPU" in warnings[0]
    with pytest.raises(RuntimeError, match="could not load its CUDA EP"):
        cmrt.load(folder, device="cuda")

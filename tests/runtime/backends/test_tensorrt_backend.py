"""TensorRTBackend on the strict simulated GPU: threads, devices, close, and the engine's I/O checks.

The plan is built once (cmrt's real build path on the fake TensorRT); each test then loads it on a
fresh simulated GPU, so what one test breaks never leaks into the next.
"""
from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest

from cmrt.engine.io_spec import sample_inputs
from cmrt.engine.manifest import read_manifest
from cmrt.engine.tensorrt import TensorRTOptions
from tests.fakes.cuda_sim import DeviceProps, Sim
from tests.fakes.gpu import _install, simulated_gpu  # noqa: F401  (a fixture)


@pytest.fixture(scope="module")
def trt_folder(small_models, tmp_path_factory):
    """An engine folder (fp32, batch 1..8) with a TensorRT engine built on the simulated GPU."""
    from cmrt.build.tensorrt import ensure_tensorrt_engine

    folder = tmp_path_factory.mktemp("trt") / "engine"
    shutil.copytree(small_models["cond"][1], folder)
    with pytest.MonkeyPatch.context() as mp:
        _install(mp, Sim(), tensorrt=True, ort_cuda=False)
        ensure_tensorrt_engine(folder, TensorRTOptions(precision="fp32", use_timing_cache=False))
    from cmrt.runtime.backends import probe

    probe.probe_environment.cache_clear()
    return folder


def _backend(folder, **kw):
    from cmrt.runtime.backends.tensorrt_backend import TensorRTBackend

    m = read_manifest(folder)
    e = m.tensorrt
    p = e["profile"]
    return TensorRTBackend(folder / e["file"], m.io_spec(e["precision"]), (p["min"], p["opt"], p["max"]), **kw)


def _args(folder, batch, seed=0):
    m = read_manifest(folder)
    f = sample_inputs(m.unet, m.scheduler_config, batch, seed)
    return f["sample"], f["timestep"], f.get("class_labels")


def _reference(folder, args):
    from cmrt.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(read_manifest(folder).onnx_path("fp32")).run(*args)


def test_close_waits_for_a_run_in_another_thread(simulated_gpu, trt_folder):
    """Issue #15 item 3: close() must not free memory a replay in another thread still uses."""
    sim = simulated_gpu
    backend = _backend(trt_folder)
    args = _args(trt_folder, 2)
    want = _reference(trt_folder, args)
    backend.run(*args)  # warm-up and capture for batch 2
    run_waiting, release = threading.Event(), threading.Event()

    def pause_first_sync(stream):
        if not run_waiting.is_set():
            run_waiting.set()
            release.wait(5)

    sim.before_sync = pause_first_sync
    result, errors = [], []

    def run():
        try:
            result.append(backend.run(*args))
        except Exception as e:  # what the old code raised: the stream was destroyed under it
            errors.append(e)

    runner = threading.Thread(target=run)
    runner.start()
    assert run_waiting.wait(5)  # the run has queued its work and waits for the GPU
    closer = threading.Thread(target=backend.close)
    closer.start()
    closer.join(0.5)  # close must wait for the run, not free its memory now
    release.set()
    runner.join(5)
    closer.join(5)
    sim.before_sync = None
    assert not errors, errors
    np.testing.assert_allclose(result[0], want, rtol=0, atol=1e-5)
    assert not sim.violations, sim.violations
    with pytest.raises(RuntimeError, match="closed"):
        backend.run(*args)


def test_run_from_another_thread_runs_on_the_backends_gpu(simulated_gpu, trt_folder):
    """Issue #15 item 6: the current device is per host thread; a run() from a thread whose current
    device is another GPU must still enqueue on the engine's GPU."""
    simulated_gpu.devices.append(DeviceProps())  # two identical GPUs; the engine goes on GPU 1
    backend = _backend(trt_folder, device_index=1)
    args = _args(trt_folder, 3, seed=4)
    out, errors = [], []

    def run():  # a new thread: its current device is GPU 0
        try:
            out.append(backend.run(*args))
        except Exception as e:
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    assert not errors, errors
    np.testing.assert_allclose(out[0], _reference(trt_folder, args), rtol=0, atol=1e-5)
    assert not simulated_gpu.violations, simulated_gpu.violations
    backend.close()


def test_engine_dtypes_are_checked_against_the_manifest(simulated_gpu, trt_folder):
    """Issue #15 item 6: an engine whose I/O dtypes are not the manifest's is refused at load, clearly."""
    from cmrt.runtime.backends.tensorrt_backend import TensorRTBackend

    m = read_manifest(trt_folder)
    e = m.tensorrt
    io = json.loads(json.dumps(m.io_spec("fp32")))
    io["inputs"][0]["dtype"] = "float16"  # the manifest says fp16 I/O, the engine was built with fp32 I/O
    with pytest.raises(RuntimeError, match=r"does not match the folder's manifest: 'sample' is FLOAT in the engine, float16"):
        TensorRTBackend(trt_folder / e["file"], io, (1, 4, 8))


def test_one_context_and_graph_per_batch_size(simulated_gpu, trt_folder):
    sim = simulated_gpu
    backend = _backend(trt_folder)
    for b in (1, 2, 1, 8, 2):
        np.testing.assert_allclose(backend.run(*_args(trt_folder, b, b)), _reference(trt_folder, _args(trt_folder, b, b)),
                                   rtol=0, atol=1e-5)
    assert backend.graph_batches == [1, 2, 8] and len(backend._slots) == 3
    with sim.measure() as counts:
        backend.run(*_args(trt_folder, 8))
    assert (counts.host_syncs, counts.graph_launches, counts.enqueues, counts.memcpy_async) == (1, 1, 0, 4)
    backend.close()
    assert not sim.violations, sim.violations

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
from tests.fakes.gpu import _install


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

    e = read_manifest(folder).tensorrt
    return TensorRTBackend(folder / e["file"], e["io"], e["profiles"], **kw)


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

    e = read_manifest(trt_folder).tensorrt
    io = json.loads(json.dumps(e["io"]))
    io["inputs"][0]["dtype"] = "float16"  # the manifest says fp16 I/O, the engine was built with fp32 I/O
    with pytest.raises(RuntimeError, match=r"does not match the folder's manifest: 'x' is FLOAT in the engine, float16"):
        TensorRTBackend(trt_folder / e["file"], io, e["profiles"])
    with pytest.raises(RuntimeError, match=r"has 2 optimization profiles, the manifest says 1; rebuild the engine"):
        TensorRTBackend(trt_folder / e["file"], e["io"], [{"min": 1, "opt": 4, "max": 8}])
    plain = read_manifest(trt_folder).io_spec("fp32")  # the plain UNet graph's I/O: not what the engine runs
    with pytest.raises(RuntimeError, match=r"is not a step graph's; rebuild the engine"):
        TensorRTBackend(trt_folder / e["file"], plain, e["profiles"])


def test_one_context_and_graph_per_batch_size(simulated_gpu, trt_folder):
    sim = simulated_gpu
    backend = _backend(trt_folder)
    for b in (1, 2, 1, 8, 2):
        np.testing.assert_allclose(backend.run(*_args(trt_folder, b, b)), _reference(trt_folder, _args(trt_folder, b, b)),
                                   rtol=0, atol=1e-5)
    assert backend.graph_batches == [1, 2, 8] and len(backend._slots) == 3
    with sim.measure() as counts:
        backend.run(*_args(trt_folder, 8))
    assert (counts.host_syncs, counts.graph_launches, counts.enqueues, counts.memcpy_async) == (1, 1, 0, 2)
    backend.close()
    assert not sim.violations, sim.violations


# --- issue #17: a generation is one upload, one graph launch, one download, one synchronize --------
def _pipes(folder, **kw):
    import cmrt

    return cmrt.load(folder, device="cpu"), cmrt.load(folder, backend="tensorrt", **kw)


@pytest.mark.parametrize("batch", [1, 4])
def test_a_generation_is_one_upload_one_launch_one_download_one_synchronize(simulated_gpu, trt_folder, batch):
    sim = simulated_gpu
    ref, pipe = _pipes(trt_folder)
    assert pipe.step_graph and pipe.backend.step_graph
    for timesteps in ([0], [22, 0], [39, 20, 3]):
        kw = dict(batch_size=batch, seed=batch, timesteps=timesteps, output_type="np")
        pipe(**kw)  # the first call at this shape makes its context (once per batch size) and captures its graph
        with sim.measure() as c:
            got = pipe(**kw).images
        np.testing.assert_allclose(got, ref(**kw).images, rtol=0, atol=1e-5)  # the fake runs the ONNX in ONNX Runtime
        assert (c.host_syncs, c.graph_launches, c.memcpy_async, c.enqueues, c.captures) == (1, 1, 2, 0, 0), (timesteps, c)
        assert c.engine_runs == len(timesteps)  # the one launch ran every step
    unconditional = ref(batch_size=batch, class_labels=list(range(batch)), seed=2, timesteps=[22, 0], output_type="np")
    np.testing.assert_allclose(pipe(batch_size=batch, class_labels=list(range(batch)), seed=2, timesteps=[22, 0],
                                    output_type="np").images, unconditional.images, rtol=0, atol=1e-5)
    assert not sim.violations, sim.violations
    pipe.backend.close()


def test_batch_1_runs_on_the_opt_1_profile_and_batch_4_on_the_other(simulated_gpu, trt_folder):
    from cmrt.engine.tensorrt import Profile

    backend = _backend(trt_folder)
    assert backend.profiles == (Profile(1, 1, 1), Profile(2, 4, 8))
    for b in (1, 4, 2):
        np.testing.assert_allclose(backend.run(*_args(trt_folder, b, b)), _reference(trt_folder, _args(trt_folder, b, b)),
                                   rtol=0, atol=1e-5)
    # what cmrt asked for, and what the (fake) TensorRT context runs on
    assert {b: s.profile for b, s in backend._slots.items()} == {1: 0, 4: 1, 2: 1}
    assert {b: s.context.active_optimization_profile for b, s in backend._slots.items()} == {1: 0, 4: 1, 2: 1}
    assert not simulated_gpu.violations, simulated_gpu.violations
    backend.close()


def test_after_warmup_the_first_call_of_each_batch_size_captures_nothing(simulated_gpu, trt_folder):
    sim = simulated_gpu
    ref, _ = _pipes(trt_folder)
    with sim.measure() as c:
        _, pipe = _pipes(trt_folder, warmup=[1, 4])
    # per batch size: a context, the graphs of a UNet call / a one-step generation and of a two-step one
    assert pipe.backend.graph_keys == [(1, 1, False), (1, 2, True), (4, 1, False), (4, 2, True)] and c.captures == 4
    assert pipe.backend.pop_event_timings() == []  # the warm-up's launches are not a request's
    for batch in (1, 4):
        for sched in ({"timesteps": [22, 0]}, {"num_inference_steps": 1}):
            kw = dict(batch_size=batch, seed=7, output_type="np", **sched)
            with sim.measure() as c:
                got = pipe(**kw).images
            assert (c.captures, c.enqueues, c.malloc, c.malloc_host, c.host_syncs, c.graph_launches) == (0, 0, 0, 0, 1, 1)
            np.testing.assert_allclose(got, ref(**kw).images, rtol=0, atol=1e-5)
        with sim.measure() as c:  # a plain UNet call (zero-shot editing) was warmed up too
            pipe.backend.run(*_args(trt_folder, batch))
        assert (c.captures, c.enqueues, c.host_syncs) == (0, 0, 1)
    assert not sim.violations, sim.violations
    pipe.backend.close()


def test_a_callback_sees_every_step_at_one_synchronize_per_step(simulated_gpu, trt_folder):
    sim = simulated_gpu
    ref, pipe = _pipes(trt_folder, warmup=[2])
    seen = {"ref": [], "trt": []}
    kw = dict(batch_size=2, seed=3, timesteps=[39, 20, 3], output_type="np")
    want = ref(**kw, callback=lambda i, t, x: seen["ref"].append((i, t, x))).images
    with sim.measure() as c:
        got = pipe(**kw, callback=lambda i, t, x: seen["trt"].append((i, t, x))).images
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert [(i, t) for i, t, _ in seen["trt"]] == [(i, t) for i, t, _ in seen["ref"]] and len(seen["trt"]) == 3
    for (_, _, a), (_, _, b) in zip(seen["trt"], seen["ref"]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    # each step issued on its own and synchronized (the callback needs it on the host); still one upload.
    # copies: the upload, a download per step, and on the device x_T and labels, per step its timesteps,
    # constants and noise term, and x_next -> x between steps
    assert (c.host_syncs, c.graph_launches, c.enqueues, c.captures) == (3, 0, 3, 0)
    assert c.memcpy_async == 1 + 3 + 2 + 3 * 3 + 2
    assert len(pipe.backend.pop_event_timings()) == 3  # one timing per step
    assert not sim.violations, sim.violations
    pipe.backend.close()


def test_without_graphs_or_without_the_step_graph_the_images_are_the_same(simulated_gpu, trt_folder):
    sim = simulated_gpu
    ref, plain = _pipes(trt_folder, use_cuda_graph=False)
    _, loop = _pipes(trt_folder, step_graph=False)
    assert plain.step_graph and not loop.step_graph
    kw = dict(batch_size=3, seed=9, timesteps=[39, 20, 3], output_type="np")
    want = ref(**kw).images
    for pipe, syncs, launches, enqueues in ((plain, 1, 0, 3), (loop, 3, 3, 0)):
        pipe(**kw)
        with sim.measure() as c:
            np.testing.assert_allclose(pipe(**kw).images, want, rtol=0, atol=1e-5)
        assert (c.host_syncs, c.graph_launches, c.enqueues) == (syncs, launches, enqueues)
    assert plain.backend.graph_batches == [] and loop.backend.graph_keys == [(3, 1, False)]
    assert not sim.violations, sim.violations


def test_plain_unet_calls_and_editing_run_through_the_step_engine(simulated_gpu, trt_folder):
    ref, pipe = _pipes(trt_folder)
    args = _args(trt_folder, 3, seed=11)
    np.testing.assert_allclose(pipe.backend.run(*args), _reference(trt_folder, args), rtol=0, atol=1e-5)
    image = np.random.default_rng(2).uniform(0, 1, (16, 16, 3)).astype(np.float32)
    kw = dict(image=image, class_labels=[3], seed=5, output_type="np")
    np.testing.assert_allclose(pipe.colorize(**kw).images, ref.colorize(**kw).images, rtol=0, atol=1e-5)
    assert not simulated_gpu.violations, simulated_gpu.violations


def test_event_timings_come_from_cuda_events_one_per_launch(simulated_gpu, trt_folder):
    """The fake's events read its virtual clock: present and positive, never a measured figure."""
    _, pipe = _pipes(trt_folder)
    pipe(batch_size=2, seed=0, timesteps=[22, 0], output_type="np")
    pipe(batch_size=2, seed=1, timesteps=[22, 0], output_type="np")
    timings = pipe.backend.pop_event_timings()
    assert len(timings) == 2 and all(t > 0 for t in timings)  # one graph launch (both steps) per generation
    assert pipe.backend.pop_event_timings() == []
    pipe.backend.run(*_args(trt_folder, 2))
    assert len(pipe.backend.pop_event_timings()) == 1  # one per UNet call
    with pytest.raises(ValueError, match=r"coefs has shape \(1, 5\), expected \(2, 5\)"):
        pipe.backend.run_steps(*_args(trt_folder, 2)[:1], [np.zeros(2, np.float32)] * 2, np.zeros(2, np.int64),
                               np.zeros((1, 5), np.float32), None)

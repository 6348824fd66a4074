"""cmrt's CUDA layer (`cmrt.runtime.backends.cuda`): buffers, pinned memory, async copies, capture and
replay of a multi-step graph, and the error paths — on the real driver where one is present (the
`device` cases, `gpu` marker: `make test-gpu`, scripts/gpu_check.sh), and always on the strict
simulated GPU (the `simulated` cases), so the same expectations are checked on this CPU and on a GPU.
"""
from __future__ import annotations

import numpy as np
import pytest

from cmrt.runtime.backends import cuda


@pytest.fixture(params=["simulated", pytest.param("device", marks=pytest.mark.gpu)])
def runtime(request, monkeypatch):
    """'simulated': tests/fakes/cuda_sim.py; 'device': cuda-bindings on this machine's first GPU."""
    if request.param == "simulated":
        from tests.fakes.cuda_sim import Sim
        from tests.fakes.gpu import _install

        yield _install(monkeypatch, Sim(), tensorrt=False, ort_cuda=False)
        return
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-bindings is not installed")
    monkeypatch.setattr(cuda, "_CUDART", None)
    try:
        if cuda.device_count() < 1:
            pytest.skip("cuda-bindings sees no GPU")
    except cuda.CudaError as e:
        pytest.skip(f"the CUDA runtime cannot reach a GPU: {e}")
    cuda.set_device(0)
    yield None


def _copy_d2d(dst: int, src: int, nbytes: int, stream: cuda.Stream) -> None:
    rt = cuda.cudart_module()
    cuda.check(rt.cudaMemcpyAsync(dst, src, nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream.handle), "d2d")


def test_device_facts(runtime):
    assert cuda.device_count() >= 1
    p = cuda.device_properties(0)
    assert p["name"] and len(p["compute_capability"]) == 2 and p["total_memory_bytes"] > 0
    drv, rt = cuda.driver_and_runtime_versions()
    assert drv.count(".") == 1 and rt.count(".") == 1


def test_buffers_pinned_memory_and_async_copies(runtime):
    stream = cuda.Stream()
    n = 1 << 16
    dev = cuda.DeviceBuffer(n * 4)
    assert dev.ptr % cuda.ALIGNMENT == 0
    src, dst = cuda.PinnedArray((n,), np.float32), cuda.PinnedArray((n,), np.float32)
    src.array[:] = np.arange(n, dtype=np.float32)
    dst.array[:] = -1
    cuda.copy_htod_async(dev.ptr, src.array, stream)
    cuda.copy_dtoh_async(dst.array, dev.ptr, stream)
    stream.synchronize()
    np.testing.assert_array_equal(dst.array, src.array)
    for obj in (dev, src, dst, stream):
        obj.close()


def test_capture_and_replay_a_multi_step_graph(runtime):
    """Four steps in one graph (pinned -> a -> b -> c -> pinned), replayed with new inputs each time."""
    stream = cuda.Stream()
    n = 4096
    a, b, c = (cuda.DeviceBuffer(n * 4) for _ in range(3))
    inp, out = cuda.PinnedArray((n,), np.float32), cuda.PinnedArray((n,), np.float32)

    def steps():
        cuda.copy_htod_async(a.ptr, inp.array, stream)
        _copy_d2d(b.ptr, a.ptr, n * 4, stream)
        _copy_d2d(c.ptr, b.ptr, n * 4, stream)
        cuda.copy_dtoh_async(out.array, c.ptr, stream)

    graph = cuda.CudaGraph.capture(stream, steps)
    rng = np.random.default_rng(0)
    for _ in range(5):
        inp.array[:] = rng.standard_normal(n).astype(np.float32)
        graph.launch(stream)
        stream.synchronize()
        np.testing.assert_array_equal(out.array, inp.array)
    graph.close()
    for obj in (a, b, c, inp, out, stream):
        obj.close()


def test_illegal_calls_during_capture_fail_cleanly(runtime):
    stream = cuda.Stream()
    dev = cuda.DeviceBuffer(256)
    with pytest.raises(cuda.CudaError, match="cudaMalloc"):
        cuda.CudaGraph.capture(stream, lambda: cuda.DeviceBuffer(256))
    with pytest.raises(cuda.CudaError, match="cudaStreamSynchronize"):
        cuda.CudaGraph.capture(stream, stream.synchronize)
    pageable = np.zeros(64, np.float32)
    with pytest.raises(cuda.CudaError):
        cuda.CudaGraph.capture(stream, lambda: cuda.copy_htod_async(dev.ptr, pageable, stream))
    # after each failed capture the stream works
    host = cuda.PinnedArray((64,), np.float32)
    host.array[:] = 2.0
    cuda.copy_htod_async(dev.ptr, host.array, stream)
    stream.synchronize()  # a pinned source is read when the copy runs, not when it is queued
    host.array[:] = 0.0
    cuda.copy_dtoh_async(host.array, dev.ptr, stream)
    stream.synchronize()
    assert (host.array == 2.0).all()


def test_error_paths(runtime):
    with pytest.raises(cuda.CudaError, match="cudaSetDevice"):
        cuda.set_device(cuda.device_count() + 7)
    cuda.set_device(0)
    with pytest.raises(cuda.CudaError, match="cudaMalloc"):
        cuda.DeviceBuffer(1 << 62)


def test_memset_device_copies_and_events_around_a_graph(runtime):
    """What the TensorRT backend's generation graph is made of besides its enqueues: a memset, device-to-device
    copies, and CUDA events around the launch (elapsed time read after the synchronize)."""
    stream = cuda.Stream()
    n = 1024
    a, b = cuda.DeviceBuffer(n * 4), cuda.DeviceBuffer(n * 4)
    inp, out = cuda.PinnedArray((n,), np.float32), cuda.PinnedArray((n,), np.float32)
    start, end = cuda.Event(), cuda.Event()

    def work():
        cuda.memset_async(b.ptr, 0, n * 2, stream)  # the first half of b: zeros
        cuda.copy_dtod_async(b.ptr + n * 2, a.ptr + n * 2, n * 2, stream)  # the second half from a

    graph = cuda.CudaGraph.capture(stream, work)
    inp.array[:] = np.arange(n, dtype=np.float32)
    cuda.copy_htod_async(a.ptr, inp.array, stream)
    start.record(stream)
    graph.launch(stream)
    end.record(stream)
    cuda.copy_dtoh_async(out.array, b.ptr, stream)
    stream.synchronize()
    np.testing.assert_array_equal(out.array[: n // 2], 0.0)
    np.testing.assert_array_equal(out.array[n // 2:], inp.array[n // 2:])
    assert cuda.Event.elapsed_ms(start, end) >= 0.0
    graph.close()
    for obj in (start, end, a, b, inp, out, stream):
        obj.close()

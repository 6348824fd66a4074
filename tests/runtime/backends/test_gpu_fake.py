"""The strict GPU fake catches each rule a real GPU enforces: every test here breaks one on purpose.

The fake (tests/fakes/cuda_sim.py, tensorrt_sim.py, ort_cuda_sim.py) is what the CPU tests of
cmrt's GPU code run against, so it is only as good as the mistakes it catches. The calls go
through cmrt's own CUDA layer (`cmrt.runtime.backends.cuda`) where it has them.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from cmrt.runtime.backends import cuda
from tests.fakes.tensorrt_sim import DEVICE_MEMORY_SIZE


def _capture_mode():
    return cuda.cudart_module().cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal


def _begin(stream):
    rt = cuda.cudart_module()
    cuda.check(rt.cudaStreamBeginCapture(stream.handle, _capture_mode()), "begin")


def _end_status(stream):
    """End the capture; (error name, graph)."""
    rt = cuda.cudart_module()
    err, graph = rt.cudaStreamEndCapture(stream.handle)
    return rt.cudaError_t(err).name, graph


# --- calls that are illegal while a stream is capturing ---------------------------------------
@pytest.mark.parametrize("call", ["cudaMalloc", "cudaFree", "cudaMallocHost", "cudaHostAlloc", "cudaFreeHost",
                                  "cudaMemcpy", "cudaDeviceSynchronize", "cudaStreamSynchronize"])
def test_unsafe_call_during_capture_fails_and_invalidates_the_capture(simulated_gpu, call):
    rt = cuda.cudart_module()
    stream = cuda.Stream()
    dev = cuda.DeviceBuffer(1024)
    host = cuda.PinnedArray((256,), np.float32)
    _begin(stream)
    args = {
        "cudaMalloc": (1024,), "cudaFree": (dev.ptr,), "cudaMallocHost": (64,), "cudaHostAlloc": (64, 0),
        "cudaFreeHost": (host.ptr,), "cudaDeviceSynchronize": (), "cudaStreamSynchronize": (stream.handle,),
        "cudaMemcpy": (dev.ptr, host.ptr, 1024, rt.cudaMemcpyKind.cudaMemcpyHostToDevice),
    }[call]
    err = getattr(rt, call)(*args)[0]
    assert err == rt.cudaError_t.cudaErrorStreamCaptureUnsupported
    assert rt.cudaStreamIsCapturing(stream.handle)[1] == rt.cudaStreamCaptureStatus.cudaStreamCaptureStatusInvalidated
    assert _end_status(stream) == ("cudaErrorStreamCaptureInvalidated", None)
    assert "capture" in simulated_gpu.violations[-1]
    stream.synchronize()  # after the capture ended the stream is usable again


def test_cmrt_capture_reports_an_invalidated_capture_and_leaves_the_stream_usable(simulated_gpu):
    stream = cuda.Stream()
    with pytest.raises(cuda.CudaError, match="cudaErrorStreamCaptureUnsupported"):
        cuda.CudaGraph.capture(stream, lambda: cuda.DeviceBuffer(64))  # a malloc inside the capture
    assert "cudaMalloc during stream capture" in simulated_gpu.violations[-1]
    stream.synchronize()


def test_relaxed_capture_allows_what_thread_local_forbids(simulated_gpu):
    rt = cuda.cudart_module()
    stream = cuda.Stream()
    cuda.check(rt.cudaStreamBeginCapture(stream.handle, rt.cudaStreamCaptureMode.cudaStreamCaptureModeRelaxed))
    buf = cuda.DeviceBuffer(64)  # legal in relaxed mode
    assert _end_status(stream)[0] == "cudaSuccess"
    buf.close()


def test_thread_local_capture_does_not_forbid_other_threads(simulated_gpu):
    stream = cuda.Stream()
    _begin(stream)
    done = []
    t = threading.Thread(target=lambda: done.append(cuda.DeviceBuffer(64)))
    t.start()
    t.join()
    assert done and _end_status(stream)[0] == "cudaSuccess"


def test_async_copy_from_pageable_memory_during_capture_fails(simulated_gpu):
    stream = cuda.Stream()
    dev = cuda.DeviceBuffer(64)
    pageable = np.ones(16, np.float32)
    _begin(stream)
    with pytest.raises(cuda.CudaError, match="cudaErrorStreamCaptureUnsupported"):
        cuda.copy_htod_async(dev.ptr, pageable, stream)
    assert _end_status(stream) == ("cudaErrorStreamCaptureInvalidated", None)
    assert "pageable host memory" in simulated_gpu.violations[-1]


# --- streams run their work only when synchronized ----------------------------------------------
def test_a_missing_synchronize_shows_as_stale_data(simulated_gpu):
    stream = cuda.Stream()
    dev = cuda.DeviceBuffer(64)
    src = cuda.PinnedArray((16,), np.float32)
    dst = cuda.PinnedArray((16,), np.float32)
    src.array[:] = 7.0
    dst.array[:] = 0.0
    cuda.copy_htod_async(dev.ptr, src.array, stream)
    cuda.copy_dtoh_async(dst.array, dev.ptr, stream)
    assert (dst.array == 0).all()  # read before the synchronize: the copy has not run
    with simulated_gpu.measure() as counts:
        stream.synchronize()
    assert (dst.array == 7).all() and counts.host_syncs == 1


def test_pageable_host_source_is_staged_at_the_call(simulated_gpu):
    stream = cuda.Stream()
    dev = cuda.DeviceBuffer(64)
    out = cuda.PinnedArray((16,), np.float32)
    src = np.full(16, 3.0, np.float32)
    cuda.copy_htod_async(dev.ptr, src, stream)
    src[:] = 9.0  # CUDA staged the pageable source before returning
    cuda.copy_dtoh_async(out.array, dev.ptr, stream)
    stream.synchronize()
    assert (out.array == 3).all()


# --- freed memory is poisoned ------------------------------------------------------------------
def test_freed_pinned_memory_is_poisoned(simulated_gpu):
    host = cuda.PinnedArray((4,), np.float32)
    view = host.array
    view[:] = 1.0
    host.close()
    assert np.isnan(view).all()  # a view kept past cudaFreeHost reads poison, not the old values


def test_a_graph_that_references_freed_memory_fails(simulated_gpu):
    rt = cuda.cudart_module()
    stream = cuda.Stream()
    a, b = cuda.DeviceBuffer(64), cuda.DeviceBuffer(64)

    def work():
        cuda.check(rt.cudaMemcpyAsync(b.ptr, a.ptr, 64, rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream.handle))

    graph = cuda.CudaGraph.capture(stream, work)
    graph.launch(stream)
    stream.synchronize()  # fine while the memory is live
    a.close()
    graph.launch(stream)
    with pytest.raises(cuda.CudaError, match="cudaErrorIllegalAddress"):
        stream.synchronize()
    assert "touches freed device memory" in simulated_gpu.violations[-1]


def test_device_memory_is_not_host_memory(simulated_gpu):
    dev = cuda.DeviceBuffer(64)
    host = np.zeros(16, np.float32)
    rt = cuda.cudart_module()
    # a "host to device" copy whose destination is host memory is refused, not silently done
    err = rt.cudaMemcpyAsync(host.ctypes.data, host.ctypes.data, 64, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, cuda.Stream().handle)[0]
    assert err == rt.cudaError_t.cudaErrorInvalidValue
    assert dev.ptr >= 0x2000_0000_0000


# --- the current device is per host thread -------------------------------------------------------
def test_the_current_device_is_per_thread():
    from tests.fakes.cuda_sim import Sim, build_runtime

    sim = Sim(devices=2)
    rt = build_runtime(sim)
    assert rt.cudaSetDevice(1) == (rt.cudaError_t.cudaSuccess,)
    seen = []
    t = threading.Thread(target=lambda: seen.append(rt.cudaGetDevice()[1]))
    t.start()
    t.join()
    assert rt.cudaGetDevice()[1] == 1 and seen == [0]
    assert rt.cudaSetDevice(2)[0] == rt.cudaError_t.cudaErrorInvalidDevice


def test_memset_is_a_device_operation_and_capturable(simulated_gpu):
    stream = cuda.Stream()
    dev = cuda.DeviceBuffer(64)
    host = cuda.PinnedArray((16,), np.float32)
    host.array[:] = 3.0
    cuda.copy_htod_async(dev.ptr, host.array, stream)
    graph = cuda.CudaGraph.capture(stream, lambda: cuda.memset_async(dev.ptr, 0, 32, stream))  # a memset node
    graph.launch(stream)
    cuda.copy_dtoh_async(host.array, dev.ptr, stream)
    stream.synchronize()
    np.testing.assert_array_equal(host.array, [0.0] * 8 + [3.0] * 8)
    with pytest.raises(cuda.CudaError, match="cudaMemsetAsync"):
        cuda.memset_async(host.ptr, 0, 8, stream)  # pinned host memory is not device memory
    assert "not inside one device allocation" in simulated_gpu.violations[-1]


def test_events_time_the_work_between_them_on_the_virtual_clock(simulated_gpu):
    stream = cuda.Stream()
    start, end = cuda.Event(), cuda.Event()
    dev = cuda.DeviceBuffer(64)
    start.record(stream)
    for _ in range(3):
        cuda.memset_async(dev.ptr, 1, 64, stream)
    end.record(stream)
    with pytest.raises(cuda.CudaError, match="cudaEventElapsedTime"):
        cuda.Event.elapsed_ms(start, end)  # not completed before a synchronize
    stream.synchronize()
    assert cuda.Event.elapsed_ms(start, end) > 0
    for e in (start, end):
        e.close()


# --- TensorRT ------------------------------------------------------------------------------
@pytest.fixture
def engine(simulated_gpu, tmp_path):
    """A fake TensorRT engine for a one-node ONNX model y = x + 1 over float[batch, 4], profile batch 1..8."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    g = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "g", [x], [y], [one])
    path = tmp_path / "add.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    trt = simulated_gpu.trt
    builder = trt.Builder(trt.Logger())
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    assert trt.OnnxParser(network, trt.Logger()).parse_from_file(str(path))
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 4), (4, 4), (8, 4))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    return trt.Runtime(trt.Logger()).deserialize_cuda_engine(plan)


class Bound:
    """One context on its own buffers and stream, set up for a batch size."""

    def __init__(self, engine, batch, stream=None, scratch=None):
        trt = __import__("tensorrt")
        self.stream = stream or cuda.Stream()
        self.ctx = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        self.scratch = scratch or cuda.DeviceBuffer(DEVICE_MEMORY_SIZE)
        self.ctx.set_device_memory(self.scratch.ptr, self.scratch.nbytes)
        self.x, self.y = cuda.DeviceBuffer(8 * 16), cuda.DeviceBuffer(8 * 16)
        self.hx, self.hy = cuda.PinnedArray((8, 4), np.float32), cuda.PinnedArray((8, 4), np.float32)
        self.bind(batch)

    def bind(self, batch):
        self.batch = batch
        assert self.ctx.set_input_shape("x", (batch, 4))
        assert self.ctx.set_tensor_address("x", self.x.ptr) and self.ctx.set_tensor_address("y", self.y.ptr)

    def enqueue(self):
        return self.ctx.execute_async_v3(self.stream.ptr)

    def run(self, value, graph=None):
        self.hx.array[: self.batch] = value
        cuda.copy_htod_async(self.x.ptr, self.hx.array[: self.batch], self.stream)
        graph.launch(self.stream) if graph is not None else self.enqueue()
        cuda.copy_dtoh_async(self.hy.array[: self.batch], self.y.ptr, self.stream)
        self.stream.synchronize()
        return self.hy.array[: self.batch].copy()


def test_first_enqueue_after_binding_inside_a_capture_is_caught(engine, simulated_gpu):
    b = Bound(engine, 2)

    def enqueue_or_raise():
        if not b.enqueue():
            raise RuntimeError("execute_async_v3 failed")

    with pytest.raises(RuntimeError, match="execute_async_v3 failed"):
        cuda.CudaGraph.capture(b.stream, enqueue_or_raise)
    assert "deferred updates cannot be captured" in " ".join(simulated_gpu.violations)
    # the right order: one enqueue outside the capture, then capture
    assert b.enqueue()
    b.stream.synchronize()
    graph = cuda.CudaGraph.capture(b.stream, b.enqueue)
    np.testing.assert_array_equal(b.run(1.5, graph), np.full((2, 4), 2.5, np.float32))


def test_replaying_a_graph_after_its_shapes_or_addresses_changed_fails(engine, simulated_gpu):
    b = Bound(engine, 2)
    b.enqueue()
    b.stream.synchronize()
    graph = cuda.CudaGraph.capture(b.stream, b.enqueue)
    np.testing.assert_array_equal(b.run(0.0, graph), np.ones((2, 4), np.float32))
    b.bind(3)  # one context re-bound for another batch size, the old graph replayed: caught
    with pytest.raises(cuda.CudaError, match="cudaGraphLaunch"):
        graph.launch(b.stream)
    assert "replayed after its context's shapes or addresses changed" in simulated_gpu.violations[-1]


def test_two_contexts_on_one_profile_used_concurrently_fail(engine, simulated_gpu):
    a = Bound(engine, 2)
    b = Bound(engine, 4)  # its own stream: the two could overlap on a GPU
    assert a.enqueue()
    assert not b.enqueue()  # a's work is still queued on another stream
    assert "contexts on one profile must not run concurrently" in simulated_gpu.violations[-1]
    a.stream.synchronize()
    assert b.enqueue()  # one after the other is fine
    c = Bound(engine, 3, stream=b.stream)
    assert c.enqueue()  # and so is the same stream: work on one stream is ordered


def test_enqueue_from_a_thread_whose_current_device_is_another_gpu_fails(engine, simulated_gpu):
    simulated_gpu.devices.append(type(simulated_gpu.devices[0])())  # a second GPU
    b = Bound(engine, 2)  # the engine and its buffers are on GPU 0
    result = []

    def other_thread():
        cuda.set_device(1)  # this thread works on GPU 1
        result.append(b.enqueue())

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert result == [False]
    assert "call cudaSetDevice in the thread that enqueues" in simulated_gpu.violations[-1]
    assert b.enqueue()  # this thread's current device is still 0


def test_set_timing_cache_refuses_a_cache_from_another_gpu(simulated_gpu):
    trt = simulated_gpu.trt
    config = trt.Builder(trt.Logger()).create_builder_config()
    ours = config.create_timing_cache(b"")
    simulated_gpu.devices[0].name = "NVIDIA Other GPU"
    assert config.set_timing_cache(ours, False) is False  # made on the GPU that was here before
    assert config.get_timing_cache() is None
    assert config.set_timing_cache(ours, True) is True  # ignore_mismatch=True takes it anyway
    assert config.set_timing_cache(config.create_timing_cache(b""), False) is True


def test_a_plan_only_loads_on_the_gpu_and_tensorrt_that_built_it(engine, simulated_gpu):
    trt = simulated_gpu.trt
    plan = engine.serialize()
    assert trt.Runtime(trt.Logger()).deserialize_cuda_engine(plan) is not None
    simulated_gpu.devices[0].major = 8
    assert trt.Runtime(trt.Logger()).deserialize_cuda_engine(plan) is None
    assert "the plan was built for" in simulated_gpu.violations[-1]


def test_tensorrt_11_has_no_precision_flags(simulated_gpu):
    trt = simulated_gpu.trt
    assert not hasattr(trt.BuilderFlag, "FP16") and not hasattr(trt.BuilderFlag, "INT8")
    with pytest.raises(TypeError, match="strongly typed"):
        trt.Builder(trt.Logger()).create_network(1 << 0)  # EXPLICIT_BATCH is gone


def test_counters_per_call(engine, simulated_gpu):
    b = Bound(engine, 2)
    b.enqueue()
    b.stream.synchronize()
    graph = cuda.CudaGraph.capture(b.stream, b.enqueue)
    with simulated_gpu.measure() as counts:
        b.run(1.0, graph)
    assert (counts.host_syncs, counts.graph_launches, counts.enqueues, counts.memcpy_async) == (1, 1, 0, 2)


# --- ONNX Runtime's CUDA EP ------------------------------------------------------------------------
def _ort_model(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    g = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "neg.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def test_ort_cuda_session_without_preload_dlls_runs_on_the_cpu(simulated_ort_cuda, tmp_path):
    import onnxruntime as ort

    path = _ort_model(tmp_path)
    assert "CUDAExecutionProvider" in ort.get_available_providers()  # listed all the same
    s = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert s.get_providers() == ["CPUExecutionProvider"]
    assert "CUDA EP failed to load" in simulated_ort_cuda.violations[-1]
    ort.preload_dlls()
    s = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert s.get_providers()[0] == "CUDAExecutionProvider"


def test_ort_cuda_graph_id_must_keep_its_addresses_and_shapes(simulated_ort_cuda, tmp_path):
    import onnxruntime as ort

    ort.preload_dlls()
    s = ort.InferenceSession(str(_ort_model(tmp_path)),
                             providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"}), "CPUExecutionProvider"])
    ro = ort.RunOptions()
    ro.add_run_config_entry("gpu_graph_id", "1")

    def bound(batch):
        io = s.io_binding()
        x = ort.OrtValue.ortvalue_from_shape_and_type([batch, 4], np.float32, "cuda", 0)
        y = ort.OrtValue.ortvalue_from_shape_and_type([batch, 4], np.float32, "cuda", 0)
        io.bind_ortvalue_input("x", x)
        io.bind_ortvalue_output("y", y)
        return io, x, y

    io, x, y = bound(2)
    for i in range(3):  # two ordinary runs, then the capture
        x.update_inplace(np.full((2, 4), i, np.float32))
        s.run_with_iobinding(io, ro)
        np.testing.assert_array_equal(y.numpy(), -np.full((2, 4), i, np.float32))
    assert s.captured.keys() == {1} and s.runs[1] == 3
    io2, x2, y2 = bound(2)  # new buffers under the same graph id: caught
    with pytest.raises(RuntimeError, match="replayed with other bound addresses"):
        s.run_with_iobinding(io2, ro)
    with pytest.raises(RuntimeError, match="run_with_iobinding"):
        s.run(None, {"x": np.zeros((2, 4), np.float32)})


def test_ort_cuda_reading_or_overwriting_before_a_synchronize_is_caught(simulated_ort_cuda, tmp_path):
    """A run with `disable_synchronize_execution_providers` leaves its work queued: its outputs are read,
    and its inputs overwritten, only after a synchronize."""
    import onnxruntime as ort

    sim = simulated_ort_cuda
    ort.preload_dlls()
    s = ort.InferenceSession(str(_ort_model(tmp_path)), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    x = ort.OrtValue.ortvalue_from_numpy(np.ones((2, 4), np.float32), "cuda", 0)
    y = ort.OrtValue.ortvalue_from_shape_and_type([2, 4], np.float32, "cuda", 0)
    io = s.io_binding()
    io.bind_input("x", "cuda", 0, np.float32, [2, 4], x.data_ptr())  # a raw device pointer
    io.bind_output("y", "cuda", 0, np.float32, [2, 4], y.data_ptr())
    with sim.measure() as c:
        s.run_with_iobinding(io)  # default options: ONNX Runtime synchronizes at the end of the run
    assert (c.host_syncs, c.ort_run_syncs) == (1, 1)
    np.testing.assert_array_equal(y.numpy(), -np.ones((2, 4), np.float32))
    ro = ort.RunOptions()
    ro.add_run_config_entry("disable_synchronize_execution_providers", "1")
    with sim.measure() as c:
        s.run_with_iobinding(io, ro)
    assert c.host_syncs == 0
    with pytest.raises(RuntimeError, match="reading a CUDA tensor .* before a synchronize"):
        y.numpy()
    with pytest.raises(RuntimeError, match="update_inplace of a CUDA tensor before a synchronize"):
        x.update_inplace(np.zeros((2, 4), np.float32))
    io.synchronize_outputs()
    np.testing.assert_array_equal(y.numpy(), -np.ones((2, 4), np.float32))
    with pytest.raises(RuntimeError, match="not inside one live device allocation"):
        io.bind_input("x", "cuda", 0, np.float32, [4, 4], x.data_ptr())  # 64 bytes over a 32-byte tensor


def test_ort_cuda_replays_synchronize_whatever_the_run_options_say(simulated_ort_cuda, tmp_path):
    """As in ONNX Runtime's CUDAGraphManager::Replay: a replayed graph id synchronizes its stream."""
    import onnxruntime as ort

    sim = simulated_ort_cuda
    ort.preload_dlls()
    s = ort.InferenceSession(str(_ort_model(tmp_path)),
                             providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"}), "CPUExecutionProvider"])
    ro = ort.RunOptions()
    ro.add_run_config_entry("gpu_graph_id", "1")
    ro.add_run_config_entry("disable_synchronize_execution_providers", "1")
    x = ort.OrtValue.ortvalue_from_numpy(np.ones((2, 4), np.float32), "cuda", 0)
    y = ort.OrtValue.ortvalue_from_shape_and_type([2, 4], np.float32, "cuda", 0)
    io = s.io_binding()
    io.bind_ortvalue_input("x", x)
    io.bind_ortvalue_output("y", y)
    counts = []
    for _ in range(4):  # two ordinary runs, the capturing run, a replay
        with sim.measure() as c:
            s.run_with_iobinding(io, ro)
        counts.append((c.host_syncs, c.ort_capture_syncs, c.ort_replay_syncs))
        io.synchronize_outputs()
    assert counts == [(0, 0, 0), (0, 0, 0), (1, 1, 0), (1, 0, 1)]

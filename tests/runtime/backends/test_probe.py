"""The machine probe's ONNX Runtime CUDA check: a one-node session that shows whether the CUDA EP really loads."""
from __future__ import annotations

import numpy as np

from cmrt.runtime.backends.probe import PROBE_MODEL, Environment, GpuInfo
from cmrt.runtime.backends.selection import select_backend


def test_probe_model_is_the_one_node_identity_model():
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8, producer_name="cmrt")
    assert model.SerializeToString() == PROBE_MODEL
    onnx.checker.check_model(onnx.load_from_string(PROBE_MODEL))
    out = ort.InferenceSession(PROBE_MODEL, providers=["CPUExecutionProvider"]).run(None, {"x": np.ones(1, np.float32)})
    assert out[0].tolist() == [1.0]


def test_probe_reports_a_listed_cuda_ep_that_cannot_load(simulated_ort_cuda):
    from cmrt.runtime.backends.probe import probe_environment

    env = probe_environment()
    assert env.ort_cuda_usable and env.onnxruntime_cuda_error is None
    probe_environment.cache_clear()
    simulated_ort_cuda.cuda_libraries = False
    env = probe_environment()
    assert "CUDAExecutionProvider" in env.onnxruntime_providers
    assert env.onnxruntime_cuda_error.startswith("ONNX Runtime lists the CUDA EP but cannot load it")
    assert env.to_dict()["ort_cuda_missing_reason"] == env.onnxruntime_cuda_error


def test_selection_says_why_a_listed_cuda_ep_is_skipped():
    env = Environment(
        gpus=(GpuInfo("NVIDIA L4", (8, 9)),), gpu_source="cuda-python", cuda_python_version="13.5.0",
        tensorrt_error="ModuleNotFoundError: tensorrt", onnxruntime_version="1.31.1",
        onnxruntime_providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
        onnxruntime_cuda_error="ONNX Runtime lists the CUDA EP but cannot load it (CUDA or cuDNN libraries missing)",
    )
    s = select_backend(env)
    assert (s.backend, s.device) == ("onnxruntime", "cpu")
    assert s.fallback == env.onnxruntime_cuda_error and "cannot load it" in s.reason

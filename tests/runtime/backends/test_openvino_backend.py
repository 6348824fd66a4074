"""The optional OpenVINO CPU backend: fp32 gives ONNX Runtime's images; bf16 is close and opt-in."""
import numpy as np
import pytest

import cmrt

pytest.importorskip("openvino")


def test_fp32_matches_onnxruntime(small_models):
    engine = small_models["cond"][1]
    ort_images = cmrt.load(engine)(batch_size=3, timesteps=[22, 0], seed=1, output_type="np").images
    ov = cmrt.load(engine, backend="openvino")
    assert ov.backend.name == "openvino" and ov.backend.precision == "fp32"
    for batch in (1, 3, 8):  # dynamic batch from one compiled model
        images = ov(batch_size=batch, timesteps=[22, 0], seed=1, output_type="np").images
        assert images.shape == (batch, 16, 16, 3)
    images = ov(batch_size=3, timesteps=[22, 0], seed=1, output_type="np").images
    assert np.abs(images - ort_images).max() <= 1e-4


def test_bf16_is_close_where_supported(small_models):
    from cmrt.runtime.backends.openvino_backend import bf16_supported

    if not bf16_supported():
        pytest.skip("this CPU has no bf16 instructions")
    engine = small_models["cond"][1]
    ref = cmrt.load(engine)(batch_size=2, seed=3, output_type="np").images
    got = cmrt.load(engine, backend="openvino", precision="bf16")(batch_size=2, seed=3, output_type="np").images
    psnr = 10 * np.log10(1.0 / np.mean((got - ref) ** 2))
    assert psnr >= 30, psnr


@pytest.mark.parametrize("kwargs,exc", [({"precision": "fp16"}, ValueError), ({"device": "cuda"}, ValueError),
                                        ({"threads": 0}, ValueError)])
def test_bad_arguments(small_models, kwargs, exc):
    with pytest.raises(exc):
        cmrt.load(small_models["cond"][1], backend="openvino", **kwargs)

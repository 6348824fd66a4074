"""Export parity on the real ImageNet-64 architecture (295.9 M parameters, random weights). Slow."""
import time

import numpy as np
import pytest

pytest.importorskip("torch")


@pytest.mark.slow
def test_imagenet64_export_parity(tmp_path, record_property):
    from cmrt.build.folder import build_engine_folder
    from cmrt.engine.options import BuildOptions
    from cmrt.engine.manifest import read_manifest
    from cmrt.build.architectures import random_weight_folder

    model = random_weight_folder("imagenet64", tmp_path / "imagenet64")
    t0 = time.perf_counter()
    engine = build_engine_folder(str(model), out=tmp_path / "engine", options=BuildOptions(precisions=("fp32",)))
    seconds = time.perf_counter() - t0
    m = read_manifest(engine)
    assert m.data["unet"]["parameters"] == pytest.approx(295.9e6, rel=1e-3)
    v = m.data["onnx"]["fp32"]["validation"]
    record_property("build_seconds", seconds)
    record_property("max_abs_error", v["max_abs_error"])
    print(f"ImageNet-64 fp32 export+validation: {seconds:.1f} s, max abs error vs PyTorch {v['max_abs_error']:.3g} "
          f"(batch sizes {v['batch_sizes']})")
    assert v["max_abs_error"] < 1e-4
    assert np.isfinite(v["max_abs_error"])
    w = m.winograd  # the CPU graph: validated whether or not this machine's timing kept it
    record_property("winograd", w["reason"])
    print(f"Winograd CPU graph: {w['rewrite']['rewritten']} convs, max abs error {w['validation']['max_abs_error']:.3g}; "
          f"{w['reason']}")
    assert w["rewrite"]["rewritten"] > 40 and w["validation"]["max_abs_error"] < 1e-4

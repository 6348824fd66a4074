"""The step graph (cmrt.build.step_graph): its surgery, its place in the folder, its build-time validation."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from cmrt.engine import io_spec as io
from cmrt.engine.manifest import read_manifest

onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")

from cmrt.build import step_graph as sg  # noqa: E402


def test_the_folder_has_a_validated_step_graph_that_shares_the_weights(small_models):
    m = read_manifest(small_models["cond"][1])
    entry = m.onnx_entry("fp32")
    rec = entry["step"]
    assert rec["file"] == "unet.fp32.step.onnx" and rec["from"] == "unet.fp32.onnx" and rec["file"] in m.files
    assert rec["coefs"] == list(io.STEP_COEF_ORDER)
    assert {"inputs": rec["inputs"], "outputs": rec["outputs"]} == io.step_io_spec(m.unet)
    v = rec["validation"]
    assert v["max_abs_error"] <= io.STEP_TOLERANCE == v["tolerance"] and v["unet_output_max_abs_error"] <= io.STEP_TOLERANCE
    assert set(v["max_abs_error_per_case"]) == {f"batch {b}, step {i}" for b in sg.VALIDATION_BATCHES for i in range(2)}
    # graph only: every weight initializer points into the plain graph's weight file
    model = onnx.load(str(m.folder / rec["file"]), load_external_data=False)
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and {dict((e.key, e.value) for e in t.external_data)["location"] for t in external} == {entry["external_data"]}
    assert (m.folder / rec["file"]).stat().st_size < (m.folder / entry["external_data"]).stat().st_size / 4


def test_surgery_leaves_the_unet_untouched_and_adds_the_step(small_models):
    m = read_manifest(small_models["uncond"][1])
    plain = onnx.load(str(m.onnx_path("fp32")), load_external_data=False)
    step = onnx.load(str(m.folder / m.onnx_entry("fp32")["step"]["file"]), load_external_data=False)
    assert [n.name for n in step.graph.input] == [io.STEP_X, "timestep", io.STEP_COEFS, io.NOISE_TERM]
    assert [n.name for n in step.graph.output] == [io.STEP_OUTPUT, io.OUTPUT]
    unet_nodes = [n for n in step.graph.node if not n.name.startswith("cmrt_step/")]
    assert [n.SerializeToString() for n in unet_nodes] == [n.SerializeToString() for n in plain.graph.node]
    added = [n.op_type for n in step.graph.node if n.name.startswith("cmrt_step/")]
    # the numpy path's operations: a division (never a multiplication by 1 / divisor), then Mul, Add, clip, Add
    assert added == ["Gather"] * len(io.STEP_COEF_ORDER) + ["Div", "Mul", "Mul", "Add", "Max", "Min", "Add"]
    div = next(n for n in step.graph.node if n.op_type == "Div" and n.name.startswith("cmrt_step/"))
    assert list(div.input)[0] == io.STEP_X and list(div.output) == [io.SAMPLE]
    with pytest.raises(ValueError, match="already has tensors named"):
        sg.add_step(step)
    no_sample = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    with pytest.raises(ValueError, match="not a cmrt UNet graph"):
        sg.add_step(no_sample)
    assert sg.step_file_name("unet.fp32.winograd.onnx") == "unet.fp32.winograd.step.onnx"
    with pytest.raises(ValueError, match=".onnx"):
        sg.step_file_name("unet.plan")


def test_a_step_graph_that_computes_something_else_fails_validation(small_models, tmp_path):
    """Multiplying by the divisor instead of dividing: the validation catches it and says by how much."""
    src = small_models["cond"][1]
    m = read_manifest(src)
    folder = tmp_path / "e"
    shutil.copytree(src, folder)
    name = m.onnx_entry("fp32")["step"]["file"]
    model = onnx.load(str(folder / name), load_external_data=False)
    next(n for n in model.graph.node if n.op_type == "Div" and n.name.startswith("cmrt_step/")).op_type = "Mul"
    (folder / name).write_bytes(model.SerializeToString())
    with pytest.raises(RuntimeError, match=r"differs from the numpy step on unet.fp32.onnx's output by .*\(tolerance 1e-05\)"):
        sg.validate_step_graph(folder, name, "unet.fp32.onnx", m.unet, m.scheduler_config)
    # and the untouched graph passes
    assert sg.validate_step_graph(src, name, "unet.fp32.onnx", m.unet, m.scheduler_config)["max_abs_error"] <= io.STEP_TOLERANCE


def test_validation_cases_follow_a_real_schedule(small_models):
    from cmrt.runtime import scheduler as cm

    m = read_manifest(small_models["cond"][1])
    cfg = cm.SchedulerConfig.from_dict(m.scheduler_config)
    plan = cm.step_constants(cm.make_schedule(cfg, num_inference_steps=2), cfg)
    cases = list(sg.validation_cases(m.unet, m.scheduler_config))
    assert [(i, b) for i, b, _, _ in cases] == [(i, b) for b in sg.VALIDATION_BATCHES for i in range(2)]
    for i, b, k, f in cases:
        assert k == plan[i] and f[io.STEP_X].shape == (b, 3, 16, 16) and f["class_labels"].shape == (b,)
        np.testing.assert_array_equal(f[io.STEP_COEFS], [k.divisor, k.c_skip, k.c_out, -1, 1])
        assert 0 < np.abs(f[io.NOISE_TERM]).max() < 10 * k.noise_coef  # a scaled standard normal

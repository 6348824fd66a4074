"""Engine folders as the run time sees them: self-contained, verified on load, refused when changed."""
import shutil

import pytest

import cmrt
from cmrt.engine.manifest import EngineFolderError, read_manifest


def test_manifest_has_what_the_runtime_needs(small_models):
    m = read_manifest(small_models["cond"][1])
    d = m.data
    assert d["source"]["kind"] == "local" and d["source"]["fingerprint"].startswith("sha256:")
    assert d["unet"]["sample_size"] == 16 and d["unet"]["num_class_embeds"] == 10
    assert d["scheduler"]["num_train_timesteps"] == 40
    e = d["onnx"]["fp32"]
    assert e["opset"] == 17
    assert [i["name"] for i in e["inputs"]] == ["sample", "timestep", "class_labels"]
    assert [i["dtype"] for i in e["inputs"]] == ["float32", "float32", "int64"]
    assert e["validation"]["max_abs_error"] < 1e-4 and e["validation"]["batch_sizes"] == [1, 2]
    wino = e["winograd"]
    graphs = {"unet.fp32.onnx", e["external_data"], e["step"]["file"]}
    graphs |= {wino["file"], wino["filters_file"], wino["step"]["file"]} if wino["used"] else set()
    assert e["external_data"] == "unet.fp32.onnx.data" and set(d["files"]) == graphs
    assert all(len(rec["sha256"]) == 64 for rec in d["files"].values())
    assert {"torch", "diffusers", "onnx", "cmrt"} <= set(d["tools"])
    uncond = read_manifest(small_models["uncond"][1]).data["onnx"]["fp32"]
    assert [i["name"] for i in uncond["inputs"]] == ["sample", "timestep"]


def test_tampered_file_is_refused(small_models, tmp_path):
    engine = tmp_path / "engine"
    shutil.copytree(small_models["cond"][1], engine)
    onnx_file = engine / "unet.fp32.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-100] ^= 0xFF  # same size, different content
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(EngineFolderError, match="checksum"):
        cmrt.load(engine)


def test_truncated_missing_and_foreign_folders(small_models, tmp_path):
    engine = tmp_path / "engine"
    shutil.copytree(small_models["cond"][1], engine)
    with open(engine / "unet.fp32.onnx", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(EngineFolderError, match="truncated"):
        cmrt.load(engine)
    (engine / "unet.fp32.onnx").unlink()
    with pytest.raises(EngineFolderError, match="missing"):
        cmrt.load(engine)
    (engine / "manifest.json").write_text("{not json")
    with pytest.raises(EngineFolderError, match="JSON"):
        cmrt.load(engine)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="neither an engine folder"):
        cmrt.load(empty)
    with pytest.raises(ValueError, match="does not exist"):
        cmrt.load(tmp_path / "nowhere")


def test_the_batch_chunk_is_read_for_the_graph_it_was_measured_on(small_models):
    """Each CPU graph has its own measured chunk, which its step graph shares; a graph without a
    record (a folder built before the measurement) runs the whole batch in one call."""
    from dataclasses import replace

    m = read_manifest(small_models["cond"][1])
    e = {**m.data["onnx"]["fp32"]}
    w = e["winograd"] = {**e["winograd"], "used": True, "step": {**e["step"], "file": "w.step.onnx", "from": e["winograd"]["file"]}}
    e["batching"] = {**e["batching"], "chunk": 2}
    w["batching"] = {"graph": w["file"], "chunk": 1}
    measured = replace(m, data={**m.data, "onnx": {"fp32": e}})
    assert measured.batch_chunk(m.folder / e["file"]) == 2
    assert measured.batch_chunk(m.folder / e["step"]["file"]) == 2
    assert measured.batch_chunk(m.folder / w["file"]) == 1
    assert measured.batch_chunk(m.folder / "w.step.onnx") == 1
    assert measured.batch_chunk(m.folder / "unet.fp16.onnx") is None  # no record: one call
    assert measured.batch_chunk(m.folder.parent / e["file"]) is None  # a file of another folder
    e["batching"] = {**e["batching"], "chunk": None}
    assert measured.batch_chunk(m.folder / e["file"]) is None
    del e["batching"], w["batching"]
    assert measured.batch_chunk(m.folder / e["file"]) is None and measured.batch_chunk(m.folder / w["file"]) is None

"""Engine folders: self-contained, verified on load, reused when current, rebuilt when not, atomic."""
import json
import shutil

import pytest

import cmrt
from cmrt.engine.manifest import EngineFolderError, read_manifest

pytest.importorskip("torch")
from cmrt.engine.build import BuildOptions, build_engine_folder  # noqa: E402


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
    graphs = {"unet.fp32.onnx", e["external_data"]} | ({e["winograd"]["file"]} if e["winograd"]["used"] else set())
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


def test_reuse_is_instant_and_changes_rebuild(small_models, tmp_path):
    import time

    folder, _ = small_models["uncond"]
    model = tmp_path / "model"
    shutil.copytree(folder, model)
    opts = BuildOptions(precisions=("fp32",), max_batch=4)
    out = build_engine_folder(str(model), out=tmp_path / "e", options=opts)
    key = json.loads((out / "manifest.json").read_text())["build_key"]
    t0 = time.perf_counter()
    build_engine_folder(str(model), out=out, options=opts)
    assert time.perf_counter() - t0 < 0.5
    assert json.loads((out / "manifest.json").read_text())["build_key"] == key
    # a changed option rebuilds
    build_engine_folder(str(model), out=out, options=BuildOptions(precisions=("fp32",), max_batch=6))
    m = json.loads((out / "manifest.json").read_text())
    assert m["build_options"]["max_batch"] == 6 and m["build_key"] != key
    key2 = m["build_key"]
    # a changed source (new scheduler config) rebuilds
    cfg_path = model / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["num_train_timesteps"] = 151
    cfg_path.write_text(json.dumps(cfg))
    build_engine_folder(str(model), out=out, options=BuildOptions(precisions=("fp32",), max_batch=6))
    m = json.loads((out / "manifest.json").read_text())
    assert m["build_key"] != key2 and m["scheduler"]["num_train_timesteps"] == 151


def test_failed_build_leaves_old_folder_intact(small_models, tmp_path, monkeypatch):
    folder, _ = small_models["uncond"]
    out = build_engine_folder(str(folder), out=tmp_path / "e", options=BuildOptions(precisions=("fp32",), max_batch=4))
    before = (out / "manifest.json").read_text()

    import cmrt.export.onnx_export as ox

    def boom(*a, **k):
        raise RuntimeError("simulated crash during validation")

    monkeypatch.setattr(ox, "validate_onnx", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        build_engine_folder(str(folder), out=out, options=BuildOptions(precisions=("fp32",), max_batch=5))
    assert (out / "manifest.json").read_text() == before
    assert read_manifest(out).max_batch == 4
    assert [p.name for p in tmp_path.iterdir()] == ["e"]  # no staging debris
    # and a first build that fails leaves nothing that loads
    with pytest.raises(RuntimeError):
        build_engine_folder(str(folder), out=tmp_path / "fresh", options=BuildOptions(precisions=("fp32",)))
    assert not (tmp_path / "fresh").exists()


def test_build_option_validation():
    with pytest.raises(ValueError, match="min_batch"):
        BuildOptions(min_batch=4, opt_batch=2)
    with pytest.raises(ValueError, match="precisions"):
        BuildOptions(precisions=("int8",))
    with pytest.raises(TypeError, match="max_batch"):
        BuildOptions(max_batch=2.5)


def test_hub_unreachable_names_local_folder_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from cmrt.export.loading import ModelUnavailableError

    with pytest.raises(ModelUnavailableError, match="local"):
        build_engine_folder("cd_imagenet64_l2", out="/tmp/cmrt-never-built")

"""`cmrt build`: folders reused when current, rebuilt when not, and written atomically."""
import json
import shutil

import pytest

from cmrt.engine.manifest import read_manifest
from cmrt.engine.options import BuildOptions

pytest.importorskip("torch")
from cmrt.build.folder import build_engine_folder  # noqa: E402


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

    import cmrt.build.onnx_export as ox

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
    from cmrt.engine.errors import ModelUnavailableError

    with pytest.raises(ModelUnavailableError, match="local"):
        build_engine_folder("cd_imagenet64_l2", out="/tmp/cmrt-never-built")


def test_build_and_load_by_name_agree_on_the_engine_root(monkeypatch, tmp_path):
    """`cmrt build NAME` writes where `cmrt.load("NAME")` looks: $CMRT_ENGINE_DIR (cmrt.engine.paths)."""
    import cmrt
    from cmrt.cli import main

    root = tmp_path / "elsewhere"
    monkeypatch.setenv("CMRT_ENGINE_DIR", str(root))
    monkeypatch.chdir(tmp_path)
    assert main(["build", "digits", "--precision", "fp32", "--winograd", "never", "--opt-batch", "2", "--max-batch", "2"]) == 0
    assert read_manifest(root / "digits").max_batch == 2 and not (tmp_path / "engines").exists()
    pipe = cmrt.load("digits", device="cpu")
    assert pipe.manifest.folder == root / "digits"
    assert pipe(batch_size=2, seed=0, output_type="np").images.shape == (2, 16, 16, 3)

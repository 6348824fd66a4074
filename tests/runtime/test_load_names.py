"""What `cmrt.load` does with a name: a path is never a download, and only known models are built on load."""
from __future__ import annotations

import shutil

import pytest

import cmrt
import cmrt.runtime.loading as loading
from cmrt.engine.errors import EngineFolderError
from cmrt.engine.models import resolve_model


class BuildAttempted(Exception):
    pass


@pytest.fixture
def no_builds(monkeypatch, tmp_path):
    """Record every build `cmrt.load` starts (a build of a hub id is a download) and stop it there."""
    started = []

    def build(what, *args, **kwargs):
        started.append((what, args))
        raise BuildAttempted(f"{what} {args}")

    monkeypatch.setattr(loading, "_build", build)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CMRT_ENGINE_DIR", str(tmp_path / "root"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return started


@pytest.mark.parametrize("name", ["engines/digits", "./digits", "~/no-such-folder-cmrt/x", "/no/such/engine", "team/model"])
def test_a_missing_path_is_an_error_and_never_a_download(no_builds, tmp_path, name):
    (tmp_path / "engines").mkdir()  # `engines/digits`: the folder is there, the model is not
    (tmp_path / "root" / "team").mkdir(parents=True)  # `team/model`: first component in the engine root
    with pytest.raises(EngineFolderError, match="does not exist"):
        cmrt.load(name, device="cpu")
    assert no_builds == []


def test_another_hub_id_is_not_built_on_load(no_builds):
    with pytest.raises(ValueError, match="cmrt build someone/model"):
        cmrt.load("someone/model", device="cpu")
    assert no_builds == []


def test_known_models_are_still_built_on_load(no_builds):
    for name in ("digits", "cd_imagenet64_l2", "openai/diffusers-ct_bedroom256"):
        with pytest.raises(BuildAttempted):
            cmrt.load(name, device="cpu")
    assert [args[0] for _, args in no_builds] == ["digits", "cd_imagenet64_l2", "openai/diffusers-ct_bedroom256"]


def test_a_hub_id_built_with_cmrt_build_loads_by_name(no_builds, small_models, tmp_path):
    shutil.copytree(small_models["cond"][1], tmp_path / "root" / "someone--model")
    pipe = cmrt.load("someone/model", device="cpu")
    assert pipe.manifest.folder == tmp_path / "root" / "someone--model" and no_builds == []


def test_an_existing_folder_that_is_not_an_engine_folder_says_so(no_builds, tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(EngineFolderError, match="neither an engine folder"):
        cmrt.load("stuff", device="cpu")
    assert no_builds == []


def test_what_looks_like_a_path(tmp_path, monkeypatch):
    from cmrt.engine.models import looks_like_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").mkdir()
    root = tmp_path / "root"
    (root / "there").mkdir(parents=True)
    for name in ("./x", "../x", "/x/y", "~/x", "here/y", "there/y", "here"):
        assert looks_like_path(name, (root,)), name
    for name in ("owner/model", "digits", "cd_imagenet64_l2", "openai/diffusers-cd_imagenet64_l2"):
        assert not looks_like_path(name, (root,)), name


def test_cmrt_build_still_takes_any_hub_id():
    assert resolve_model("some/hubid").kind == "hub"
    assert resolve_model("some/hubid").repo_id == "some/hubid"

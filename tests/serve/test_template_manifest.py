"""The Triton model (`templates/model.py`) with `unet=triton` reads only a manifest: it is checked like any other."""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types

import pytest

from cmrt.engine.errors import EngineFolderError
from cmrt.serve import triton_repo


@pytest.fixture
def template(monkeypatch):
    """The template module, imported with a stand-in for Triton's `triton_python_backend_utils`."""
    pb_utils = types.ModuleType("triton_python_backend_utils")
    pb_utils.Logger = types.SimpleNamespace(log_info=lambda message: None)
    pb_utils.TritonModelException = RuntimeError
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb_utils)
    spec = importlib.util.spec_from_file_location("cmrt_triton_template", triton_repo.TEMPLATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def initialize(template, engine):
    params = {"engine_dir": str(engine), "unet": "triton", "precision": "fp32"}
    config = {"parameters": {k: {"string_value": v} for k, v in params.items()}}
    model = template.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_instance_name": "cmrt_0"})
    return model


def test_unet_triton_checks_the_manifest_it_reads(template, small_models, tmp_path):
    engine = tmp_path / "engine"
    engine.mkdir()
    shutil.copy(small_models["cond"][1] / "manifest.json", engine / "manifest.json")  # what triton-repo copies
    assert initialize(template, engine).handler.pipe.sample_size == 16
    data = json.loads((engine / "manifest.json").read_text())
    data["scheduler"]["sigma_max"] = 40.0
    (engine / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(EngineFolderError, match="changed after the build"):
        initialize(template, engine)

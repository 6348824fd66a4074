"""Warm-up at load when serving: `cmrt serve --warmup 1,4`, `cmrt triton-repo --warmup 1,4`, RepoOptions(warmup=...).

In process, the Triton model's `initialize` passes the batch sizes to `cmrt.load(..., warmup=...)`,
so the model is ready only once they are warm; with a Triton UNet, `cmrt_unet`'s config carries
Triton's own `model_warmup`. (The bundled tritonserver runs both in tests/serve/test_triton_repo.py.)
"""
from __future__ import annotations

import importlib.util
import json
import sys
import types

import pytest

from cmrt.serve.triton_repo import RepoOptions, write_repository


def parse_config(path):
    pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient to parse config.pbtxt")
    from google.protobuf import json_format, text_format

    cfg = text_format.Parse(path.read_text(), pb2.ModelConfig())
    return cfg, json_format.MessageToDict(cfg, preserving_proto_field_name=True)


def test_repo_options_refuse_bad_warmup(small_models, tmp_path):
    assert RepoOptions(warmup=(4, 1, 4)).warmup == (4, 1)
    for bad in ((0,), ("1",), (True,), "1,4"):
        with pytest.raises(ValueError, match="warmup must be batch sizes >= 1"):
            RepoOptions(warmup=bad)
    with pytest.raises(ValueError, match=r"warmup batch sizes \[9\] are outside 1..8"):
        write_repository(small_models["cond"][1], tmp_path / "r", RepoOptions(warmup=(1, 9)))
    with pytest.raises(ValueError, match=r"warmup batch sizes \[4\] are outside 1..2"):
        write_repository(small_models["cond"][1], tmp_path / "r", RepoOptions(warmup=(4,), max_batch=2))
    assert not (tmp_path / "r").exists()


def test_a_triton_unet_gets_model_warmup_in_its_config(small_models, tmp_path):
    engine = small_models["cond"][1]
    repo = write_repository(engine, tmp_path / "r", RepoOptions(kind="cpu", warmup=(1, 4)))
    cfg, d = parse_config(repo / "cmrt_unet" / "config.pbtxt")
    assert [(w.name, w.batch_size) for w in cfg.model_warmup] == [("batch 1", 1), ("batch 4", 4)]
    inputs = {i.name: (i.data_type, list(i.dims)) for i in cfg.input}
    for w in cfg.model_warmup:  # every input, as the config declares it, zero-filled
        assert {k: (v.data_type, list(v.dims)) for k, v in w.inputs.items()} == inputs
        assert all(v.zero_data for v in w.inputs.values())
    assert "warmup" not in {k for k in parse_config(repo / "cmrt" / "config.pbtxt")[0].parameters}
    plain = write_repository(engine, tmp_path / "r2", RepoOptions(kind="cpu"))
    assert not parse_config(plain / "cmrt_unet" / "config.pbtxt")[0].model_warmup


def fake_pb_utils(monkeypatch):
    """What the template needs of the Python backend at initialize: a logger."""
    logged = []
    mod = types.ModuleType("triton_python_backend_utils")
    mod.Logger = types.SimpleNamespace(log_info=logged.append)
    mod.TritonModelException = RuntimeError
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", mod)
    return logged


def test_an_inprocess_model_loads_warm(small_models, tmp_path, monkeypatch):
    from cmrt.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    engine = small_models["cond"][1]
    repo = write_repository(engine, tmp_path / "r", RepoOptions(unet="inprocess", kind="cpu", warmup=(1, 4)),
                            link_engine=True, vendor=False)
    cfg, d = parse_config(repo / "cmrt" / "config.pbtxt")
    assert cfg.parameters["warmup"].string_value == "1,4"
    logged = fake_pb_utils(monkeypatch)
    warmed = []
    real_warmup = OnnxRuntimeBackend.warmup

    def warmup(self, sizes):
        warmed.append(list(sizes))
        return real_warmup(self, sizes)

    monkeypatch.setattr(OnnxRuntimeBackend, "warmup", warmup)
    spec = importlib.util.spec_from_file_location("cmrt_triton_model", repo / "cmrt" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(d), "model_instance_name": "cmrt_0", "model_instance_kind": "CPU"})
    assert warmed == [[1, 4]]  # done inside initialize: before Triton reports the model ready
    assert "warmed up batch sizes [1, 4]" in logged[-1]


def test_cli_passes_warmup_to_the_server_and_the_repository(small_models, tmp_path, monkeypatch):
    import cmrt.serve.server as server
    from cmrt.cli import main

    captured = {}

    def serve(model, options, ready=None):
        captured["options"] = options
        return 0

    monkeypatch.setattr(server, "serve", serve)
    assert main(["serve", str(small_models["cond"][1]), "--warmup", "1,4"]) == 0
    assert captured["options"].warmup == (1, 4)
    repo = tmp_path / "r"
    assert main(["triton-repo", str(small_models["cond"][1]), "--out", str(repo), "--warmup", "2", "--kind", "cpu"]) == 0
    assert [w.batch_size for w in parse_config(repo / "cmrt_unet" / "config.pbtxt")[0].model_warmup] == [2]

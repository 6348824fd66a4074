"""`cmrt triton-repo`: the repository's layout and configs, and the bundled tritonserver serving it.

The default repository (`--unet triton`) puts the UNet on Triton's ONNX Runtime backend,
which the official container has but nvidia-pytriton's tritonserver does not (it ships
the Python backend only). The server test therefore serves the repository as written
except for `cmrt_unet`, whose config keeps its generated inputs and outputs but names the
Python backend, with a stand-in model.py running the same model.onnx in ONNX Runtime:
the `cmrt` model, its vendored runtime and its BLS calls run exactly as written.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.serve.test_serve import ROOT, ScenarioRun, assert_images_match, expected_images, needs_pytriton, run_scenario, scenario_main, server_lock

STAND_IN = '''
import json, os
import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Test stand-in for Triton's ONNX Runtime backend: same config, same model.onnx."""

    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.sess = ort.InferenceSession(os.path.join(os.path.dirname(__file__), "model.onnx"), so,
                                         providers=["CPUExecutionProvider"])
        self.inputs = [(i["name"], i.get("reshape")) for i in cfg["input"]]
        self.output = cfg["output"][0]["name"]

    def execute(self, requests):
        responses = []
        for r in requests:
            feeds = {}
            for name, reshape in self.inputs:
                a = pb_utils.get_input_tensor_by_name(r, name).as_numpy()
                feeds[name] = a if reshape is None else a.reshape(a.shape[0], *reshape.get("shape", []))
            out = self.sess.run([self.output], feeds)[0]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output, out)]))
        return responses
'''

SPECS = [(0, 4, None), (1, None, None), (2, 7, 3), (3, None, 1)]


def write_cli(engine: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cmrt", "triton-repo", str(engine), "--out", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def parse_config(path: Path):
    """config.pbtxt through Triton's own ModelConfig schema (tritonclient ships it)."""
    pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient to parse config.pbtxt")
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), pb2.ModelConfig())


def test_default_repository_layout(small_models, tmp_path):
    engine = small_models["cond"][1]
    repo = tmp_path / "repo"
    r = write_cli(engine, repo, "--timesteps", "17,0", "--max-queue-delay-us", "500")
    assert r.returncode == 0, r.stderr
    assert (repo / "cmrt" / "1" / "model.py").is_file()
    assert (repo / "cmrt" / "1" / "engine" / "manifest.json").is_file()
    manifest = json.loads((engine / "manifest.json").read_text())
    onnx = manifest["onnx"]["fp32"]["file"]
    assert (repo / "cmrt_unet" / "1" / "model.onnx").read_bytes() == (engine / onnx).read_bytes()
    assert not list(repo.rglob("__pycache__")) and not [p for p in repo.parent.iterdir() if p.name.startswith(".")]

    cfg = parse_config(repo / "cmrt" / "config.pbtxt")
    assert cfg.name == "cmrt" and cfg.backend == "python" and cfg.max_batch_size == 8
    assert [(i.name, i.optional) for i in cfg.input] == [("seed", False), ("class_label", True), ("num_inference_steps", True)]
    assert [list(i.dims) for i in cfg.input] == [[1], [1], [1]]
    assert cfg.output[0].name == "image" and list(cfg.output[0].dims) == [16, 16, 3]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["unet"] == "triton" and params["unet_model"] == "cmrt_unet" and params["timesteps"] == "17,0"

    unet = parse_config(repo / "cmrt_unet" / "config.pbtxt")
    assert unet.platform == "onnxruntime_onnx" and unet.max_batch_size == 8
    assert [g.kind for g in unet.instance_group] == [unet.instance_group[0].KIND_GPU]  # one group: every GPU
    assert not unet.instance_group[0].gpus  # no pinned list: `count` instances on each GPU
    assert [(i.name, list(i.dims), list(i.reshape.shape)) for i in unet.input] == [
        ("sample", [3, 16, 16], []), ("timestep", [1], []), ("class_labels", [1], [])
    ]
    assert unet.input[1].HasField("reshape") and not unet.input[0].HasField("reshape")


def run_vendored(version: Path, blocked: tuple[str, ...], body: str, *argv: str, cwd: Path):
    """Run `body` in a new interpreter that imports cmrt from the repository's version folder
    `version` and fails any import of a top-level package in `blocked`."""
    code = textwrap.dedent(f"""
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in {blocked!r}:
                    raise ImportError('blocked: ' + name)
        sys.meta_path.insert(0, _Block())
        sys.path.insert(0, {str(version)!r})
        import cmrt
        assert cmrt.__file__.startswith({str(version)!r}), cmrt.__file__
        """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_vendored_runtime_is_used_and_torch_free(small_models, tmp_path):
    repo = tmp_path / "repo"
    assert write_cli(small_models["uncond"][1], repo, "--unet", "inprocess", "--kind", "cpu").returncode == 0
    version = repo / "cmrt" / "1"
    assert (version / "engine" / "manifest.json").is_file() and not (repo / "cmrt_unet").exists()
    r = run_vendored(version, ("torch", "diffusers", "pytriton", "tritonclient"), f"""
        import cmrt, cmrt.serve.handler, cmrt.runtime.pipeline
        pipe = cmrt.load({str(version / 'engine')!r})
        print(pipe(seed=1, output_type='np').images.shape)
        """, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(1, 16, 16, 3)"
    cfg = parse_config(repo / "cmrt" / "config.pbtxt")
    assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_CPU


def test_bad_options_are_refused(small_models, tmp_path):
    engine = small_models["cond"][1]
    r = write_cli(engine, tmp_path / "r1", "--max-batch", "9")
    assert r.returncode == 2 and "max_batch 9 is outside 1..8" in r.stderr
    r = write_cli(engine, tmp_path / "r2", "--max-steps", "41")
    assert r.returncode == 2 and "max_steps" in r.stderr
    (tmp_path / "r3").mkdir()
    r = write_cli(engine, tmp_path / "r3", "--force")
    assert r.returncode == 2 and "not a cmrt Triton repository" in r.stderr
    assert write_cli(engine, tmp_path / "r4").returncode == 0
    r = write_cli(engine, tmp_path / "r4")
    assert r.returncode == 2 and "--force" in r.stderr
    assert write_cli(engine, tmp_path / "r4", "--force", "--kind", "cpu").returncode == 0


@pytest.fixture(scope="module")
def winograd_engine(small_models, tmp_path_factory):
    """An engine folder that kept its Winograd CPU graph (the runtime then needs cmrt.engine.winograd and winograd_filters)."""
    pytest.importorskip("torch")
    from cmrt.build.folder import build_engine_folder
    from cmrt.engine.manifest import read_manifest
    from cmrt.engine.options import BuildOptions

    out = build_engine_folder(str(small_models["cond"][0]), out=tmp_path_factory.mktemp("wino") / "engine",
                              options=BuildOptions(precisions=("fp32",), max_batch=4, winograd="always"))
    assert read_manifest(out).winograd["used"]
    return out


def test_vendored_runtime_opens_a_winograd_folder(winograd_engine, tmp_path):
    """The copy is whole packages: what the runtime imports to open any folder is there, build code is not."""
    repo = tmp_path / "repo"
    assert write_cli(winograd_engine, repo, "--unet", "inprocess", "--kind", "cpu").returncode == 0
    version = repo / "cmrt" / "1"
    assert sorted(p.name for p in (version / "cmrt").iterdir() if p.name != "__pycache__") == [
        "__init__.py", "_version.py", "engine", "runtime", "serve"]
    r = run_vendored(version, ("torch", "diffusers", "onnx", "pytriton"), f"""
        import numpy as np, cmrt
        pipe = cmrt.load({str(version / 'engine')!r}, device='cpu')
        assert '/winograd/U' in pipe.backend.input_names[-1], pipe.backend.input_names  # the Winograd graph runs
        np.save(sys.argv[1], pipe(batch_size=2, seed=3, timesteps=[22, 0], output_type='np').images)
        """, str(tmp_path / "x.npy"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    import cmrt

    want = cmrt.load(winograd_engine, device="cpu")(batch_size=2, seed=3, timesteps=[22, 0], output_type="np").images
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), want)


# --- the bundled tritonserver serving a written repository --------------------------------
def scenario(name: str, engine: Path, out_prefix: Path) -> None:
    from cmrt.serve.client import Client
    from cmrt.serve.server import ServeOptions, TritonServer

    from tests.serve.test_serve import free_ports

    with ScenarioRun(name, out_prefix, "cmrt-repo-test-", specs=SPECS) as run:
        record, arrays, repo = run.record, run.arrays, run.tmp / "repo"
        inprocess = name == "repo-inprocess"
        r = write_cli(engine, repo, "--kind", "cpu", "--instances", "1", "--warmup", "1,4",
                      *(["--unet", "inprocess"] if inprocess else []))
        if r.returncode:
            raise RuntimeError(r.stderr)
        if not inprocess:  # the bundled server has no ONNX Runtime backend: cmrt_unet gets the Python stand-in
            cfg = repo / "cmrt_unet" / "config.pbtxt"
            cfg.write_text(cfg.read_text().replace('platform: "onnxruntime_onnx"', 'backend: "python"'))
            (repo / "cmrt_unet" / "1" / "model.py").write_text(STAND_IN)
        http, grpc, metrics = free_ports(3)
        with server_lock():
            server = run.server = TritonServer(None, ServeOptions(http_port=http, grpc_port=grpc, metrics_port=metrics),
                                               repository=repo)
            server.start()
            client = Client(server.url)
            arrays["served"] = np.concatenate(
                [client.generate([s], class_labels=None if l is None else [l], num_inference_steps=None if st is None else [st])
                 for s, l, st in SPECS]
            )
            record["log"] = server.log_tail(400)
            record["stop_code"] = server.stop()
            run.server = None


@pytest.mark.serve
@needs_pytriton
def test_bundled_tritonserver_serves_the_repository(small_models, tmp_path):
    engine = small_models["cond"][1]
    rec = run_scenario("repo", engine, tmp_path / "record", module="tests.serve.test_triton_repo")
    served = np.load(tmp_path / "record.npz")["served"]
    assert_images_match(served, expected_images(engine, SPECS))
    log = rec["log"]
    assert "unet=triton" in log and "cmrt from " in log and "/repo/cmrt/1/cmrt" in log, log[-3000:]
    assert rec["stop_code"] == 0


@needs_pytriton
def test_bundled_tritonserver_serves_an_inprocess_repository_of_a_winograd_folder(winograd_engine, tmp_path):
    rec = run_scenario("repo-inprocess", winograd_engine, tmp_path / "record", module="tests.serve.test_triton_repo")
    served = np.load(tmp_path / "record.npz")["served"]
    assert_images_match(served, expected_images(winograd_engine, SPECS))
    log = rec["log"]
    assert "unet=inprocess" in log and "/repo/cmrt/1/cmrt" in log, log[-3000:]
    assert "warmed up batch sizes [1, 4]" in log, log[-3000:]  # before the model was ready
    assert rec["stop_code"] == 0


if __name__ == "__main__":
    scenario_main(scenario)

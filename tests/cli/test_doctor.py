"""`cmrt doctor`: runs on this CPU machine (no GPU, no TensorRT) and explains what `auto` picks."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

from cmrt.cli import main
from cmrt.cli.doctor import format_report, gather

from tests.fakes.environments import A100, CPU_ENV, H100, add_fake_engine, gpu_env, patch_env


def test_doctor_runs_here(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for label in ("GPU", "driver", "CUDA runtime", "cuda-python", "TensorRT", "ONNX Runtime", "auto picks", "because"):
        assert f"  {label}" in out, label
    assert "CPUExecutionProvider" in out


def test_doctor_json_on_a_cpu_machine(monkeypatch, capsys):
    patch_env(monkeypatch, CPU_ENV)
    assert main(["doctor", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["environment"]["gpus"] == [] and r["environment"]["tensorrt_usable"] is False
    sel = r["selection"]
    assert (sel["backend"], sel["device"]) == ("onnxruntime", "cpu") and "no NVIDIA GPU" in sel["reason"]


def test_doctor_on_a_gpu_machine_explains_the_pick(monkeypatch):
    patch_env(monkeypatch, gpu_env(H100, tensorrt=False, ort_cuda=True))
    text = format_report(gather())
    assert "NVIDIA H100 80GB HBM3  compute capability 9.0" in text
    assert "auto picks      onnxruntime on cuda" in text and "TensorRT is not installed" in text
    patch_env(monkeypatch, gpu_env(H100, tensorrt=True))
    text = format_report(gather())
    assert "auto picks      tensorrt on cuda" in text and "TensorRT 11.4.0.9 are present" in text


def test_doctor_judges_an_engine_folder(small_models, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "engine"
    shutil.copytree(small_models["cond"][1], folder)
    add_fake_engine(folder, platform=A100, precision="fp32")
    patch_env(monkeypatch, gpu_env(H100, tensorrt=True))
    assert main(["doctor", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "sm80" in out and "NVIDIA A100-SXM4-80GB" in out
    assert "on this GPU   rebuild: the engine was built for NVIDIA A100-SXM4-80GB" in out and "blocked" not in out
    assert "engine          rebuild" in out  # auto would rebuild it (fp32, like the engine it replaces)
    patch_env(monkeypatch, CPU_ENV)
    assert main(["doctor", str(folder), "--backend", "tensorrt"]) == 0  # reports the error, does not crash
    out = capsys.readouterr().out
    assert "tensorrt/auto   error: backend='tensorrt' was requested but TensorRT cannot run here" in out
    assert main(["doctor", str(folder)]) == 0
    assert "is not used" in capsys.readouterr().out


def test_doctor_needs_no_torch():
    blocker = textwrap.dedent(
        """
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('torch', 'diffusers', 'tensorrt'):
                    raise ImportError('blocked for this test: ' + name)
        sys.meta_path.insert(0, _Block())
        from cmrt.cli import main
        rc = main(['doctor'])
        assert 'torch' not in sys.modules
        raise SystemExit(rc)
        """
    )
    r = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "auto picks" in r.stdout and "TensorRT" in r.stdout


def test_doctor_shows_why_a_listed_cuda_ep_is_not_used(simulated_ort_cuda, capsys):
    simulated_ort_cuda.cuda_libraries = False
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "ORT CUDA path   unusable: ONNX Runtime lists the CUDA EP but cannot load it" in out
    assert "auto picks      onnxruntime on cpu" in out
    assert "note            ONNX Runtime lists the CUDA EP but cannot load it" in out

"""scripts/gpu_check.sh on a machine without a GPU: every GPU part SKIPPED with its reason, one JSON report, exit 0."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PARTS = ["cuda_layer", "ort_cuda", "tensorrt", "benchmark"]


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None or os.path.exists("/dev/nvidia0"),
                    reason="a GPU is visible: the check would run the GPU parts (run scripts/gpu_check.sh itself)")
def test_gpu_check_skips_every_gpu_part_here_and_writes_its_report(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "GPU_CHECK_REPORT")}
    env["PYTHON"] = sys.executable
    env["OUT"] = str(tmp_path / "out")
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())  # $OUT is the default place
    assert [p["name"] for p in report["parts"]] == PARTS
    for p in report["parts"]:
        assert p["status"] == "SKIPPED" and "no NVIDIA GPU" in p["reason"], p
        assert f"{p['name']:<11} SKIPPED  {p['reason']}" in r.stdout
    assert report["summary"] == {"PASS": 0, "FAIL": 0, "SKIPPED": 4}
    assert report["python"] == sys.executable and report["doctor"]["selection"]["device"] == "cpu"
    # an explicit path wins over $OUT
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "r.json")], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and json.loads((tmp_path / "r.json").read_text())["summary"]["SKIPPED"] == 4

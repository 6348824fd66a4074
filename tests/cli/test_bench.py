"""The latency harness runs end to end on a tiny setting; checks the JSON's structure, never timings."""
import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")


def test_bench_harness_smoke(small_models, tmp_path):
    from cmrt.cli import main

    folder, _ = small_models["cond"]
    out = tmp_path / "bench"
    rc = main(["bench", "--model", str(folder), "--batch", "1", "2", "--steps", "1", "--runs", "2", "--warmup", "1",
               "--no-compile", "--cold-runs", "1", "--out", str(out), "--engines", str(tmp_path / "engines")])
    assert rc == 0
    r = json.loads((out / "results.json").read_text())
    assert {"command", "model", "settings", "machine", "gemm", "runs", "cold_start", "same_output_max_abs_diff"} <= set(r)
    assert r["machine"]["cores"] >= 1 and "numpy" in r["machine"]["versions"]
    assert r["gemm"]["flops_per_s"] > 0 and r["model"]["unet_gflops_batch1"] > 0
    systems = {x["system"] for x in r["runs"]}
    assert {"diffusers eager fp32", "cmrt onnxruntime cpu"} <= systems
    assert len(r["runs"]) == len(systems) * 2
    for run in r["runs"]:
        assert len(run["samples_s"]) == 2 and run["latency"]["n"] == 2
        assert set(run["latency"]) >= {"median_s", "p90_s", "p99_s"}
        assert run["images_per_s"] > 0 and run["achieved_flops_per_s"] > 0
        assert 0 <= run["outside_unet_share"] < 1
        assert 0 <= run["outside_unet_share_per_step"] <= run["outside_unet_share"] + 0.05  # the loop is part of the call
        assert len(run["loop_s"]) == len(run["unet_s"]) == run["latency"]["n"]
        b2b = run["back_to_back"]
        assert b2b["n"] == 2 == len(b2b["samples_s"]) == len(b2b["loop_s"])
        assert 0 <= b2b["outside_unet_share_per_step"] <= b2b["outside_unet_share"] + 0.05
    for c in r["cold_start"].values():
        assert set(c) >= {"import_s", "load_s", "first_call_s", "peak_rss_bytes"}, c
    parts = r["cold_start"]["cmrt onnxruntime cpu"]["parts_s"]
    assert set(parts) >= {"manifest", "backend_import", "weights", "session", "verification_wait", "verification", "total"}
    assert r["cold_start"]["cmrt onnxruntime cpu"]["graph_cache"] == "hit"  # the run's first process wrote it
    assert r["cold_start"]["cmrt onnxruntime cpu, plain graph"]["graph_cache"] == "hit"
    assert r["cold_start"]["cmrt Triton model (initialize)"]["parts_s"]["initialize"] > 0
    assert r["same_output_max_abs_diff"] <= 1e-4  # same seed, same images as diffusers
    md = (out / "report.md").read_text()
    assert "| system |" in md and "cmrt onnxruntime cpu" in md
    assert (out / "latency.png").stat().st_size > 1000

"""The shape of `cmrt bench`'s GPU report, from synthetic CUDA-event timings and from the strict fake GPU's
virtual clock (no GPU, nothing timed)."""
from __future__ import annotations

import types

import pytest

from benchmarks.latency import gpu_report as gr
from benchmarks.latency import report
from benchmarks.latency.systems import UNetClock


@pytest.mark.parametrize("name, want", [
    ("NVIDIA H100 80GB HBM3", ("H100 SXM", 989.0)),
    ("NVIDIA H200", ("H200 SXM", 989.0)),
    ("NVIDIA A100-SXM4-80GB", ("A100", 312.0)),
    ("NVIDIA A100 80GB PCIe", ("A100", 312.0)),
    ("NVIDIA L4", ("L4", 121.0)),
    ("NVIDIA H100 PCIe", None),  # other parts, other peaks: not in the table, so --gpu-peak-tflops
    ("NVIDIA H100 NVL", None),
    ("NVIDIA L40S", None),
    (None, None),
])
def test_peaks_are_looked_up_by_device_name(name, want):
    assert gr.peak_for_gpu(name) == want


def test_a_given_peak_wins_and_must_be_positive():
    assert gr.resolve_peak(500.0, "NVIDIA H100 80GB HBM3") == {"tflops": 500.0, "source": "--gpu-peak-tflops"}
    assert gr.resolve_peak(None, "NVIDIA L4") == {"tflops": 121.0, "source": "L4 dense fp16 tensor peak (NVIDIA datasheet)"}
    assert gr.resolve_peak(None, "NVIDIA L40S") is None
    with pytest.raises(ValueError, match="must be positive"):
        gr.resolve_peak(0.0, None)


def synthetic(wall_ms, event_ms, calls):
    return {"wall_ms": wall_ms, "event_ms": event_ms, "unet_calls": calls}


def test_report_fields_from_synthetic_event_timings():
    gens = [synthetic(4.0, [1.0, 1.0], 2), synthetic(5.0, [1.5, 0.5], 2), synthetic(8.0, [2.0, 2.0], 2)]
    peak = {"tflops": 1000.0, "source": "given"}
    r = gr.gpu_report(gens, flops_per_call=200e9, peak=peak)
    assert set(r) == {"n", "ms_per_unet_call", "ms_per_unet_call_p90", "achieved_tflops", "peak_tflops", "peak_source",
                      "fraction_of_fp16_peak", "gpu_idle_share"}
    assert r["n"] == 3 and r["ms_per_unet_call"] == pytest.approx(1.0)  # medians of 1.0, 1.0, 2.0
    assert r["achieved_tflops"] == pytest.approx(200.0)  # 200 GFLOP in 1 ms
    assert r["fraction_of_fp16_peak"] == pytest.approx(0.2) and r["peak_tflops"] == 1000.0
    assert r["gpu_idle_share"] == pytest.approx(0.5)  # medians of 0.5, 0.6, 0.5
    one_graph = gr.gpu_report([synthetic(3.0, [2.0], 2)], 200e9, None)  # a whole generation in one replay
    assert one_graph["ms_per_unet_call"] == pytest.approx(1.0) and one_graph["fraction_of_fp16_peak"] is None
    assert gr.gpu_report([synthetic(1.0, [1.0000001], 1)], 1e9, None)["gpu_idle_share"] == 0.0
    for bad in ([], [synthetic(0.0, [1.0], 1)], [synthetic(1.0, [], 1)], [synthetic(1.0, [-1.0], 1)], [synthetic(1.0, [0.5], 0)]):
        with pytest.raises(ValueError):
            gr.gpu_report(bad, 1e9, None)


def run_record(system, batch, steps, samples_s, event_ms):
    return {"system": system, "kind": "cmrt", "batch": batch, "steps": steps, "samples_s": samples_s, "event_ms": event_ms}


def test_runs_with_event_timings_get_a_gpu_report_and_a_table():
    runs = [
        run_record("cmrt tensorrt fp16 + graphs", 1, 2, [0.004, 0.005], [[1.0, 1.0], [1.5, 0.5]]),
        run_record("cmrt tensorrt fp16 + graphs", 4, 1, [0.010], [[4.0]]),
        run_record("cmrt onnxruntime cpu", 1, 2, [0.05, 0.05], [[], []]),  # no event timings: no GPU report
    ]
    gr.attach_gpu_reports(runs, flops_batch1=200e9, peak={"tflops": 1000.0, "source": "given"})
    assert runs[0]["gpu"]["ms_per_unet_call"] == pytest.approx(1.0) and runs[0]["gpu"]["n"] == 2
    assert runs[1]["gpu"]["achieved_tflops"] == pytest.approx(200.0)  # batch 4: 800 GFLOP in 4 ms
    assert "gpu" not in runs[2]
    rows = gr.gpu_rows(runs)
    assert [r[:3] for r in rows] == [["cmrt tensorrt fp16 + graphs", "1", "2"], ["cmrt tensorrt fp16 + graphs", "4", "1"]]
    assert all(len(r) == len(gr.GPU_HEADER) for r in rows) and rows[0][6] == "20.0%" and rows[0][7] == "55.0%"
    md = "\n".join(gr.gpu_markdown(runs))
    assert "| system | batch | steps | GPU ms per UNet call |" in md and "against 1000 TFLOP/s (given)" in md
    assert gr.gpu_markdown(runs[2:]) == []
    no_peak = [dict(runs[0], gpu=dict(runs[0]["gpu"], peak_tflops=None, peak_source=None, fraction_of_fp16_peak=None))]
    assert "pass --gpu-peak-tflops" in "\n".join(gr.gpu_markdown(no_peak)) and gr.gpu_rows(no_peak)[0][6] == "n/a"


class FakeGpuSystem:
    """A system whose backend times itself: synthetic event timings, one per step."""

    name, kind = "fake gpu", "cmrt"

    def __init__(self):
        self.clock = UNetClock()
        self.pending: list[float] = []

    def __call__(self, batch, steps, seed, same_noise_as_diffusers=False):
        self.pending += [0.25 * batch] * steps

    def take_event_timings(self):
        out, self.pending = self.pending, []
        return out


def test_the_harness_collects_event_timings_per_timed_call_and_reports_them():
    from benchmarks.latency.run import measure

    args = types.SimpleNamespace(batch=[1, 2], steps=[2], warmup=1, runs=3, settle_ms=0.0, steady_runs=0)
    bar = types.SimpleNamespace(update=lambda *a: None)
    runs = measure([FakeGpuSystem()], args, bar)
    assert [r["event_ms"] for r in runs] == [[[0.25, 0.25]] * 3, [[0.5, 0.5]] * 3]  # warm-up timings dropped
    gr.attach_gpu_reports(runs, flops_batch1=1e9, peak=None)
    assert [r["gpu"]["ms_per_unet_call"] for r in runs] == [0.25, 0.5]
    result = {
        "model": {"name": "m", "parameters": 1e6, "unet_gflops_batch1": 1.0},
        "machine": {"cpu": "c", "cores": 1, "gpu": "g", "versions": {}},
        "gemm": {"flops_per_s": 1e9, "how": "h"}, "command": "cmrt bench", "same_output_max_abs_diff": 0.0,
        "settings": {"warmup": 1, "runs": 3, "steady_runs": 0},
        "runs": [dict(r, speedup=None, images_per_s=1.0, achieved_flops_per_s=None, fraction_of_gemm_peak=None,
                      outside_unet_share=None, latency=report.summarize(r["samples_s"])) for r in runs],
    }
    md = report.markdown(result, None)
    assert "## On the GPU: CUDA-event time per UNet call" in md and "| fake gpu | 2 | 2 | 0.500 |" in md


def test_the_gpu_report_of_a_tensorrt_system_on_the_strict_fake(simulated_gpu, small_models, tmp_path):
    """`cmrt bench`'s GPU path end to end on the fake TensorRT/CUDA: CUDA events read the fake's virtual clock,
    so the timings are present and consistent, never figures; the fraction of peak follows from a given peak."""
    import shutil

    import numpy as np

    from benchmarks.latency.run import measure
    from benchmarks.latency.systems import CmrtSystem
    from cmrt.build.tensorrt import ensure_tensorrt_engine
    from cmrt.engine.tensorrt import TensorRTOptions

    folder = tmp_path / "engine"
    shutil.copytree(small_models["cond"][1], folder)
    ensure_tensorrt_engine(folder, TensorRTOptions(precision="fp32", use_timing_cache=False))
    system = CmrtSystem(str(folder), backend="tensorrt", device="cuda", name="cmrt tensorrt + graphs")
    assert system.pipe.step_graph
    args = types.SimpleNamespace(batch=[1, 4], steps=[1, 2], warmup=1, runs=3, settle_ms=0.0, steady_runs=0)
    runs = measure([system], args, types.SimpleNamespace(update=lambda *a: None))
    for r in runs:  # one graph launch per generation: one CUDA-event timing per timed call
        assert len(r["event_ms"]) == 3 and all(len(e) == 1 and e[0] > 0 for e in r["event_ms"])
        assert all(u > 0 for u in r["unet_s"])  # run_steps is what the clock times on a GPU backend
    peak = {"tflops": 50.0, "source": "given"}
    gr.attach_gpu_reports(runs, flops_batch1=2e9, peak=peak)
    for r in runs:
        g = r["gpu"]
        assert g["n"] == 3 and g["peak_tflops"] == 50.0
        want_ms = float(np.median([e[0] / r["steps"] for e in r["event_ms"]]))
        assert g["ms_per_unet_call"] == pytest.approx(want_ms)
        assert g["achieved_tflops"] == pytest.approx(2e9 * r["batch"] / (want_ms * 1e-3) / 1e12)
        assert g["fraction_of_fp16_peak"] == pytest.approx(g["achieved_tflops"] / 50.0)
        assert 0.0 <= g["gpu_idle_share"] <= 1.0
    rows = gr.gpu_rows(runs)
    assert [r[:3] for r in rows] == [["cmrt tensorrt + graphs", str(b), str(s)] for b in (1, 4) for s in (1, 2)]
    assert not simulated_gpu.violations, simulated_gpu.violations

"""The GPU side of `cmrt bench`: milliseconds per UNet call from CUDA-event timings, the share of
the GPU's dense fp16 peak the UNet reaches, and the share of a generation the GPU is idle.

A GPU backend that times its own work exposes `pop_event_timings() -> list[float]`: the
milliseconds, measured with CUDA events on its stream, of each replay (a CUDA graph launch
or an enqueue: one per step, or one for a whole generation) since the last call. The
harness takes them around every timed call; what comes out of here is pure arithmetic on
those samples, the UNet's FLOPs and a peak, so it is tested with synthetic timings.

- ms per UNet call: a generation's event time divided by its UNet calls (steps; a step
  graph's few element-wise operations included), median over generations;
- fraction of peak: the UNet's FLOPs per call over that time, against the GPU's dense fp16
  tensor peak (`--gpu-peak-tflops`, else the table below by the GPU's name);
- idle share: 1 - event time / wall time of the generation (the host work, copies and
  synchronizes the GPU waits for), median over generations.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

# Dense fp16 tensor-core peaks (no sparsity), TFLOP/s, by CUDA device name: NVIDIA datasheet.
# (label, pattern matched case-insensitively against the device name, TFLOP/s)
DENSE_FP16_PEAKS = (
    ("H100 SXM", r"\bH100\b(?!.*\b(PCIe|NVL)\b)", 989.0),
    ("H200 SXM", r"\bH200\b(?!.*\b(PCIe|NVL)\b)", 989.0),
    ("A100", r"\bA100\b", 312.0),
    ("L4", r"\bL4\b", 121.0),
)


def peak_for_gpu(name: str | None) -> tuple[str, float] | None:
    """(table label, dense fp16 TFLOP/s) for a CUDA device name such as 'NVIDIA H100 80GB HBM3', or None."""
    if not name:
        return None
    for label, pattern, tflops in DENSE_FP16_PEAKS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return label, tflops
    return None


def resolve_peak(given_tflops: float | None, gpu_name: str | None) -> dict[str, Any] | None:
    """The peak the report compares against: `--gpu-peak-tflops` when given, else the table's entry
    for this GPU; None when neither (the report then leaves the fraction out)."""
    if given_tflops is not None:
        if not given_tflops > 0:
            raise ValueError(f"--gpu-peak-tflops must be positive, got {given_tflops}")
        return {"tflops": float(given_tflops), "source": "--gpu-peak-tflops"}
    found = peak_for_gpu(gpu_name)
    if found is None:
        return None
    label, tflops = found
    return {"tflops": tflops, "source": f"{label} dense fp16 tensor peak (NVIDIA datasheet)"}


def gpu_report(generations: Sequence[dict[str, Any]], flops_per_call: float, peak: dict[str, Any] | None) -> dict[str, Any]:
    """Report fields from per-generation samples, each {"wall_ms": float, "event_ms": [replay ms, ...],
    "unet_calls": int}; `flops_per_call` is one UNet call's FLOPs at the batch size; `peak` from `resolve_peak`."""
    if not generations:
        raise ValueError("no generations with CUDA-event timings to report")
    if not flops_per_call > 0:
        raise ValueError(f"flops_per_call must be positive, got {flops_per_call}")
    per_call, idle = [], []
    for g in generations:
        wall, events, calls = float(g["wall_ms"]), [float(e) for e in g["event_ms"]], int(g["unet_calls"])
        if not wall > 0 or calls < 1 or not events or min(events) < 0:
            raise ValueError(f"a generation needs wall_ms > 0, unet_calls >= 1 and non-negative event timings, got {g}")
        busy = sum(events)
        per_call.append(busy / calls)
        idle.append(max(0.0, 1.0 - busy / wall))  # event resolution (~0.5 us) can put busy a hair above wall
    ms = float(np.median(per_call))
    achieved = flops_per_call / (ms * 1e-3) / 1e12
    return {
        "n": len(generations),
        "ms_per_unet_call": ms,
        "ms_per_unet_call_p90": float(np.percentile(per_call, 90)),
        "achieved_tflops": achieved,
        "peak_tflops": None if peak is None else peak["tflops"],
        "peak_source": None if peak is None else peak["source"],
        "fraction_of_fp16_peak": None if peak is None else achieved / peak["tflops"],
        "gpu_idle_share": float(np.median(idle)),
    }


GPU_HEADER = ["system", "batch", "steps", "GPU ms per UNet call", "p90", "TFLOP/s", "of fp16 peak", "GPU idle per generation"]


def gpu_rows(runs: Sequence[dict[str, Any]]) -> list[list[str]]:
    """One table row per run that has a GPU report (`run["gpu"]`)."""
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    out = []
    for r in runs:
        g = r.get("gpu")
        if g:
            out.append([r["system"], str(r["batch"]), str(r["steps"]), f"{g['ms_per_unet_call']:.3f}",
                        f"{g['ms_per_unet_call_p90']:.3f}", f"{g['achieved_tflops']:.1f}",
                        pct(g["fraction_of_fp16_peak"]), pct(g["gpu_idle_share"])])
    return out


def gpu_markdown(runs: Sequence[dict[str, Any]]) -> list[str]:
    """The report's GPU section (no lines when no run has CUDA-event timings)."""
    rows = gpu_rows(runs)
    if not rows:
        return []
    sources = sorted({r["gpu"]["peak_source"] for r in runs if r.get("gpu") and r["gpu"]["peak_source"]})
    peaks = sorted({r["gpu"]["peak_tflops"] for r in runs if r.get("gpu") and r["gpu"]["peak_tflops"]})
    peak = (f"against {', '.join(f'{p:g}' for p in peaks)} TFLOP/s ({'; '.join(sources)})" if peaks
            else "no peak known for this GPU: pass --gpu-peak-tflops")
    md = ["", "## On the GPU: CUDA-event time per UNet call (medians over generations)", "",
          f"UNet FLOPs per call over the event-timed GPU time, {peak}; idle: the share of a generation's wall "
          "time outside the event-timed replays.", "",
          "| " + " | ".join(GPU_HEADER) + " |", "|" + "---|" * len(GPU_HEADER)]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    return md


def attach_gpu_reports(runs: list[dict[str, Any]], flops_batch1: float, peak: dict[str, Any] | None) -> None:
    """Add `run["gpu"]` to every run whose timed calls came with CUDA-event timings (`run["event_ms"]`)."""
    for r in runs:
        events = r.get("event_ms") or []
        gens = [{"wall_ms": s * 1e3, "event_ms": e, "unet_calls": r["steps"]} for s, e in zip(r["samples_s"], events) if e]
        if gens:
            r["gpu"] = gpu_report(gens, flops_batch1 * r["batch"], peak)

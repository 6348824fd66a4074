"""Turn raw measurements into the terminal table, the Markdown report and the plot."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .gpu_report import gpu_markdown


def summarize(samples: list[float]) -> dict:
    a = np.asarray(samples, dtype=np.float64)
    return {
        "n": int(a.size),
        "median_s": float(np.median(a)),
        "p90_s": float(np.percentile(a, 90)),
        "p99_s": float(np.percentile(a, 99)),
        "min_s": float(a.min()),
        "max_s": float(a.max()),
    }


def rows(result: dict) -> list[dict]:
    """One row per (system, batch, steps) with derived figures, speedup against diffusers eager."""
    out = []
    base = {}
    for r in result["runs"]:
        if r["system"].startswith("diffusers eager"):
            base[(r["batch"], r["steps"])] = r["latency"]["median_s"]
    for r in result["runs"]:
        b = base.get((r["batch"], r["steps"]))
        out.append({**r, "speedup": (b / r["latency"]["median_s"]) if b else None})
    return out


def per_step_times(samples: dict, steps: int) -> tuple[float, float] | None:
    """(UNet ms, outside-UNet us) per step, medians over the calls in `samples` (its unet_s and
    loop_s lists); the share depends on how fast the UNet ran, these say why."""
    u, lp = np.asarray(samples.get("unet_s") or [], float), np.asarray(samples.get("loop_s") or [], float)
    if u.size == 0 or u.size != lp.size or not (np.isfinite(u).all() and (lp > 0).all()):
        return None
    return float(np.median(u)) / steps * 1e3, float(np.median(lp - u)) / steps * 1e6


def fmt_row(r: dict) -> list[str]:
    lat = r["latency"]
    pct = lambda v: "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.1f}%"  # noqa: E731
    return [
        r["system"], str(r["batch"]), str(r["steps"]),
        f"{lat['median_s'] * 1e3:.1f}", f"{lat['p90_s'] * 1e3:.1f}", f"{lat['p99_s'] * 1e3:.1f}",
        f"{r['images_per_s']:.2f}", pct(r.get("outside_unet_share_per_step")), pct(r["outside_unet_share"]),
        pct((r.get("back_to_back") or {}).get("outside_unet_share_per_step")),
        pct((r.get("back_to_back") or {}).get("outside_unet_share")),
        "n/a" if r["achieved_flops_per_s"] is None else f"{r['achieved_flops_per_s'] / 1e9:.1f}",
        pct(r["fraction_of_gemm_peak"]),
        "-" if r["speedup"] is None else f"{r['speedup']:.2f}x",
    ]


HEADER = ["system", "batch", "steps", "median ms", "p90 ms", "p99 ms", "img/s", "outside UNet per step", "per call",
          "back-to-back per step", "b2b per call",
          "GFLOP/s", "of GEMM peak", "vs diffusers"]


def table(result: dict) -> str:
    data = [HEADER] + [fmt_row(r) for r in rows(result)]
    widths = [max(len(row[i]) for row in data) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in data]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(result: dict, plot_name: str | None) -> str:
    m = result["machine"]
    md = [f"# cmrt latency benchmark: {result['model']['name']}", ""]
    md.append(f"- command: `{result['command']}`")
    md.append(f"- machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}; "
              + ", ".join(f"{k} {v}" for k, v in m["versions"].items()))
    md.append(f"- UNet: {result['model']['parameters'] / 1e6:.1f} M parameters, "
              f"{result['model']['unet_gflops_batch1']:.2f} GFLOP per call at batch 1 (counted by torch's FlopCounterMode)")
    md.append(f"- machine GEMM rate: {result['gemm']['flops_per_s'] / 1e9:.1f} GFLOP/s ({result['gemm']['how']})")
    md.append(f"- warm latency: {result['settings']['warmup']} warm-up call(s), then {result['settings']['runs']} timed "
              "calls per setting, systems interleaved call by call with an untimed "
              f"{result['settings'].get('settle_ms', 0):g} ms busy pause before each; figures are medians (p90/p99 for spread)")
    md.append(f"- same output: max abs difference between cmrt fp32 (`rng=\"torch\"`) and diffusers images for the "
              f"same seed: {result['same_output_max_abs_diff']:.2e}; timed cmrt calls use its default numpy noise")
    per = result.get("same_output_per_system") or {}
    if per:
        md.append("- image max abs difference from diffusers eager, same seed, batch 1: "
                  + "; ".join(f"{k}: {v:.2e}" for k, v in per.items()))
    md.append("- outside UNet: the share of time not spent in the UNet call, per step (within the denoising loop: "
              "input scaling, scheduler step, noise, copies, Python) and per call (adding input checks, initial noise "
              "and labels, post-processing); first in the interleaved timed calls, where every call starts with "
              "caches the other systems filled, then over "
              f"{result['settings'].get('steady_runs', 0)} back-to-back calls per system (a server running one model; "
              "n/a where not measured)")
    md.append("- GFLOP/s and its share of the GEMM rate count the UNet's direct-convolution FLOPs; a graph that computes "
              "convolutions with fewer multiplications (cmrt's Winograd CPU graph) shows an effective rate above 100%")
    md += ["", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    md += ["| " + " | ".join(fmt_row(r)) + " |" for r in rows(result)]
    md += gpu_markdown(result["runs"])
    timed = [(r, per_step_times(r, r["steps"]), per_step_times(r.get("back_to_back") or {}, r["steps"]))
             for r in rows(result)]
    timed = [t for t in timed if t[1] or t[2]]
    if timed:
        fmt = lambda t: "n/a" if t is None else f"{t[0]:.2f} ms / {t[1]:.0f} us"  # noqa: E731
        md += ["", "## Per step: UNet call and time outside it (medians)", "",
               "| system | batch | steps | interleaved: UNet / outside | back-to-back: UNet / outside |", "|---|---|---|---|---|"]
        md += [f"| {r['system']} | {r['batch']} | {r['steps']} | {fmt(i)} | {fmt(b)} |" for r, i, b in timed]
    if result.get("cold_start"):
        md += cold_start_markdown(result["cold_start"], result.get("import_load_speedup"))
    if result.get("notes"):
        md += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    if plot_name:
        md += ["", f"![latency]({plot_name})"]
    return "\n".join(md) + "\n"


LOAD_PARTS = (  # cmrt.load's parts (`Pipeline.load_seconds`), in the order they happen
    ("manifest", "manifest"),
    ("backend_import", "backend import"),
    ("weights", "weights (Winograd filters)"),
    ("session", "session"),
    ("verification_wait", "verification wait"),
)


def cold_start_markdown(cold: dict, ratio: float | None) -> list[str]:
    """The cold-start table: medians over new processes, with cmrt.load's parts."""
    systems = {k: v for k, v in cold.items() if k != "first_load_after_build"}
    n = max((c.get("n", 1) for c in systems.values() if "error" not in c), default=1)
    md = ["", f"## Cold start (new processes, medians of {n}, systems alternated; first image at batch 1, 1 step)", "",
          "| system | interpreter s | import s | load s | " + " | ".join(f"{label} s" for _, label in LOAD_PARTS)
          + " | verification (background) s | first image s | process to first image s | peak RSS MiB: first image / batch |",
          "|---|" + "---|" * (len(LOAD_PARTS) + 8)]
    for name, c in systems.items():
        if "error" in c:
            md.append(f"| {name} | failed: {c['error']} |" + "|" * (len(LOAD_PARTS) + 7))
            continue
        parts = c.get("parts_s") or {}
        if "initialize" in parts:  # the Triton model: its initialize's parts, then cmrt.load's inside it
            parts = {k[5:]: v for k, v in parts.items() if k.startswith("load.")} | {"verification": parts.get("load.verification")}
        cells = [f"{parts[k]:.2f}" if parts.get(k) is not None else "-" for k, _ in LOAD_PARTS]
        ver = parts.get("verification")
        md.append(f"| {name} | {c['interpreter_s']:.2f} | {c['import_s']:.2f} | {c['load_s']:.2f} | " + " | ".join(cells)
                  + f" | {'-' if ver is None else f'{ver:.2f}'} | {c['first_call_s']:.2f} | {c['process_to_first_image_s']:.2f} | "
                  f"{c.get('peak_rss_first_image_bytes', float('nan')) / 2**20:.0f} / {c['peak_rss_bytes'] / 2**20:.0f} ({c['peak_rss_batch']}) |")
    c, d = systems.get("cmrt onnxruntime cpu", {}), systems.get("diffusers eager fp32", {})
    if ratio and "error" not in c and "error" not in d:
        md.append("")
        md.append(f"- import + load: cmrt {ratio:.1f}x faster than diffusers (import torch/diffusers + `from_pretrained`); "
                  f"process to first image {d['process_to_first_image_s'] / c['process_to_first_image_s']:.1f}x; "
                  f"peak RSS {c['peak_rss_bytes'] / d['peak_rss_bytes']:.2f}x diffusers'.")
        plain = systems.get("cmrt onnxruntime cpu, plain graph", {})
        if "peak_rss_bytes" in plain:
            md.append(f"- the plain graph (`winograd=False`): import + load {plain['import_s'] + plain['load_s']:.2f} s, "
                      f"peak RSS {plain['peak_rss_bytes'] / d['peak_rss_bytes']:.2f}x diffusers'.")
    md.append("- cmrt's load: `manifest` reads it and checks sizes; the folder's SHA-256 verification runs on background "
              "threads meanwhile (its wall time in the verification column) and `verification wait` is what `cmrt.load` "
              "still waited for it before returning. The Triton row is the model's `initialize` (import column: the "
              "template's cmrt imports; load: the rest of initialize), called in a new process with a stand-in for "
              "Triton's `triton_python_backend_utils`.")
    first = cold.get("first_load_after_build")
    if first and "error" not in first:
        md.append(f"- the first cmrt process of the run (untimed above; graph cache: {first.get('graph_cache')}): "
                  f"import + load {first['import_s'] + first['load_s']:.2f} s.")
    return md


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rs = rows(result)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    systems = sorted({r["system"] for r in rs})
    steps_all = sorted({r["steps"] for r in rs})
    for s in systems:
        for st in steps_all:
            pts = sorted((r["batch"], r["latency"]["median_s"] * 1e3) for r in rs if r["system"] == s and r["steps"] == st)
            if pts:
                ax1.plot(*zip(*pts), marker="o", label=f"{s}, {st} step{'s' if st > 1 else ''}")
    ax1.set_xlabel("batch size")
    ax1.set_ylabel("median latency (ms)")
    ax1.set_title("latency vs batch")
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3)
    cm_rows = [r for r in rs if r["speedup"] is not None and not r["system"].startswith("diffusers eager")]
    labels = [f"{r['system']}\nb{r['batch']} s{r['steps']}" for r in cm_rows]
    ax2.bar(range(len(cm_rows)), [r["speedup"] for r in cm_rows], color="tab:green")
    ax2.axhline(1.0, color="k", lw=0.8)
    ax2.set_xticks(range(len(cm_rows)), labels, fontsize=6, rotation=45, ha="right")
    ax2.set_ylabel("speedup over diffusers eager")
    ax2.set_title(result["model"]["name"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True

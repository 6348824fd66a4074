"""The latency harness: `cmrt bench [--model M | --arch imagenet64|lsun256] [--batch 1 4] [--steps 1 2]`.

Every system gets the same model weights, batch sizes, steps and seeds in one process run;
calls are interleaved system by system so that machine noise hits all of them alike.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import gpu_report, machine, report

logger = logging.getLogger("cmrt.bench")
REPO = Path(__file__).resolve().parents[2]


def parse_args(argv=None) -> argparse.Namespace:
    from cmrt.engine.models import DEFAULT_MODEL

    p = argparse.ArgumentParser(prog="cmrt bench", description=__doc__)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model", default=None, help=f"model name, hub id or folder (default {DEFAULT_MODEL})")
    g.add_argument("--arch", choices=("imagenet64", "lsun256"), help="real architecture with random weights")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2])
    p.add_argument("--runs", type=int, default=None, help="timed calls per system and setting (default 20, 5 for --arch)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steady-runs", type=int, default=None,
                   help="back-to-back calls per system and setting for the steady-state outside-UNet share "
                        "(default: as many as --runs; 0 skips)")
    p.add_argument("--settle-ms", type=float, default=20.0,
                   help="untimed busy pause before each timed call, so the previous system's spinning worker "
                        "threads (torch's OpenMP, ONNX Runtime's pool) have stopped before the next one runs")
    p.add_argument("--no-compile", action="store_true", help="skip diffusers + torch.compile")
    p.add_argument("--no-cold-start", action="store_true", help="skip the new-process measurements")
    p.add_argument("--cold-runs", type=int, default=3,
                   help="new processes per system for the cold start, systems alternated; medians are reported")
    p.add_argument("--cold-start-only", action="store_true",
                   help="re-measure only the cold start and rewrite the report of an earlier run in --out")
    p.add_argument("--gpu-peak-tflops", type=float, default=None,
                   help="the GPU's dense fp16 peak for the report's fraction of peak (default: looked up by the GPU's "
                        "name in benchmarks/latency/gpu_report.py)")
    p.add_argument("--out", type=Path, default=None, help="folder for JSON, Markdown and PNG (default benchmarks/results/NAME)")
    p.add_argument("--engines", type=Path, default=Path("engines"))
    args = p.parse_args(argv)
    args.model = args.model or (None if args.arch else DEFAULT_MODEL)
    if args.runs is None:
        args.runs = 5 if args.arch else 20
    if args.steady_runs is None:  # on the real architectures the share is ~0 either way; skip the extra minutes
        args.steady_runs = 0 if args.arch else args.runs
    for name in ("batch", "steps"):
        if any(v < 1 for v in getattr(args, name)):
            p.error(f"--{name} values must be >= 1")
    if args.runs < 1 or args.cold_runs < 1 or args.warmup < 0 or args.steady_runs < 0 or args.settle_ms < 0:
        p.error("--runs and --cold-runs must be >= 1, and --warmup, --steady-runs and --settle-ms >= 0")
    if args.gpu_peak_tflops is not None and not args.gpu_peak_tflops > 0:
        p.error("--gpu-peak-tflops must be positive")
    return args


def model_folders(args) -> tuple[str, str, Path]:
    """(display name, slug, diffusers folder) of the model under test."""
    if args.arch:
        from cmrt.build.architectures import random_weight_folder
        from cmrt.engine.paths import cache_root

        folder = random_weight_folder(args.arch, cache_root() / "models" / f"arch-{args.arch}-random")
        return f"{args.arch} architecture (random weights)", f"arch-{args.arch}", folder
    from cmrt.build.checkpoints import model_folder
    from cmrt.engine.models import resolve_model

    source = resolve_model(args.model)
    folder, _ = model_folder(source)
    return args.model, source.slug, folder


def gpu_present() -> bool:
    from cmrt.runtime.backends.probe import probe_environment

    return probe_environment().has_gpu


def gpu_name() -> str | None:
    from cmrt.runtime.backends.probe import probe_environment

    gpu = probe_environment().gpu
    return gpu.name if gpu else None


def make_systems(folder: Path, engine: Path, args, notes: list[str]):
    from .systems import CmrtSystem, DiffusersSystem

    device = "cuda" if gpu_present() else "cpu"
    systems = [DiffusersSystem(str(folder), device=device)]
    if not args.no_compile:
        try:
            s = DiffusersSystem(str(folder), device=device, compile_unet=True)
            t0 = time.perf_counter()
            s(min(args.batch), min(args.steps), 0)  # compiles here, outside the timed runs
            notes.append(f"torch.compile worked; first (compiling) call took {time.perf_counter() - t0:.1f} s")
            systems.append(s)
        except Exception as e:  # report, do not hide: compile support varies by machine
            notes.append(f"diffusers + torch.compile did not work on this machine: {type(e).__name__}: {str(e)[:200]}")
    systems.append(CmrtSystem(str(engine), backend="onnxruntime", device="cpu", name="cmrt onnxruntime cpu"))
    wino = systems[-1].pipe.manifest.winograd
    if wino:
        notes.append(f"cmrt onnxruntime cpu runs the {'Winograd' if wino['used'] else 'plain'} fp32 graph: {wino['reason']} (at build)")
    chunk = getattr(systems[-1].pipe.backend, "batch_chunk", None)
    if chunk is not None:
        notes.append(f"cmrt onnxruntime cpu runs at most {chunk} image{'s' if chunk > 1 else ''} per ONNX Runtime call, "
                     "as the build measured (a larger batch runs as consecutive calls; docs/engine-folder.md#cpu-batching)")
    if wino and wino["used"]:  # show what the Winograd graph buys: the same backend on the plain graph
        systems.append(CmrtSystem(str(engine), backend="onnxruntime", device="cpu", winograd=False,
                                  name="cmrt onnxruntime cpu, plain graph"))
    try:  # each step's arithmetic in the step graph instead of numpy (what the default on the CPU is measured against)
        systems.append(CmrtSystem(str(engine), backend="onnxruntime", device="cpu", step_graph=True,
                                  name="cmrt onnxruntime cpu, step graph"))
    except ValueError as e:  # a folder built before step graphs
        notes.append(f"cmrt onnxruntime cpu, step graph unavailable: {e}")
    for precision in ("fp32", "bf16"):
        try:
            systems.append(CmrtSystem(str(engine), backend="openvino", device="cpu", precision=precision,
                                      name=f"cmrt openvino cpu {precision}"))
        except (ImportError, RuntimeError) as e:
            notes.append(f"cmrt openvino {precision} unavailable: {e}")
    if device == "cuda":
        for name, kw in gpu_variants():
            try:
                systems.append(CmrtSystem(str(engine), name=name, **kw))
            except Exception as e:
                notes.append(f"{name} unavailable: {type(e).__name__}: {e}")
    return systems


def gpu_variants():
    """cmrt GPU configurations: ONNX Runtime CUDA and TensorRT, each with and without CUDA graphs, through the
    step graph (the default: every step on the device, one synchronize per generation), and TensorRT with
    graphs driven step by step from the numpy loop (one synchronize per step), which shows what the step graph buys."""
    return [
        ("cmrt onnxruntime cuda", dict(backend="onnxruntime", device="cuda", use_cuda_graph=False)),
        ("cmrt onnxruntime cuda + graphs", dict(backend="onnxruntime", device="cuda", use_cuda_graph=True)),
        ("cmrt tensorrt fp16", dict(backend="tensorrt", device="cuda", use_cuda_graph=False)),
        ("cmrt tensorrt fp16 + graphs", dict(backend="tensorrt", device="cuda", use_cuda_graph=True)),
        ("cmrt tensorrt fp16 + graphs, numpy loop", dict(backend="tensorrt", device="cuda", use_cuda_graph=True,
                                                         step_graph=False)),
    ]


def cold_start(kind: str, folder: Path, batch: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t_launch = time.time()
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.latency.coldstart", kind, str(folder), str(batch), repr(t_launch)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=1800,
    )
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def settle(seconds: float) -> None:
    """Wait without sleeping: the other cores' spinning worker threads go idle, while this core
    stays awake and its caches stay as a busy server's would (after a sleep, the first
    microseconds of host code run measurably slower on this VM)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def timed_call(s, batch: int, steps: int, seed: int) -> tuple[float, float, float]:
    """(call, UNet, loop) seconds of one call."""
    before, loop_before = s.clock.seconds, s.clock.loop_seconds
    t0 = time.perf_counter()
    s(batch, steps, seed)
    dt = time.perf_counter() - t0
    return dt, s.clock.seconds - before, s.clock.loop_seconds - loop_before


def shares(samples: list[tuple[float, float, float]]) -> tuple[float | None, float | None]:
    """Median share outside the UNet per call and per step (within the loop)."""
    call = [1 - u / t for t, u, _ in samples]
    step = [1 - u / lp if lp > 0 else float("nan") for _, u, lp in samples]
    med = lambda v: float(np.median(v)) if v and np.isfinite(v).all() else None  # noqa: E731
    return med(call), med(step)


def measure(systems, args, bar) -> list[dict]:
    """Per setting: interleaved timed calls (the latency figures), then, per system, a block of
    back-to-back calls (what a server running one model sees: its own code and data stay in
    the caches between calls, so the outside-UNet share is the runtime's own)."""
    runs = []
    for batch in args.batch:
        for steps in args.steps:
            samples = {s.name: [] for s in systems}
            events = {s.name: [] for s in systems}  # CUDA-event timings of each timed call, where the backend has them
            for s in systems:
                for _ in range(args.warmup):
                    s(batch, steps, 0)
                    bar.update()
            for i in range(args.runs):
                for s in systems:  # interleaved: noise lands on every system alike
                    settle(args.settle_ms / 1e3)
                    s.take_event_timings()  # drop what earlier, untimed calls left
                    samples[s.name].append(timed_call(s, batch, steps, 1 + i))
                    events[s.name].append(s.take_event_timings() or [])
                    bar.update()
            for s in systems:
                steady = []
                for i in range(args.steady_runs):
                    steady.append(timed_call(s, batch, steps, 1 + i))
                    bar.update()
                lat = [x[0] for x in samples[s.name]]
                per_call, per_step = shares(samples[s.name])
                steady_call, steady_step = shares(steady)
                runs.append({
                    "system": s.name, "kind": s.kind, "batch": batch, "steps": steps,
                    "latency": report.summarize(lat), "samples_s": lat,
                    "unet_s": [x[1] for x in samples[s.name]], "loop_s": [x[2] for x in samples[s.name]],
                    "event_ms": events[s.name],
                    "outside_unet_share": per_call,
                    "outside_unet_share_per_step": per_step,
                    "back_to_back": {
                        "n": len(steady),
                        "samples_s": [x[0] for x in steady], "unet_s": [x[1] for x in steady],
                        "loop_s": [x[2] for x in steady],
                        "outside_unet_share": steady_call,
                        "outside_unet_share_per_step": steady_step,
                    },
                })
    return runs


COLD_SYSTEMS = (
    ("cmrt", "cmrt onnxruntime cpu"),
    ("cmrt-plain", "cmrt onnxruntime cpu, plain graph"),
    ("diffusers", "diffusers eager fp32"),
    ("triton", "cmrt Triton model (initialize)"),
)


def median_fields(samples: list[dict]) -> dict:
    """The median of every number (and of every part in `parts_s`) over a system's cold starts."""
    ok = [c for c in samples if "error" not in c]
    if not ok:
        return {"error": samples[-1]["error"], "runs": samples}
    med = {k: float(np.median([c[k] for c in ok])) for k, v in ok[0].items() if isinstance(v, (int, float))}
    if "parts_s" in ok[0]:
        med["parts_s"] = {k: float(np.median([c["parts_s"].get(k, np.nan) for c in ok])) for k in ok[0]["parts_s"]}
    for k, v in ok[0].items():
        if isinstance(v, str):
            med[k] = v
    med["n"] = len(ok)
    med["runs"] = samples
    return med


def measure_cold_start(engine: Path, folder: Path, batch: int, runs: int = 3) -> tuple[dict, float | None]:
    """`runs` new processes per system, alternated system by system; medians.

    One untimed load of each cmrt graph comes first: the first load after a build writes ONNX
    Runtime's optimized-graph cache (the default graph's time is kept as `first_load_after_build`);
    every later process opens from it, as every later replica does."""
    first = cold_start("cmrt", engine, batch)
    cold_start("cmrt-plain", engine, batch)
    samples: dict[str, list[dict]] = {label: [] for _, label in COLD_SYSTEMS}
    for _ in range(runs):
        for kind, label in COLD_SYSTEMS:
            samples[label].append(cold_start(kind, folder if kind == "diffusers" else engine, batch))
    cold = {label: median_fields(v) for label, v in samples.items()}
    cold["first_load_after_build"] = first
    return cold, import_load_ratio(cold)


def import_load_ratio(cold: dict) -> float | None:
    c, d = cold.get("cmrt onnxruntime cpu", {}), cold.get("diffusers eager fp32", {})
    if "import_s" not in c or "import_s" not in d:
        return None
    return (d["import_s"] + d["load_s"]) / (c["import_s"] + c["load_s"])


def write_outputs(result: dict, out: Path) -> None:
    from cmrt.engine.atomic import write_bytes_atomic, write_json_atomic

    write_json_atomic(out / "results.json", result)
    has_plot = report.plot(result, out / "latency.png")
    write_bytes_atomic(out / "report.md", report.markdown(result, "latency.png" if has_plot else None).encode())
    print(report.table(result))
    print(f"wrote {out / 'results.json'}, {out / 'report.md'}" + (f", {out / 'latency.png'}" if has_plot else ""))


def redo_cold_start(args, slug: str, folder: Path) -> int:
    out = args.out or REPO / "benchmarks" / "results" / slug
    path = out / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"--cold-start-only needs an earlier run's {path}")
    result = json.loads(path.read_text())
    result["cold_start"], result["import_load_speedup"] = measure_cold_start(
        Path(result["model"]["engine"]), folder, max(result["settings"]["batch"]), args.cold_runs)
    result["cold_start_command"] = "cmrt bench " + " ".join(sys.argv[1:])
    write_outputs(result, out)
    return 0


def main(argv=None) -> int:
    from tqdm.auto import tqdm

    from cmrt.build.folder import build_engine_folder
    from cmrt.engine.options import BuildOptions
    from cmrt.engine.manifest import read_manifest

    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    name, slug, folder = model_folders(args)
    if args.cold_start_only:
        return redo_cold_start(args, slug, folder)
    precisions = ("fp32", "fp16") if gpu_present() else ("fp32",)
    engine = build_engine_folder(str(folder), out=args.engines / slug,
                                 options=BuildOptions(precisions=precisions, max_batch=max(16, max(args.batch))))
    manifest = read_manifest(engine)
    out = args.out or REPO / "benchmarks" / "results" / slug
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []

    from .flops import unet_flops

    flops1 = unet_flops(str(folder), batch=1)
    desc = machine.describe()
    gemm = machine.gemm_rate()
    systems = make_systems(folder, engine, args, notes)

    # same output: every system against diffusers eager, same seed
    ref = systems[0](1, max(args.steps), 0)
    diffs = {s.name: float(np.abs(s(1, max(args.steps), 0, same_noise_as_diffusers=True) - ref).max())
             for s in systems[1:]}
    cmrt_diffs = [v for k, v in diffs.items() if k.startswith("cmrt") and "bf16" not in k and "fp16" not in k]

    total = len(args.batch) * len(args.steps) * len(systems) * (args.warmup + args.runs + args.steady_runs)
    with tqdm(total=total, desc=f"bench {slug}", unit="call") as bar:
        runs = measure(systems, args, bar)
    for r in runs:
        med = r["latency"]["median_s"]
        r["images_per_s"] = r["batch"] / med
        r["achieved_flops_per_s"] = flops1 * r["batch"] * r["steps"] / med
        r["fraction_of_gemm_peak"] = r["achieved_flops_per_s"] / gemm["flops_per_s"]
    peak = gpu_report.resolve_peak(args.gpu_peak_tflops, gpu_name())
    gpu_report.attach_gpu_reports(runs, flops1, peak)

    cold, ratio = ({}, None) if args.no_cold_start else measure_cold_start(engine, folder, max(args.batch), args.cold_runs)

    result = {
        "command": "cmrt bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "created_unix": int(time.time()),
        "model": {"name": name, "folder": str(folder), "engine": str(engine),
                  "parameters": manifest.data["unet"]["parameters"], "unet_gflops_batch1": flops1 / 1e9},
        "settings": {"batch": args.batch, "steps": args.steps, "runs": args.runs, "warmup": args.warmup, "settle_ms": args.settle_ms,
                     "steady_runs": args.steady_runs},
        "machine": desc, "gemm": gemm, "runs": runs, "cold_start": cold, "import_load_speedup": ratio,
        "same_output_max_abs_diff": max(cmrt_diffs) if cmrt_diffs else float("nan"),
        "same_output_per_system": diffs, "notes": notes, "gpu_peak": peak,
    }
    write_outputs(result, out)
    if ratio:
        print(f"import + load: cmrt {ratio:.1f}x faster than diffusers")
    for n in notes:
        print("note:", n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

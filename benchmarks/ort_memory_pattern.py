"""Peak memory and latency call by call, with ONNX Runtime's memory pattern on and off: why cmrt
opens its CPU sessions without it.

Run: .venv/bin/python -m benchmarks.ort_memory_pattern ENGINE_DIR [--batches 1 1 4 4 4]

Each setting runs in its own new process (a peak, VmHWM, only grows): `cmrt.load(ENGINE_DIR,
device="cpu", batch_chunk=None)` (every batch in one call, so that each call is one shape's run)
with the session option as cmrt sets it (off) or turned on, then one generation
per batch size in --batches, printing the process's peak RSS after each and the call's time.
With the pattern on, a shape's second call plans one block for its activations while the arena
still holds the first call's, and the peak grows by a second set of activations.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child(engine: str, pattern: bool, batches: list[int]) -> None:
    """One setting, in this (new) process: a JSON line of (batch, peak MiB, ms) per call."""
    from cmrt.runtime.backends import onnxruntime_backend

    opened = onnxruntime_backend.OnnxRuntimeBackend._options

    def options(self, ort, optimize):
        so = opened(self, ort, optimize)
        so.enable_mem_pattern = pattern
        return so

    onnxruntime_backend.OnnxRuntimeBackend._options = options
    import cmrt

    pipe = cmrt.load(engine, device="cpu", batch_chunk=None)
    rows = [("load", round(peak_rss_mib()), None)]
    for b in batches:
        labels = None if pipe.num_classes is None else [i % pipe.num_classes for i in range(b)]
        t0 = time.perf_counter()
        pipe(batch_size=b, class_labels=labels, seed=0, output_type="np")
        rows.append((b, round(peak_rss_mib()), round((time.perf_counter() - t0) * 1e3)))
    print(json.dumps(rows))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("engine", type=Path)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 1, 4, 4, 4])
    p.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.batches) < 1:
        p.error("--batches must be positive")
    if args.child:
        child(str(args.engine), args.child == "on", args.batches)
        return 0
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print("memory pattern  " + "  ".join(f"{'load' if i == 0 else f'batch {b}'}: peak MiB (ms)" for i, b in enumerate([0] + args.batches)))
    for setting in ("off", "on"):
        r = subprocess.run([sys.executable, "-m", "benchmarks.ort_memory_pattern", str(args.engine), "--child", setting,
                            "--batches", *map(str, args.batches)], capture_output=True, text=True, env=env, cwd=REPO)
        if r.returncode:
            print(f"{setting}: failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
            return 1
        rows = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"{setting + (' (cmrt)' if setting == 'off' else ''):14s}  " + "  ".join(
            f"{mib}" + ("" if ms is None else f" ({ms})") for _, mib, ms in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

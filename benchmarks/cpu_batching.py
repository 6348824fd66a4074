"""A batch as one ONNX Runtime CPU call, or as calls of at most `batch_chunk` images: peak memory and
latency of each (cmrt/build/cpu_batching.py says why the build measures the choice).

Run: .venv/bin/python -m benchmarks.cpu_batching ENGINE_DIR [--batch 4] [--chunk 1] [--runs 5]

1. Peak RSS: each setting in its own new process (a peak, VmHWM, only grows): `cmrt.load(ENGINE_DIR,
   device="cpu", batch_chunk=...)`, then a 1-step generation at batch 1, then two at --batch,
   printing the process's peak after each and the call's time.
2. Latency: one process, one pipeline per setting, 1-step generations at --batch alternated call by
   call (--runs each, medians), and the largest difference between their images.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.latency.coldstart import peak_rss_bytes

REPO = Path(__file__).resolve().parents[1]


def _labels(pipe, b: int):
    return None if pipe.num_classes is None else [i % pipe.num_classes for i in range(b)]


def child(engine: str, chunk: int | None, batch: int) -> None:
    """Peak memory of one setting, in this (new) process: a JSON list of (batch, peak MiB, ms)."""
    import cmrt

    pipe = cmrt.load(engine, device="cpu", batch_chunk=chunk)
    rows = [("load", round(peak_rss_bytes() / 2**20), None)]
    for b in (1, batch, batch):
        t0 = time.perf_counter()
        pipe(batch_size=b, class_labels=_labels(pipe, b), seed=0, output_type="np")
        rows.append((b, round(peak_rss_bytes() / 2**20), round((time.perf_counter() - t0) * 1e3)))
    print(json.dumps(rows))


def alternated(engine: str, chunk: int, batch: int, runs: int) -> None:
    import cmrt

    pipes = {None: cmrt.load(engine, device="cpu", batch_chunk=None), chunk: cmrt.load(engine, device="cpu", batch_chunk=chunk)}
    times: dict = {k: [] for k in pipes}
    images: dict = {}
    for i in range(runs + 1):  # the first round warms both up at this batch
        for k, pipe in pipes.items():
            t0 = time.perf_counter()
            images[k] = pipe(batch_size=batch, class_labels=_labels(pipe, batch), seed=0, output_type="np").images
            if i:
                times[k].append(time.perf_counter() - t0)
    whole, split = (statistics.median(times[k]) * 1e3 for k in (None, chunk))
    print(f"batch {batch}, 1 step, medians of {runs} alternated: one call {whole:.0f} ms, calls of {chunk} {split:.0f} ms "
          f"({whole / split:.3f}x the speed of one call); images max abs diff {abs(images[None] - images[chunk]).max():.1e}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("engine", type=Path)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--chunk", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.batch < 2 or not 1 <= args.chunk < args.batch or args.runs < 1:
        p.error("need --batch >= 2, 1 <= --chunk < --batch and --runs >= 1")
    if args.child:
        child(str(args.engine), None if args.child == "none" else int(args.child), args.batch)
        return 0
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print(f"batch_chunk    load, then batch 1, {args.batch}, {args.batch}: peak RSS MiB (ms)")
    for setting in ("none", str(args.chunk)):
        r = subprocess.run([sys.executable, "-m", "benchmarks.cpu_batching", str(args.engine), "--child", setting,
                            "--batch", str(args.batch), "--chunk", str(args.chunk)], capture_output=True, text=True, env=env, cwd=REPO)
        if r.returncode:
            print(f"{setting}: failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
            return 1
        rows = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"{setting:13s}  " + "  ".join(f"{mib}" + ("" if ms is None else f" ({ms})") for _, mib, ms in rows))
    alternated(str(args.engine), args.chunk, args.batch, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

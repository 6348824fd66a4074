"""Serving benchmark: images/s and p50/p99 latency through `cmrt serve` vs in-process calls.

    .venv/bin/python benchmarks/serve_bench.py [--engine DIR] [--requests 64] [--concurrency 1 4 8]

Each request is one image (batch 1, its own seed; class label `seed % classes`). In process,
`concurrency` threads call one `Pipeline` (`pipe(seed=s, ...)`, no batching); the
"in-process, batched" rows make one call for `concurrency` images, the best a caller can
do by batching by hand. Through the server, `concurrency` clients each send one request at
a time over HTTP (cmrt.serve.client, binary tensors) and Triton's dynamic batcher merges them.
The server runs in a private loopback-only network namespace (`unshare -rn`) where the
machine allows it, else on 127.0.0.1; one tritonserver at a time (a lock file).
Writes `OUT.json` and `OUT.md` (default benchmarks/results/serve_bench).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cmrt.serve.local import free_ports, server_lock  # noqa: E402


def summarize(mode: str, concurrency: int, latencies: list[float], wall: float, images: int) -> dict:
    lat = np.asarray(latencies) * 1000
    return {
        "mode": mode,
        "concurrency": concurrency,
        "images": images,
        "images_per_s": images / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "wall_s": wall,
    }


def closed_loop(call, concurrency: int, n: int) -> tuple[list[float], float]:
    """`n` calls from `concurrency` workers, each starting its next call when the last returns."""
    latencies: list[float] = []
    counter = iter(range(n))

    def worker():
        out = []
        for i in counter:  # shared iterator: next() is atomic under the GIL
            t = time.perf_counter()
            call(i)
            out.append(time.perf_counter() - t)
        return out

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as ex:
        for f in [ex.submit(worker) for _ in range(concurrency)]:
            latencies += f.result(timeout=600)
    return latencies, time.perf_counter() - t0


def run(args) -> dict:
    import cmrt
    from cmrt.serve.client import Client, model_metric, read_metrics
    from cmrt.runtime.loading import find_engine_folder
    from cmrt.serve.handler import ServeSettings
    from cmrt.serve.server import ServeOptions, TritonServer

    engine = find_engine_folder(args.engine)
    pipe = cmrt.load(engine, device="cpu", threads=args.threads)
    classes = pipe.num_classes
    label = (lambda i: None) if classes is None else (lambda i: [i % classes])
    rows = []

    def inproc(i):
        pipe(seed=10_000 + i, class_labels=label(i), num_inference_steps=args.steps, output_type="np")

    for _ in range(3):
        inproc(0)
    for c in args.concurrency:
        lat, wall = closed_loop(inproc, c, args.requests)
        rows.append(summarize("in-process", c, lat, wall, args.requests))
        if c > 1:
            n_calls = max(1, args.requests // c)

            def batched(i, c=c):
                seeds = [10_000 + i * c + j for j in range(c)]
                labels = None if classes is None else [s % classes for s in seeds]
                pipe(batch_size=c, seed=seeds, class_labels=labels, num_inference_steps=args.steps, output_type="np")

            lat, wall = closed_loop(batched, 1, n_calls)
            rows.append(summarize("in-process, batched", c, lat, wall, n_calls * c))

    http, grpc, metrics = free_ports(3)
    opts = ServeOptions(
        http_port=http, grpc_port=grpc, metrics_port=metrics, max_queue_delay_us=args.max_queue_delay_us,
        instances=args.instances, threads=args.server_threads or args.threads, device="cpu", settings=ServeSettings(steps=args.steps),
    )
    server_info = {}
    with server_lock(timeout=300.0), TritonServer(engine, opts) as server:
        client = Client(server.url)

        def served(i):
            client.generate([10_000 + i], class_labels=label(i))

        for _ in range(3):
            served(0)
        for c in args.concurrency:
            before = read_metrics(server.metrics_url)
            lat, wall = closed_loop(served, c, args.requests)
            after = read_metrics(server.metrics_url)
            row = summarize("cmrt serve (HTTP)", c, lat, wall, args.requests)
            d = {k: model_metric(after, k) - model_metric(before, k) for k in ("nv_inference_count", "nv_inference_exec_count")}
            row["mean_batch"] = d["nv_inference_count"] / max(1.0, d["nv_inference_exec_count"])
            rows.append(row)
        server_info = {
            "max_batch": server.options.max_batch or pipe.max_batch, "max_queue_delay_us": args.max_queue_delay_us,
            "instances": args.instances, "threads_per_instance": args.server_threads or args.threads,
        }

    from importlib.metadata import version

    import onnxruntime

    return {
        "engine": str(engine),
        "model": pipe.manifest.source.get("model"),
        "sample_size": pipe.sample_size,
        "steps": args.steps,
        "requests_per_point": args.requests,
        "server": server_info,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
        "versions": {
            "onnxruntime": onnxruntime.__version__,
            "nvidia-pytriton": version("nvidia-pytriton"),
            "python": platform.python_version(),
        },
        "network": os.environ.get("CMRT_BENCH_NETNS", "host loopback"),
        "rows": rows,
    }


def markdown(result: dict) -> str:
    lines = [
        f"Serving benchmark: {result['model']} ({result['sample_size']}x{result['sample_size']}), {result['steps']} step(s), "
        f"{result['requests_per_point']} one-image requests per point, ORT CPU, {result['machine']['cpus']} CPUs; "
        f"server max batch {result['server'].get('max_batch')}, queue delay {result['server'].get('max_queue_delay_us')} us, "
        f"{result['server'].get('instances')} instance(s) x {result['server'].get('threads_per_instance') or 'all'} ORT threads; "
        f"network: {result['network']}.",
        "",
        "| mode | concurrency | images/s | p50 ms | p99 ms | mean batch |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        mb = f"{r['mean_batch']:.1f}" if "mean_batch" in r else ("%d" % r["concurrency"] if "batched" in r["mode"] else "1")
        lines.append(f"| {r['mode']} | {r['concurrency']} | {r['images_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {mb} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="tiny-random", help="engine folder or model name (default: the built-in tiny-random)")
    ap.add_argument("--requests", type=int, default=64, help="requests per (mode, concurrency) point")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: one per core)")
    ap.add_argument("--max-queue-delay-us", type=int, default=2000)
    ap.add_argument("--instances", type=int, default=1, help="server model instances")
    ap.add_argument("--server-threads", type=int, help="ONNX Runtime threads per server instance (default: --threads)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_bench")
    ap.add_argument("--no-netns", action="store_true", help="run on the host's loopback, not in a private namespace")
    args = ap.parse_args(argv)
    if not args.no_netns and "CMRT_BENCH_NETNS" not in os.environ and shutil.which("unshare") and shutil.which("ip"):
        probe = subprocess.run(["unshare", "-rn", "sh", "-c", "ip link set lo up"], capture_output=True)
        if probe.returncode == 0:  # re-run this script inside a private loopback-only namespace
            env = dict(os.environ, CMRT_BENCH_NETNS="private network namespace (unshare -rn)")
            cmd = ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable, *sys.argv]
            return subprocess.run(cmd, env=env).returncode
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    args.out.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

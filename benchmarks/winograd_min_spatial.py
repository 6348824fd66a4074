"""What the Winograd CPU graph's smallest rewritten map size (`min_spatial`) trades: filter memory
against speed, on a built fp32 folder.

Run: .venv/bin/python -m benchmarks.winograd_min_spatial ENGINE_DIR [--sizes 16 32 64] [--runs 7]

For each size, the folder's fp32 export is rewritten with `rewrite_winograd(min_spatial=size)` and
its filters stored as a build stores them (in a scratch copy of the folder's graph and weights).
Every graph then runs at batch 1 and 4 in one process, the graphs alternated call by call after
one untimed call each; medians. The build uses min_spatial 16 (`cmrt.build.winograd.DEFAULT_MIN_SPATIAL`):
smaller maps have too few tiles to pay. Why this matters: the filters are 4x the 3x3 weights they
replace and stay resident while the graph runs, so they set the CPU path's memory.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def winograd_graph(folder: Path, fp32: dict, size: int, scratch: Path):
    """`folder`'s fp32 graph rewritten as the build does (`cpu_graph.winograd_rewrite`) at
    `min_spatial=size`, in `scratch`; (backend, filter bytes, rewritten Convs)."""
    from cmrt.build.cpu_graph import winograd_rewrite
    from cmrt.engine.winograd import mapped_filters, write_filters
    from cmrt.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    scratch.mkdir(parents=True)
    for name in (fp32["file"], fp32["external_data"]):
        shutil.copyfile(folder / name, scratch / name)  # a copy: onnx refuses hard-linked external data
    model, report, locations = winograd_rewrite(scratch, fp32, min_spatial=size)
    record = {"filters": locations, "weights_file": fp32["external_data"]}
    (scratch / "winograd.onnx").write_bytes(model.SerializeToString())
    filter_bytes = write_filters(scratch, record, "winograd.filters")
    backend = OnnxRuntimeBackend(scratch / "winograd.onnx", extra_inputs=mapped_filters(scratch, record))
    return backend, filter_bytes, len(report.rewritten)


def main(argv=None) -> int:
    from cmrt.engine.io_spec import CLASS_LABELS, SAMPLE, TIMESTEP, sample_inputs
    from cmrt.engine.manifest import read_manifest

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("engine", type=Path)
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--runs", type=int, default=7)
    args = p.parse_args(argv)
    manifest = read_manifest(args.engine)
    fp32 = manifest.onnx_entry("fp32")
    with tempfile.TemporaryDirectory(prefix="cmrt-min-spatial-") as tmp:
        graphs = {size: winograd_graph(args.engine, fp32, size, Path(tmp) / str(size)) for size in args.sizes}
        print("min_spatial  rewritten Convs  filters MiB  " + "  ".join(f"batch {b} ms (vs {args.sizes[0]})" for b in (1, 4)))
        medians = {}
        for batch in (1, 4):
            inputs = sample_inputs(manifest.unet, manifest.scheduler_config, batch, seed=0)
            feeds = (inputs[SAMPLE], inputs[TIMESTEP], inputs.get(CLASS_LABELS))
            times = {size: [] for size in graphs}
            for backend, _, _ in graphs.values():
                backend.run(*feeds)
            for _ in range(args.runs):
                for size, (backend, _, _) in graphs.items():
                    t0 = time.perf_counter()
                    backend.run(*feeds)
                    times[size].append((time.perf_counter() - t0) * 1e3)
            medians[batch] = {size: float(np.median(t)) for size, t in times.items()}
        base = args.sizes[0]
        for size, (_, filter_bytes, rewritten) in graphs.items():
            cols = "  ".join(f"{medians[b][size]:9.1f} ({medians[b][size] / medians[b][base]:.3f}x)" for b in (1, 4))
            print(f"{size:11d}  {rewritten:15d}  {filter_bytes / 2**20:11.0f}  {cols}")
        del graphs
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

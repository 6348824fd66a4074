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
    """Rewrite `folder`'s fp32 graph at `min_spatial=size` into `scratch`; (backend, filter bytes, rewritten Convs)."""
    import onnx

    from cmrt.build.cpu_graph import filter_location
    from cmrt.build.winograd import conv_input_shapes, rewrite_winograd
    from cmrt.engine.winograd import mapped_filters, write_filters
    from cmrt.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    scratch.mkdir(parents=True)
    for name in (fp32["file"], fp32["external_data"]):
        shutil.copyfile(folder / name, scratch / name)  # a copy: onnx refuses hard-linked external data
    plain = scratch / fp32["file"]
    shapes = conv_input_shapes(onnx.load(str(plain)))
    model = onnx.load(str(plain), load_external_data=False)
    weights = {t.name: t for t in model.graph.initializer}
    report = rewrite_winograd(model, min_spatial=size, input_shapes=shapes, filters="input")
    record = {"filters": [filter_location(weights[f["weight"]], f, fp32["external_data"]) for f in report.runtime_filters],
              "weights_file": fp32["external_data"]}
    (scratch / "winograd.onnx").write_bytes(model.SerializeToString())
    filter_bytes = write_filters(scratch, record, "winograd.filters")
    backend = OnnxRuntimeBackend(scratch / "winograd.onnx", extra_inputs=mapped_filters(scratch, record))
    return backend, filter_bytes, len(report.rewritten)


def main(argv=None) -> int:
    from cmrt.engine.manifest import read_manifest

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("engine", type=Path)
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--runs", type=int, default=7)
    args = p.parse_args(argv)
    manifest = read_manifest(args.engine)
    fp32 = manifest.onnx_entry("fp32")
    s, c = manifest.sample_size, manifest.in_channels
    with tempfile.TemporaryDirectory(prefix="cmrt-min-spatial-") as tmp:
        graphs = {size: winograd_graph(args.engine, fp32, size, Path(tmp) / str(size)) for size in args.sizes}
        print("min_spatial  rewritten Convs  filters MiB  " + "  ".join(f"batch {b} ms (vs {args.sizes[0]})" for b in (1, 4)))
        medians = {}
        for batch in (1, 4):
            rng = np.random.default_rng(0)
            feeds = (rng.standard_normal((batch, c, s, s)).astype(np.float32), np.full(batch, 10.0, np.float32),
                     np.arange(batch, dtype=np.int64) if manifest.num_class_embeds else None)
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

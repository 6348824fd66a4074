"""What the Winograd CPU graph's map-size thresholds trade: filter memory against speed, on a
built fp32 folder.

Run: .venv/bin/python -m benchmarks.winograd_min_spatial ENGINE_DIR [--variants 16/16 16/32 32/32] [--runs 7]

A variant MIN/F4 rewrites maps of at least MIN x MIN, those of at least F4 x F4 with F(4x4)
tiles and the smaller ones with F(2x2) (`rewrite_winograd(min_spatial=MIN, f4_min_spatial=F4)`);
16/16 is F(4x4) throughout. For each, the folder's fp32 export is rewritten and its filters
stored as a build stores them (in a scratch copy of the folder's graph and weights). Every
graph then runs at batch 1 and 4 in one process, the graphs alternated call by call after one
untimed call each; medians, and each variant's ratio to the first: the folder's own Winograd
graph ("folder", as `cmrt build` made it) where it has one. The build's thresholds are
`cmrt.build.winograd.DEFAULT_MIN_SPATIAL` / `DEFAULT_F4_MIN_SPATIAL`. Why this matters: the
filters (36 values per 3x3 filter of 9 for F(4x4), 16 for F(2x2)) stay resident while the
graph runs, so they set the CPU path's memory.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path


def variant(text: str) -> tuple[int, int]:
    """'MIN/F4' (or 'MIN', meaning MIN/MIN) as (min_spatial, f4_min_spatial)."""
    parts = text.split("/")
    try:
        sizes = tuple(int(x) for x in parts)
    except ValueError:
        sizes = ()
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"a variant is MIN/F4 or MIN, two positive map sizes such as 16/32; got {text!r}")
    return (sizes[0], sizes[-1])


def winograd_graph(folder: Path, fp32: dict, sizes: tuple[int, int], scratch: Path):
    """`folder`'s fp32 graph rewritten as the build does (`cpu_graph.winograd_rewrite`) with
    (min_spatial, f4_min_spatial) = `sizes`, in `scratch`; (backend, filter bytes, Convs rewritten per tile)."""
    from cmrt.build.cpu_graph import winograd_rewrite
    from cmrt.engine.winograd_filters import mapped_filters, write_filters
    from cmrt.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    scratch.mkdir(parents=True)
    for name in (fp32["file"], fp32["external_data"]):
        shutil.copyfile(folder / name, scratch / name)  # a copy: onnx refuses hard-linked external data
    model, report, locations = winograd_rewrite(scratch, fp32, min_spatial=sizes[0], f4_min_spatial=sizes[1])
    record = {"filters": locations, "weights_file": fp32["external_data"]}
    (scratch / "winograd.onnx").write_bytes(model.SerializeToString())
    filter_bytes = write_filters(scratch, record, "winograd.filters")
    backend = OnnxRuntimeBackend(scratch / "winograd.onnx", extra_inputs=mapped_filters(scratch, record))
    return backend, filter_bytes, tile_counts([f["tile"] for f in locations])


def tile_counts(tiles: list[int]) -> str:
    """Convs rewritten with F(4x4) and with F(2x2) tiles, as '4x4:N 2x2:M'."""
    return f"4x4:{tiles.count(4)} 2x2:{tiles.count(2)}"


def main(argv=None) -> int:
    from cmrt.engine.manifest import read_manifest
    from cmrt.engine.winograd import tile_of

    from .graph_timing import alternated_medians, folder_winograd_backend

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("engine", type=Path)
    p.add_argument("--variants", type=variant, nargs="+", default=[(16, 16), (16, 32), (32, 32), (64, 64)],
                   help="MIN/F4 pairs: smallest map rewritten / smallest with F(4x4) tiles")
    p.add_argument("--runs", type=int, default=7)
    args = p.parse_args(argv)
    manifest = read_manifest(args.engine)
    fp32 = manifest.onnx_entry("fp32")
    with tempfile.TemporaryDirectory(prefix="cmrt-min-spatial-") as tmp:
        graphs = {}
        built = manifest.winograd
        if built and built.get("used") and built.get("filters_file"):
            graphs["folder"] = (
                folder_winograd_backend(args.engine, built),
                (args.engine / built["filters_file"]).stat().st_size,
                tile_counts([tile_of(f).m for f in built["filters"]]),
            )
        for a, b in args.variants:
            graphs[f"{a}/{b}"] = winograd_graph(args.engine, fp32, (a, b), Path(tmp) / f"{a}-{b}")
        base = next(iter(graphs))
        print("variant  Convs per tile    filters MiB  " + "  ".join(f"batch {b} ms (vs {base})" for b in (1, 4)))
        medians, _ = alternated_medians({name: g[0] for name, g in graphs.items()}, manifest, args.runs)
        for name, (_, filter_bytes, rewritten) in graphs.items():
            cols = "  ".join(f"{medians[b][name]:9.1f} ({medians[b][name] / medians[b][base]:.3f}x)" for b in (1, 4))
            print(f"{name:>7s}  {rewritten:16s}  {filter_bytes / 2**20:11.1f}  {cols}")
        del graphs
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The folder's Winograd CPU graph against the one an earlier cmrt commit builds from the same
export: speed, filter memory and output, alternated call by call in one process.

Run: .venv/bin/python -m benchmarks.winograd_against_commit COMMIT ENGINE_DIR [--runs 9] [--batch 1 4] [--as-loaded]

Why: a change to the rewrite must keep the CPU graph's warm latency; timing the two graphs in
one process, in turn, cancels the drift between separate runs on a shared machine. The earlier
graph is made by the earlier code itself: COMMIT is checked out in a temporary git worktree and
its `cmrt.build.cpu_graph.winograd_rewrite` run in a subprocess on a scratch copy of the
folder's fp32 export, its filters stored as that commit's build stores them (commits from before
cmrt/build: the rewrite of cmrt/export, its filters computed as that commit's load did).
The folder's graph runs as `cmrt.load` runs it, including filters transformed per call; with
`--as-loaded` also at its build's batch per call, which is how a warm latency compares with an
earlier commit's that ran every batch in one call.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# Run with the earlier commit first on sys.path: rewrite the scratch export, store its filters.
# Commits from before the build/runtime split (cmrt/build) rewrote through cmrt.export.winograd and
# computed the filters from the weight file at load: they are computed once here, as that load did,
# and stored as one .npy file each, which the timing process maps.
MAKE_GRAPH = """
import json, shutil, sys
from pathlib import Path
src, out, fp32 = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])  # the folder's fp32 export
for name in (fp32["file"], fp32["external_data"]):
    shutil.copyfile(src / name, out / name)
try:
    import cmrt.engine.cpu_graph  # the layout before cmrt/build
except ImportError:
    from cmrt.build.cpu_graph import winograd_rewrite
    try:
        from cmrt.engine.winograd_filters import write_filters
    except ImportError:  # commits before the filters' own module
        from cmrt.engine.winograd import write_filters
    model, report, locations = winograd_rewrite(out, fp32)
    record = {"filters": locations, "weights_file": fp32["external_data"], "filters_file": "winograd.filters"}
    (out / "winograd.onnx").write_bytes(model.SerializeToString())
    write_filters(out, record, "winograd.filters")
else:
    import numpy as np
    import onnx
    from cmrt.engine.cpu_graph import filter_location
    from cmrt.export.winograd import conv_input_shapes, rewrite_winograd
    from cmrt.winograd_transforms import filters_from_weight_file
    plain = out / fp32["file"]
    shapes = conv_input_shapes(onnx.load(str(plain)))
    model = onnx.load(str(plain), load_external_data=False)
    weights = {t.name: t for t in model.graph.initializer}
    report = rewrite_winograd(model, input_shapes=shapes, filters="input")
    old = {"weights_file": fp32["external_data"],
           "filters": [filter_location(weights[f["weight"]], f, fp32["external_data"]) for f in report.runtime_filters]}
    (out / "winograd.onnx").write_bytes(model.SerializeToString())
    record = {"npy": {}}
    for i, (name, u) in enumerate(filters_from_weight_file(out, old).items()):
        np.save(out / f"filter{i}.npy", u)
        record["npy"][name] = f"filter{i}.npy"
(out / "record.json").write_text(json.dumps(record))
"""


def earlier_filters(graph_dir: Path, record: dict) -> dict:
    """The earlier graph's filter inputs, mapped from the files MAKE_GRAPH stored."""
    if "npy" in record:
        return {name: np.load(graph_dir / file, mmap_mode="r") for name, file in record["npy"].items()}
    from cmrt.engine.winograd_filters import mapped_filters

    return mapped_filters(graph_dir, record)


def filters_mib(graph_dir: Path, record: dict) -> float:
    files = record["npy"].values() if "npy" in record else [record["filters_file"]]
    return sum((graph_dir / f).stat().st_size for f in files) / 2**20


def earlier_graph(commit: str, engine: Path, scratch: Path) -> dict:
    """Build COMMIT's Winograd graph of `engine`'s export in `scratch`; its filter record."""
    from cmrt.engine.manifest import read_manifest

    tree = scratch / "tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), commit], check=True,
                   capture_output=True, text=True)
    try:
        out = scratch / "graph"
        out.mkdir()
        fp32 = read_manifest(engine).onnx_entry("fp32")  # read here: an earlier cmrt may not read this manifest
        subprocess.run([sys.executable, "-c", MAKE_GRAPH, str(engine.resolve()), str(out), json.dumps(fp32)], check=True,
                       env=dict(os.environ, PYTHONPATH=str(tree)), cwd=tree)
        return json.loads((out / "record.json").read_text())
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)


def main(argv=None) -> int:
    from cmrt.engine.manifest import read_manifest
    from cmrt.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    from .graph_timing import alternated_medians, folder_winograd_backend

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("commit")
    p.add_argument("engine", type=Path)
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--as-loaded", action="store_true",
                   help="run the folder's graph at the batch per call its build measured, as cmrt.load does (the "
                        "earlier graph always takes a batch in one call, as cmrt did before its builds measured one)")
    args = p.parse_args(argv)
    if args.runs < 1 or min(args.batch) < 1:
        p.error("--runs and --batch must be >= 1")
    manifest = read_manifest(args.engine)
    rec = manifest.winograd
    if not (rec and rec.get("used") and rec.get("filters_file")):
        p.error(f"{args.engine} has no Winograd CPU graph with stored filters to compare; build it with `cmrt build --winograd always`")
    with tempfile.TemporaryDirectory(prefix="cmrt-against-") as tmp:
        old_rec = earlier_graph(args.commit, args.engine, Path(tmp))
        old_dir = Path(tmp) / "graph"
        old, new = args.commit[:12], "folder"
        backends = {
            old: OnnxRuntimeBackend(old_dir / "winograd.onnx", extra_inputs=earlier_filters(old_dir, old_rec)),
            new: folder_winograd_backend(args.engine, rec, manifest.batch_chunk(args.engine / rec["file"]) if args.as_loaded else None),
        }
        print(f"filters: {old} {filters_mib(old_dir, old_rec):.0f} MiB, "
              f"folder {(args.engine / rec['filters_file']).stat().st_size / 2**20:.0f} MiB; folder's images per call: "
              f"{backends[new].batch_chunk or 'the whole batch'}")
        medians, outputs = alternated_medians(backends, manifest, args.runs, batches=args.batch, settle_s=0.1)
        for batch, med in medians.items():
            diff = float(np.abs(outputs[batch][new] - outputs[batch][old]).max())
            print(f"batch {batch}: {old} {med[old]:.1f} ms, folder {med[new]:.1f} ms ({med[new] / med[old]:.3f}x); "
                  f"max abs output difference {diff:.1e}")
        del backends
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Winograd filters transformed inside the graph at every call, against the stored transformed filters:
latency and peak RSS of the same engine folder's Winograd CPU graph.

Run: .venv/bin/python -m benchmarks.winograd_filters_per_call ENGINE_DIR (built with --winograd-per-call none) [--batch 1] [--runs 5]
     [--modes stored kron kron-f4] [--chunk-mib 0] [--rows] [--no-arena]

Why: a folder stores the transformed filters U = G W G^T (cmrt/engine/winograd_filters.py), which
hold 36/9 (F(4x4)) or 16/9 (F(2x2)) of the bytes of the 3x3 weights they replace; that is most of
the Winograd graph's memory above the plain graph's. The alternative is to store only the 3x3
weights and let the graph compute U before each of its GEMMs, so that U lives in ONNX Runtime's
arena only while its GEMM runs. This measures what that costs and what it saves.

Graphs (each made in a temporary folder beside the folder, with a hard link to its weight file; the
folder is not touched):
- `stored`: the folder's Winograd graph as `cmrt.load` runs it, U mapped from the filters file.
- `kron`: each U input replaced by a 3x3-weight input stored tap-major ([9, K*C], mapped from a
  file this script writes) and one MatMul by the [alpha^2, 9] Kronecker basis, where the GEMM
  that reads U was. With `--chunk-mib`, U is made and multiplied in parts along its output
  channels (a [9, Kc*C] input each, their products joined by a Concat), so that each part is
  small enough to come back from the cache instead of memory and the arena never holds a big one.
- `kron-f4`: the same for the F(4x4) filters only, the F(2x2) ones stored. Per (input, output)
  channel pair the transform costs 324 multiply-adds for F(4x4) and gives back 27 floats of
  filter; for F(2x2) 144 for 7, the worse trade.
- `--rows`: the per-call graphs read the 3x3 weights where they already lie, in the folder's
  weight file ([K, C, 3, 3] is [K*C, 9] rows, and a chunk of output channels is a run of rows),
  with a Transpose in the graph, so that no second copy of the weights is stored.

These graphs are this script's own, made to compare ways of transforming the filters; they lack
the build's ordering dependency (`cmrt/build/winograd.py`: each part of U made after its
convolution's V), so ONNX Runtime runs many of their transforms early and their peaks are above
those of a folder built with `--winograd-per-call`. A built folder is measured with
`benchmarks.latency.coldstart` (peak) and `benchmarks.winograd_against_commit` (latency).

Every graph runs in cmrt's ONNX Runtime CPU backend, with its session options, opened from the
graph itself (not from the optimized-graph cache that `cmrt.load` opens, so the peaks are above a
load's; the differences between the graphs are what this measures).
`--no-arena` runs the per-call graphs without ONNX Runtime's CPU arena, so that
each U goes back to the system once its GEMM has read it (the arena keeps what it grew to).

Peak RSS (VmHWM, which only grows): each graph in its own new process, two calls at --batch.
Latency: all the graphs in one process, called in turn, --runs rounds after a warm-up round,
medians (graphs in separate processes meet the machine at different moments, and on a shared
machine that moves a median more than the graphs differ). The outputs are compared with `stored`'s.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.latency.coldstart import peak_rss_bytes
from cmrt.build.winograd import per_call_chunks
from cmrt.engine.winograd import PER_CALL_CHOICES, tile_of

REPO = Path(__file__).resolve().parents[1]
MODES = ("stored", "kron", "kron-f4")


def _winograd_record(engine: Path) -> dict:
    """The folder's Winograd record, each filter with the `tiles` of its GEMM (from its graph)."""
    import onnx
    from onnx import numpy_helper

    from cmrt.engine.manifest import read_manifest

    rec = read_manifest(engine).winograd
    if not rec or not rec.get("used") or not rec.get("filters_file"):
        raise SystemExit(f"{engine}: no Winograd CPU graph with filters in this folder (build it with `cmrt build` on a CPU)")
    if any("chunks" in f for f in rec["filters"]):
        raise SystemExit(f"{engine}: its Winograd graph transforms filters per call already; this script starts from "
                         "stored filters: build a folder with `cmrt build ... --winograd-per-call none`")
    graph = onnx.load(str(engine / rec["file"]), load_external_data=False).graph
    v_shapes = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name.endswith("/v_shape")}
    for f in rec["filters"]:  # U is "<conv>/winograd/U"; V's shape [N, C, alpha^2, tiles] is "<conv>/winograd/v_shape"
        f["tiles"] = int(v_shapes[f["input"].rsplit("/", 1)[0] + "/v_shape"][-1])
    return rec


def _chunks(f: dict, chunk_bytes: int) -> list[tuple[int, int]]:
    """[k0, k1) output-channel ranges of a filter, by the build's rule (`per_call_chunks`; one when 0)."""
    k, c = f["shape"][:2]
    return [(a, b) for a, b in per_call_chunks(k, c, tile_of(f), f.get("tiles", 0), chunk_bytes)]


def _per_call(rec: dict, mode: str) -> list[dict]:
    """The filters `mode` transforms at each call (the others stay stored)."""
    tiles = PER_CALL_CHOICES[{"kron": "all", "kron-f4": "f4"}.get(mode, "none")]
    return [f for f in rec["filters"] if tile_of(f).m in tiles]


def _per_call_graph(engine: Path, rec: dict, mode: str, work: Path, chunk_bytes: int, rows: bool) -> Path:
    """The folder's Winograd graph with the U inputs of `mode`'s filters computed in the graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(engine / rec["file"]), load_external_data=False)
    g = model.graph
    filters = {f["input"]: f for f in _per_call(rec, mode)}
    made: dict[str, list] = {}  # U name -> the nodes that replace the GEMM reading it
    consts: set[str] = set()

    def const(name: str, value) -> str:
        if name not in consts:
            g.initializer.append(numpy_helper.from_array(value, name))
            consts.add(name)
        return name

    gemm = {n.input[0]: n for n in g.node if n.op_type == "MatMul" and n.input[0] in filters}
    for name, f in filters.items():
        c = f["shape"][1]
        tile = tile_of(f)
        basis = const(f"per_call/F{tile.m}/kron", tile.filter_basis_matrix().astype(np.float32))
        nodes, parts = [], []
        for j, (k0, k1) in enumerate(_chunks(f, chunk_bytes)):
            taps, u = f"{name}/W_taps/{j}", f"{name}/{j}"
            g.input.append(helper.make_tensor_value_info(taps, TensorProto.FLOAT, [(k1 - k0) * c, 9] if rows else [9, (k1 - k0) * c]))
            if rows:  # ONNX Runtime fuses the Transpose into the MatMul (a transposed operand)
                nodes.append(helper.make_node("Transpose", [taps], [f"{taps}/T"], perm=[1, 0], name=f"{u}/per_call/Transpose"))
                taps = f"{taps}/T"
            shape = const(f"{name}/u_shape/{j}", np.array([tile.filter_values(), k1 - k0, c], np.int64))
            nodes += [
                helper.make_node("MatMul", [basis, taps], [f"{u}/flat"], name=f"{u}/per_call/transform"),
                helper.make_node("Reshape", [f"{u}/flat", shape], [u], name=f"{u}/per_call/Reshape"),
                helper.make_node("MatMul", [u, gemm[name].input[1]], [f"{u}/M"], name=f"{u}/per_call/MatMul"),
            ]
            parts.append(f"{u}/M")
        # M is [N, alpha^2, K, tiles]: the chunks' products side by side along K
        nodes.append(helper.make_node("Concat", parts, list(gemm[name].output), axis=2, name=f"{name}/per_call/Concat")
                     if len(parts) > 1 else helper.make_node("Identity", parts, list(gemm[name].output), name=f"{name}/per_call/M"))
        made[name] = nodes
    kept_inputs = [i for i in g.input if i.name not in filters]
    g.ClearField("input")
    g.input.extend(kept_inputs)
    nodes = []
    for node in g.node:  # each U computed where its GEMM was, so that only one is alive at a time
        nodes.extend(made.pop(node.input[0], [node]) if node.op_type == "MatMul" and node.input else [node])
    if made:
        raise SystemExit(f"{engine}: no MatMul reads the Winograd filters {sorted(made)[:3]}")
    g.ClearField("node")
    g.node.extend(nodes)
    out = work / f"per_call.{mode}.onnx"
    onnx.save(model, str(out))
    return out


def _tap_major_weights(engine: Path, rec: dict, work: Path, chunk_bytes: int) -> None:
    """Each filter's 3x3 weights as [9, Kc*C] (tap-major) per output-channel chunk, one after the other."""
    with open(work / "weights.taps", "wb") as out:
        for f in rec["filters"]:
            k, c = f["shape"][:2]
            w = np.memmap(engine / rec["weights_file"], dtype=np.float32, mode="r", offset=f["offset"], shape=(k, c, 9))
            for k0, k1 in _chunks(f, chunk_bytes):
                out.write(np.ascontiguousarray(w[k0:k1].reshape(-1, 9).T).tobytes())
            del w


def _feeds(engine: Path, rec: dict, mode: str, work: Path, chunk_bytes: int, rows: bool) -> dict:
    """What the graph of `mode` takes besides the sample: stored U, and per-chunk tap-major weights."""
    from cmrt.engine.winograd_filters import mapped_filters

    stored = mapped_filters(engine, rec)
    if mode == "stored":
        return stored
    per_call = {f["input"] for f in _per_call(rec, mode)}
    feeds = {name: u for name, u in stored.items() if name not in per_call}
    taps = np.memmap(work / ("weights.taps" if not rows else rec["weights_file"]), dtype=np.float32, mode="r")
    at = 0
    for f in rec["filters"]:
        c = f["shape"][1]
        for j, (k0, k1) in enumerate(_chunks(f, chunk_bytes)):
            n = 9 * (k1 - k0) * c
            if f["input"] in per_call and rows:  # a view of the 3x3 weights in the weight file, [Kc*C, 9]
                start = f["offset"] // 4 + k0 * c * 9
                feeds[f"{f['input']}/W_taps/{j}"] = taps[start : start + n].reshape(-1, 9)
            elif f["input"] in per_call:
                feeds[f"{f['input']}/W_taps/{j}"] = taps[at : at + n].reshape(9, -1)
            at += n
    return feeds


def _backend(graph: Path, feeds: dict, arena: bool):
    """The graph in cmrt's ONNX Runtime CPU backend (its session options), optionally without the arena."""
    from cmrt.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    class WithoutArena(OnnxRuntimeBackend):
        def _options(self, ort, optimize: bool):
            so = super()._options(ort, optimize)
            so.enable_cpu_mem_arena = False
            return so

    return (OnnxRuntimeBackend if arena else WithoutArena)(graph, extra_inputs=feeds)


def _call(backend, batch: int):
    """One UNet call at `batch`, on a fixed sample."""
    shape = next(i.shape for i in backend.session.get_inputs() if i.name == "sample")
    sample = np.random.default_rng(0).standard_normal((batch, *shape[1:])).astype(np.float32)
    timestep = np.full((batch,), 0.5, np.float32)
    labels = np.arange(batch, dtype=np.int64) if backend.conditional else None
    return lambda: backend.run(sample, timestep, labels)


def _open(engine: Path, rec: dict, mode: str, work: Path, arena: bool, chunk_bytes: int, rows: bool):
    graph = engine / rec["file"] if mode == "stored" else work / f"per_call.{mode}.onnx"
    return _backend(graph, _feeds(engine, rec, mode, work, chunk_bytes, rows), arena=arena or mode == "stored")


def peak_child(engine: Path, mode: str, work: Path, batch: int, arena: bool, chunk_bytes: int, rows: bool) -> None:
    """One graph in this (new) process, two calls: prints JSON {peak_mib, out: where its output went}."""
    run = _call(_open(engine, _winograd_record(engine), mode, work, arena, chunk_bytes, rows), batch)
    run()
    y = run()
    out = work / f"out.{mode}.npy"
    np.save(out, y)
    print(json.dumps({"peak_mib": peak_rss_bytes() / 2**20, "out": str(out)}))


def timing_child(engine: Path, modes: list[str], work: Path, batch: int, runs: int, arena: bool, chunk_bytes: int, rows: bool) -> None:
    """Every graph in this one process, called in turn (--runs rounds after one warm-up): prints JSON {mode: median ms}."""
    rec = _winograd_record(engine)
    calls = {m: _call(_open(engine, rec, m, work, arena, chunk_bytes, rows), batch) for m in modes}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for i in range(runs + 1):
        for m, run in calls.items():
            t0 = time.perf_counter()
            run()
            if i:
                times[m].append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({m: statistics.median(t) for m, t in times.items()}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("engine", type=Path)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--chunk-mib", type=float, default=0.0,
                   help="split each per-call U along its output channels into parts of at most this many MiB (0: whole)")
    p.add_argument("--rows", action="store_true", help="per-call graphs read the 3x3 weights from the weight file as they lie "
                   "([K*C, 9] rows, transposed in the graph) instead of a tap-major copy")
    p.add_argument("--no-arena", action="store_true", help="per-call graphs without ONNX Runtime's CPU arena")
    p.add_argument("--child", help=argparse.SUPPRESS)  # "peak:MODE" or "timing"
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    chunk_bytes = int(args.chunk_mib * 2**20)
    if args.batch < 1 or args.runs < 1 or args.chunk_mib < 0:
        p.error("--batch and --runs must be at least 1, --chunk-mib at least 0")
    modes = ["stored"] + [m for m in args.modes if m != "stored"]
    arena = not args.no_arena
    if args.child == "timing":
        timing_child(args.engine, modes, args.work, args.batch, args.runs, arena, chunk_bytes, args.rows)
        return 0
    if args.child:
        peak_child(args.engine, args.child.split(":", 1)[1], args.work, args.batch, arena, chunk_bytes, args.rows)
        return 0
    rec = _winograd_record(args.engine)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory(prefix="cmrt-per-call-", dir=args.engine.parent) as tmp:
        work = Path(tmp)
        if len(modes) > 1:  # the graphs' other weights: the folder's weight file, hard-linked (ONNX Runtime refuses a symlink out)
            os.link(args.engine / rec["weights_file"], work / rec["weights_file"])
            if not args.rows:
                _tap_major_weights(args.engine, rec, work, chunk_bytes)
        for mode in modes[1:]:
            _per_call_graph(args.engine, rec, mode, work, chunk_bytes, args.rows)

        def child(what: str) -> dict:
            cmd = [sys.executable, "-m", "benchmarks.winograd_filters_per_call", str(args.engine), "--child", what, "--work", str(work),
                   "--batch", str(args.batch), "--runs", str(args.runs), "--chunk-mib", str(args.chunk_mib), "--modes", *modes]
            r = subprocess.run(cmd + (["--no-arena"] if args.no_arena else []) + (["--rows"] if args.rows else []), capture_output=True, text=True, env=env, cwd=REPO)
            if r.returncode:
                raise SystemExit(f"{what}: failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
            return json.loads(r.stdout.strip().splitlines()[-1])

        peaks = {m: child(f"peak:{m}") for m in modes}
        ms = child("timing")
        ref = np.load(peaks["stored"]["out"])
        no_arena = ", per-call graphs without the CPU arena" if args.no_arena else ""
        chunks = f", per-call U in parts of at most {args.chunk_mib:g} MiB" if chunk_bytes else ""
        rows = ", 3x3 weights read as they lie in the weight file" if args.rows else ""
        print(f"{args.engine.name}, batch {args.batch}{no_arena}{chunks}{rows}: peak RSS of a new process per graph (two calls); "
              f"latency: medians of {args.runs} calls, the graphs in turn in one process")
        print(f"{'filters':10s} {'ms':>8s} {'x stored':>9s} {'peak MiB':>9s}  max |out - stored|")
        for mode in modes:
            diff = float(np.abs(np.load(peaks[mode]["out"]) - ref).max())
            print(f"{mode:10s} {ms[mode]:8.0f} {ms[mode] / ms['stored']:9.3f} {peaks[mode]['peak_mib']:9.0f}  {diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Winograd filters transformed inside the graph at every call, against the stored transformed filters:
latency and peak RSS of the same engine folder's Winograd CPU graph.

Run: .venv/bin/python -m benchmarks.winograd_filters_per_call ENGINE_DIR [--batch 1] [--runs 5] [--rounds 2] [--no-arena]

Why: a folder stores the transformed filters U = G W G^T (cmrt/engine/winograd_filters.py), which
hold 36/9 (F(4x4)) or 16/9 (F(2x2)) of the bytes of the 3x3 weights they replace; that is most of
the Winograd graph's memory above the plain graph's. The alternative is to store only the 3x3
weights and let the graph compute U before each of its GEMMs, so that U lives in ONNX Runtime's
arena only while its GEMM runs. This measures what that costs and what it saves.

Graphs (each made in a temporary folder beside the folder, with a hard link to its weight file; the
folder is not touched):
- `stored`: the folder's Winograd graph as `cmrt.load` runs it, U mapped from the filters file.
- `kron`: each U input replaced by a 3x3-weight input stored tap-major ([9, K*C], mapped from a
  file this script writes) and one MatMul by the [alpha^2, 9] Kronecker basis, placed just before
  the GEMM that reads U.
- `separable`: the same weights as [3, 3*K*C] and G W G^T as two MatMuls by G ([alpha, 3]).

`--no-arena` runs the per-call graphs without ONNX Runtime's CPU arena and memory pattern, so that
each U goes back to the system once its GEMM has read it (the arena keeps what it grew to).

Each graph runs in its own new process (peak RSS, VmHWM, only grows), processes alternated over
--rounds; each process makes --runs calls at --batch after one warm-up call and reports the median.
The outputs of every graph are compared with `stored`'s.
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

REPO = Path(__file__).resolve().parents[1]
MODES = ("stored", "kron", "separable")


def _winograd_record(engine: Path) -> dict:
    from cmrt.engine.manifest import read_manifest

    rec = read_manifest(engine).winograd
    if not rec or not rec.get("used") or not rec.get("filters_file"):
        raise SystemExit(f"{engine}: no Winograd CPU graph with filters in this folder (build it with `cmrt build` on a CPU)")
    return rec


def _per_call_graph(engine: Path, rec: dict, mode: str, work: Path) -> Path:
    """The folder's Winograd graph with each U input computed in the graph from tap-major 3x3 weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from cmrt.engine.winograd import tile_of

    model = onnx.load(str(engine / rec["file"]), load_external_data=False)
    g = model.graph
    filters = {f["input"]: f for f in rec["filters"]}
    made: dict[str, list] = {}  # U name -> the nodes that compute it
    consts: set[str] = set()

    def const(name: str, value) -> str:
        if name not in consts:
            g.initializer.append(numpy_helper.from_array(value, name))
            consts.add(name)
        return name

    for name, f in filters.items():
        k, c = f["shape"][:2]
        tile = tile_of(f)
        a = tile.alpha
        u_shape = const(f"{name}/u_shape", np.array([a * a, k, c], np.int64))
        if mode == "kron":
            basis = const(f"per_call/F{tile.m}/kron", tile.filter_basis_matrix().astype(np.float32))
            g.input.append(helper.make_tensor_value_info(f"{name}/W_taps", TensorProto.FLOAT, [9, k * c]))
            made[name] = [
                helper.make_node("MatMul", [basis, f"{name}/W_taps"], [f"{name}/U_flat"], name=f"{name}/per_call/MatMul"),
            ]
        else:
            basis = const(f"per_call/F{tile.m}/G", tile.G.astype(np.float32))
            rows = const(f"{name}/rows_shape", np.array([a, 3, k * c], np.int64))
            g.input.append(helper.make_tensor_value_info(f"{name}/W_taps", TensorProto.FLOAT, [3, 3 * k * c]))
            made[name] = [
                helper.make_node("MatMul", [basis, f"{name}/W_taps"], [f"{name}/GW"], name=f"{name}/per_call/MatMul_rows"),
                helper.make_node("Reshape", [f"{name}/GW", rows], [f"{name}/GW_rows"], name=f"{name}/per_call/Reshape_rows"),
                helper.make_node("MatMul", [basis, f"{name}/GW_rows"], [f"{name}/U_flat"], name=f"{name}/per_call/MatMul_cols"),
            ]
        made[name].append(helper.make_node("Reshape", [f"{name}/U_flat", u_shape], [name], name=f"{name}/per_call/Reshape"))
    kept_inputs = [i for i in g.input if i.name not in filters]
    g.ClearField("input")
    g.input.extend(kept_inputs)
    nodes = []
    for node in g.node:  # each U computed just before the node that reads it, so only one is alive at a time
        for i in node.input:
            nodes.extend(made.pop(i, []))
        nodes.append(node)
    if made:
        raise SystemExit(f"{engine}: no node reads the Winograd filters {sorted(made)[:3]}")
    g.ClearField("node")
    g.node.extend(nodes)
    out = work / f"per_call.{mode}.onnx"
    onnx.save(model, str(out))
    return out


def _tap_major_weights(engine: Path, rec: dict, work: Path) -> Path:
    """Every rewritten Conv's 3x3 weights as [9, K*C] (tap-major), one after the other, in one file."""
    path = work / "weights.taps"
    with open(path, "wb") as f:
        for flt in rec["filters"]:
            k, c = flt["shape"][:2]
            w = np.memmap(engine / rec["weights_file"], dtype=np.float32, mode="r", offset=flt["offset"], shape=(k * c, 9))
            f.write(np.ascontiguousarray(w.T).tobytes())
            del w
    return path


def _inputs(sess, batch: int) -> dict:
    rng = np.random.default_rng(0)
    chw = next(i.shape[1:] for i in sess.get_inputs() if i.name == "sample")
    feeds = {"sample": rng.standard_normal((batch, *chw)).astype(np.float32), "timestep": np.full((batch,), 0.5, np.float32)}
    if "class_labels" in {i.name for i in sess.get_inputs()}:
        feeds["class_labels"] = np.arange(batch, dtype=np.int64)
    return feeds


def child(engine: Path, mode: str, work: Path, batch: int, runs: int, arena: bool) -> None:
    """One graph in this (new) process: prints JSON {ms: median, peak_mib, out: where its output went}."""
    import onnxruntime as ort

    from cmrt.engine.winograd_filters import mapped_filters

    rec = _winograd_record(engine)
    if mode == "stored":
        graph, feeds = engine / rec["file"], dict(mapped_filters(engine, rec))
    else:
        graph = work / f"per_call.{mode}.onnx"
        taps = np.memmap(work / "weights.taps", dtype=np.float32, mode="r")
        feeds, at = {}, 0
        for f in rec["filters"]:
            n = 9 * f["shape"][0] * f["shape"][1]
            feeds[f"{f['input']}/W_taps"] = taps[at : at + n].reshape((9, -1) if mode == "kron" else (3, -1))
            at += n
    options = ort.SessionOptions()
    if mode != "stored" and not arena:
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
    sess = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    feeds.update(_inputs(sess, batch))
    times = []
    for _ in range(runs + 1):
        t0 = time.perf_counter()
        y = sess.run(None, feeds)[0]
        times.append((time.perf_counter() - t0) * 1e3)
    out = work / f"out.{mode}.npy"
    np.save(out, y)
    print(json.dumps({"ms": statistics.median(times[1:]), "peak_mib": peak_rss_bytes() / 2**20, "out": str(out)}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("engine", type=Path)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--no-arena", action="store_true", help="per-call graphs without ONNX Runtime's CPU arena")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.batch < 1 or args.runs < 1 or args.rounds < 1:
        p.error("--batch, --runs and --rounds must be at least 1")
    if args.child:
        child(args.engine, args.child, args.work, args.batch, args.runs, arena=not args.no_arena)
        return 0
    rec = _winograd_record(args.engine)
    modes = ["stored"] + [m for m in args.modes if m != "stored"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory(prefix="cmrt-per-call-", dir=args.engine.parent) as tmp:
        work = Path(tmp)
        if len(modes) > 1:  # the graphs' other weights: the folder's weight file, hard-linked (ONNX Runtime refuses a symlink out)
            os.link(args.engine / rec["weights_file"], work / rec["weights_file"])
            _tap_major_weights(args.engine, rec, work)
        for mode in modes[1:]:
            _per_call_graph(args.engine, rec, mode, work)
        got: dict[str, list[dict]] = {m: [] for m in modes}
        for _ in range(args.rounds):
            for mode in modes:
                r = subprocess.run(
                    [sys.executable, "-m", "benchmarks.winograd_filters_per_call", str(args.engine), "--child", mode, "--work", str(work),
                     "--batch", str(args.batch), "--runs", str(args.runs)] + (["--no-arena"] if args.no_arena else []), capture_output=True, text=True, env=env, cwd=REPO)
                if r.returncode:
                    print(f"{mode}: failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
                    return 1
                got[mode].append(json.loads(r.stdout.strip().splitlines()[-1]))
        ref = np.load(got["stored"][-1]["out"])
        base = statistics.median(x["ms"] for x in got["stored"])
        arena = ", per-call graphs without the CPU arena" if args.no_arena else ""
        print(f"{args.engine.name}, batch {args.batch}{arena}: medians over {args.rounds} new processes of each one's median of {args.runs} calls")
        print(f"{'filters':10s} {'ms':>8s} {'x stored':>9s} {'peak MiB':>9s}  max |out - stored|")
        for mode in modes:
            ms = statistics.median(x["ms"] for x in got[mode])
            peak = statistics.median(x["peak_mib"] for x in got[mode])
            diff = float(np.abs(np.load(got[mode][-1]["out"]) - ref).max())
            print(f"{mode:10s} {ms:8.0f} {ms / base:9.3f} {peak:9.0f}  {diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

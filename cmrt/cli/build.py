"""`cmrt build MODEL`: export a model to a verified engine folder (needs cmrt[export])."""
from __future__ import annotations

import time
from pathlib import Path

from ..engine.io_spec import PRECISIONS, TOLERANCE
from ..engine.options import BUILD_BACKENDS, WINOGRAD_MODES, BuildOptions
from ..engine.tensorrt import DEFAULT_OPTIMIZATION_LEVEL
from ..engine.winograd import PER_CALL_CHOICES
from .args import add_model

HELP = "export a model to a verified engine folder (needs cmrt[export])"


def add_parser(sub) -> None:
    d = BuildOptions()
    p = sub.add_parser("build", help=HELP)
    add_model(p, "checkpoint name, hub id or folder")
    p.add_argument("--out", type=Path, help="engine folder (default $CMRT_ENGINE_DIR/NAME, else engines/NAME)")
    p.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    p.add_argument("--opset", type=int, default=d.opset)
    p.add_argument("--min-batch", type=int, default=d.min_batch)
    p.add_argument("--opt-batch", type=int, default=d.opt_batch)
    p.add_argument("--max-batch", type=int, default=d.max_batch)
    p.add_argument("--revision", help="hub revision (branch, tag or commit)")
    p.add_argument("--force", action="store_true", help="rebuild even if the folder is up to date")
    p.add_argument("--winograd", choices=WINOGRAD_MODES, default=d.winograd,
                   help="CPU graph with Winograd 3x3 convolutions: auto keeps it where it measures faster here (default)")
    p.add_argument("--winograd-min-size", type=int, default=d.winograd_min_size, metavar="N",
                   help=f"smallest map side the Winograd graph rewrites (default {d.winograd_min_size}); larger holds "
                   "fewer filters in memory and runs slower")
    p.add_argument("--winograd-f4-min-size", type=int, default=d.winograd_f4_min_size, metavar="N",
                   help=f"smallest map side rewritten with F(4x4) tiles, smaller ones get F(2x2) "
                   f"(default {d.winograd_f4_min_size}); docs/engine-folder.md has the measured trade")
    p.add_argument("--winograd-per-call", choices=tuple(PER_CALL_CHOICES), default=d.winograd_per_call,
                   help="filters the Winograd graph transforms at every call instead of storing them: all, f4 (those of "
                   f"F(4x4) tiles) or none (all stored: more memory, a little faster); default {d.winograd_per_call}; "
                   "docs/engine-folder.md has the measured trade")
    p.add_argument("--winograd-band-mib", type=int, default=d.winograd_band_mib, metavar="MIB",
                   help="convolutions whose transformed input tiles exceed this many MiB per image run in bands of rows: "
                   f"less memory on large maps, slower (default {d.winograd_band_mib}; 0: none)")
    t = p.add_argument_group("TensorRT (GPU)")
    t.add_argument("--backend", choices=BUILD_BACKENDS, default="auto",
                   help="auto: add a validated TensorRT engine where a GPU and TensorRT are present (default); "
                   "tensorrt: require it; onnxruntime: ONNX folder only")
    t.add_argument("--trt-precision", choices=PRECISIONS, default="fp16", help="ONNX graph the engine is built from")
    t.add_argument("--trt-opt-level", type=int, default=DEFAULT_OPTIMIZATION_LEVEL,
                   help=f"TensorRT builder optimization level 0..5 (default {DEFAULT_OPTIMIZATION_LEVEL})")
    t.add_argument("--timing-cache", type=Path, help="TensorRT timing cache file (default: per GPU under $CMRT_CACHE)")
    t.add_argument("--no-timing-cache", action="store_true", help="build without a timing cache")
    tol = ", ".join(f"{v} {k}" for k, v in TOLERANCE["tensorrt"].items())
    t.add_argument("--trt-tolerance", type=float, help=f"max abs error vs ONNX Runtime fp32 (default {tol})")
    t.add_argument("--trt-workspace-mib", type=int, help="TensorRT workspace limit in MiB (default: TensorRT's)")


def run(args) -> int:
    from ..build.folder import build_engine_folder
    from ..engine.manifest import read_manifest
    from ..engine.tensorrt import TensorRTOptions

    opts = BuildOptions(
        precisions=tuple(args.precision), opset=args.opset, min_batch=args.min_batch, opt_batch=args.opt_batch,
        max_batch=args.max_batch, winograd=args.winograd,
        winograd_min_size=args.winograd_min_size, winograd_f4_min_size=args.winograd_f4_min_size,
        winograd_per_call=args.winograd_per_call, winograd_band_mib=args.winograd_band_mib,
    )
    trt_opts = TensorRTOptions(
        precision=args.trt_precision,
        optimization_level=args.trt_opt_level,
        timing_cache=None if args.timing_cache is None else str(args.timing_cache),
        use_timing_cache=not args.no_timing_cache,
        tolerance=args.trt_tolerance,
        workspace_mib=args.trt_workspace_mib,
    )
    t0 = time.perf_counter()
    out = build_engine_folder(
        args.model, out=args.out, options=opts, force=args.force, revision=args.revision,
        backend=args.backend, tensorrt=trt_opts,
    )
    print(f"engine folder: {out}  ({time.perf_counter() - t0:.1f} s)")
    if args.backend != "onnxruntime":
        entry = read_manifest(out, verify=False).tensorrt
        if entry:
            v = entry["validation"]
            print(f"tensorrt engine: {entry['file']}  (max abs error vs ONNX Runtime {v['max_abs_error']:.2e}, tolerance {v['tolerance']})")
    return 0

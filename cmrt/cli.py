"""The `cmrt` command line. Build-time commands import torch lazily; run-time ones never do."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .registry import DEFAULT_MODEL

logger = logging.getLogger("cmrt")


def comma_list(cast, what: str):
    """An argparse type for comma-separated values, e.g. comma_list(int, "integers such as 17,0")."""

    def parse(text: str) -> list:
        try:
            return [cast(v) for v in text.replace(" ", "").split(",") if v != ""]
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from e

    return parse


_int_list = comma_list(int, "integers such as 17,0")


def _add_build(sub) -> None:
    p = sub.add_parser("build", help="export a model to a verified engine folder (needs cmrt[export])")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"checkpoint name, hub id or folder (default {DEFAULT_MODEL})")
    p.add_argument("--out", type=Path, help="engine folder (default engines/NAME)")
    p.add_argument("--precision", nargs="+", choices=("fp32", "fp16"), default=["fp32", "fp16"])
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--min-batch", type=int, default=1)
    p.add_argument("--opt-batch", type=int, default=4)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--revision", help="hub revision (branch, tag or commit)")
    p.add_argument("--force", action="store_true", help="rebuild even if the folder is up to date")
    p.add_argument(
        "--winograd", choices=("auto", "always", "never"), default="auto",
        help="CPU graph with Winograd 3x3 convolutions: auto keeps it where it measures faster here (default)",
    )
    t = p.add_argument_group("TensorRT (GPU)")
    t.add_argument(
        "--backend", choices=("auto", "onnxruntime", "tensorrt"), default="auto",
        help="auto: add a validated TensorRT engine where a GPU and TensorRT are present (default); "
        "tensorrt: require it; onnxruntime: ONNX folder only",
    )
    t.add_argument("--trt-precision", choices=("fp16", "fp32"), default="fp16", help="ONNX graph the engine is built from")
    t.add_argument("--trt-opt-level", type=int, default=3, help="TensorRT builder optimization level 0..5 (default 3)")
    t.add_argument("--timing-cache", type=Path, help="TensorRT timing cache file (default: per GPU under ~/.cache/cmrt)")
    t.add_argument("--no-timing-cache", action="store_true", help="build without a timing cache")
    t.add_argument("--trt-tolerance", type=float, help="max abs error vs ONNX Runtime fp32 (default 0.05 fp16, 0.001 fp32)")
    t.add_argument("--trt-workspace-mib", type=int, help="TensorRT workspace limit in MiB (default: TensorRT's)")


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate a grid of images from an engine folder or model")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="engine folder, or a model name (its engine is built if missing)")
    p.add_argument("--batch", type=int, default=1)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=int, help="number of sampling steps (default 1)")
    g.add_argument("--timesteps", type=_int_list, help="explicit timesteps, e.g. 17,0")
    p.add_argument("--class-labels", type=_int_list, help="one label, or one per image, comma-separated")
    p.add_argument("--seed", type=int)
    p.add_argument("--rng", choices=("numpy", "torch"), default="numpy",
                   help="'torch': the images diffusers makes with generator=torch.manual_seed(SEED)")
    p.add_argument("--out", type=Path, default=Path("outputs/grid.png"), help="grid PNG to write")
    p.add_argument("--cols", type=int, help="grid columns (default: square)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"), help="see `cmrt doctor`")
    p.add_argument("--precision", choices=("fp32", "fp16"))
    p.add_argument("--no-winograd", action="store_true", help="ONNX Runtime on the CPU: run the plain graph")
    p.add_argument("--server", metavar="URL",
                   help="generate on a running `cmrt serve` (http://HOST:PORT or grpc://HOST:PORT); image i uses seed SEED+i")


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="describe an engine folder")
    p.add_argument("folder", type=Path)
    p.add_argument("--json", action="store_true", help="print the whole manifest")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="build the default model and write sample grids (what `make demo` runs)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--engines", type=Path, default=Path("engines"), help="folder holding engine folders")
    p.add_argument("--out", type=Path, default=Path("outputs"), help="folder for the PNG grids")
    p.add_argument("--per-class", type=int, default=8, help="samples per class (per row)")
    p.add_argument("--seed", type=int, default=0)


def cmd_demo(args) -> int:
    from .demo import run_demo

    r = run_demo(args.model, args.engines, args.out, per_class=args.per_class, seed=args.seed)
    print(f"engine folder {r.engine_dir} (build/reuse {r.build_seconds:.1f} s, load {r.load_seconds:.2f} s)")
    for name, path in r.grids.items():
        n = r.images // len(r.grids)
        print(f"{name}: wrote {path}  ({n} images in {r.seconds[name]:.2f} s, {r.seconds[name] / n * 1000:.1f} ms/image)")
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="latency benchmark against diffusers (from a source checkout; `cmrt bench --help`)",
                       add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)


def cmd_bench(args) -> int:
    # The harness lives in the repository's benchmarks/ folder, beside the package.
    repo = Path(__file__).resolve().parent.parent
    if not (repo / "benchmarks" / "latency" / "run.py").is_file():
        raise FileNotFoundError("cmrt bench runs from a cmrt source checkout (benchmarks/latency not found beside cmrt/)")
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    from benchmarks.latency.run import main as bench_main

    return bench_main(args.bench_args)


def cmd_build(args) -> int:
    from .engine.build import BuildOptions, build_engine_folder

    opts = BuildOptions(
        precisions=tuple(args.precision),
        opset=args.opset,
        min_batch=args.min_batch,
        opt_batch=args.opt_batch,
        max_batch=args.max_batch,
        winograd=args.winograd,
    )
    from .engine.tensorrt_build import TensorRTOptions

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
        from .engine.manifest import read_manifest

        entry = read_manifest(out, verify=False).data.get("tensorrt")
        if entry:
            v = entry["validation"]
            print(f"tensorrt engine: {entry['file']}  (max abs error vs ONNX Runtime {v['max_abs_error']:.2e}, tolerance {v['tolerance']})")
    return 0


def cmd_generate(args) -> int:
    if getattr(args, "server", None):
        return _generate_on_server(args)
    from .runtime import load
    from .runtime.postprocess import make_grid

    t0 = time.perf_counter()
    pipe = load(args.model, backend=args.backend, device=args.device, precision=args.precision,
                winograd=False if args.no_winograd else None)
    t_load = time.perf_counter() - t0
    labels = args.class_labels
    if labels is not None and len(labels) == 1 and args.batch > 1:
        labels = labels * args.batch
    t1 = time.perf_counter()
    images = pipe(
        batch_size=args.batch,
        class_labels=labels,
        num_inference_steps=args.steps,
        timesteps=args.timesteps,
        seed=args.seed,
        rng=args.rng,
        output_type="np",
    ).images
    t_gen = time.perf_counter() - t1
    from PIL import Image

    from ._atomic import write_bytes_atomic
    import io

    buf = io.BytesIO()
    Image.fromarray(make_grid(images, cols=args.cols)).save(buf, format="PNG")
    write_bytes_atomic(args.out, buf.getvalue())
    print(
        f"wrote {args.out} ({args.batch} images, {pipe.backend.name}/{pipe.backend.device}): "
        f"load {t_load:.2f} s, generate {t_gen:.3f} s ({t_gen / args.batch * 1000:.1f} ms/image)"
    )
    return 0


def cmd_info(args) -> int:
    from .engine.manifest import read_manifest

    m = read_manifest(args.folder, verify=True)
    if args.json:
        print(json.dumps(m.data, indent=2, sort_keys=True))
        return 0
    d = m.data
    src, unet = d["source"], d["unet"]
    print(f"engine folder   {m.folder}")
    print(f"source          {src['model']} ({src['kind']}, revision {src.get('revision')})")
    print(
        f"unet            {unet['parameters'] / 1e6:.1f} M parameters, {unet['sample_size']}x{unet['sample_size']}, "
        f"{'%d classes' % unet['num_class_embeds'] if unet['num_class_embeds'] else 'unconditional'}"
    )
    s = d["scheduler"]
    print(f"scheduler       N={s['num_train_timesteps']} sigma {s['sigma_min']}..{s['sigma_max']}")
    print(f"batch range     {m.min_batch}..{m.max_batch} (opt {d['build_options']['opt_batch']})")
    for prec, e in sorted(d["onnx"].items()):
        v = e["validation"]
        print(f"onnx {prec:<10} {e['file']}  opset {e['opset']}  max abs error vs PyTorch {v['max_abs_error']:.2e}")
        w = e.get("winograd")
        if w:
            rw = w["rewrite"]
            extra = f", +{rw['added_filter_bytes'] / 1e6:.0f} MB of filters in memory" if "added_filter_bytes" in rw else ""
            state = f"{w['file']} ({rw['rewritten']} of {rw['rewritten'] + rw['kept']} convs{extra})" if w["used"] else "not used"
            err = f", max abs error vs PyTorch {w['validation']['max_abs_error']:.2e}" if "validation" in w and w["used"] else ""
            print(f"cpu winograd    {state}: {w['reason']}{err}")
    t = d.get("tensorrt")
    if t:
        v, g, pr = t["validation"], t["gpu"], t["profile"]
        print(
            f"tensorrt        {t['file']}  TensorRT {t['tensorrt_version']}, {g['name']} (cc {g['compute_capability']}), "
            f"batch {pr['min']}/{pr['opt']}/{pr['max']}, max abs error vs ONNX Runtime {v['max_abs_error']:.2e} (tol {v['tolerance']})"
        )
    for name, rec in sorted(d["files"].items()):
        print(f"file            {name}  {rec['bytes'] / 1e6:.1f} MB  sha256 {rec['sha256'][:16]}… (verified)")
    print("tools           " + ", ".join(f"{k} {v}" for k, v in sorted(d["tools"].items())))
    return 0


def _add_doctor(sub) -> None:
    p = sub.add_parser("doctor", help="show GPU, driver, CUDA, TensorRT, ONNX Runtime, and which backend auto picks and why")
    p.add_argument("folder", nargs="?", type=Path, help="also judge this engine folder's TensorRT engine")
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def cmd_doctor(args) -> int:
    from .doctor import format_report, gather

    report = gather(args.folder, backend=args.backend, device=args.device)
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else format_report(report))
    return 0


def cmd_edit(args) -> int:
    from .edit_cli import run

    return run(args)


def _generate_on_server(args) -> int:
    import io

    import numpy as np
    from PIL import Image

    from ._atomic import write_bytes_atomic
    from .client import Client
    from .runtime.postprocess import make_grid

    if args.timesteps is not None:
        raise ValueError("--timesteps cannot be sent to a server: start it with `cmrt serve ... --timesteps 17,0`, or send --steps")
    if args.rng != "numpy":
        raise ValueError("--rng is the server's choice: start it with `cmrt serve ... --rng torch`")
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % (2**62))
    labels = args.class_labels
    if labels is not None and len(labels) not in (1, args.batch):
        raise ValueError(f"--class-labels has {len(labels)} labels for --batch {args.batch}; give one, or one per image")
    t0 = time.perf_counter()
    images = Client(args.server).generate(
        [seed + i for i in range(args.batch)], class_labels=labels, num_inference_steps=args.steps
    )
    dt = time.perf_counter() - t0
    buf = io.BytesIO()
    Image.fromarray(make_grid(images.astype(np.float32) / 255, cols=args.cols)).save(buf, format="PNG")
    write_bytes_atomic(args.out, buf.getvalue())
    print(f"wrote {args.out} ({args.batch} images from {args.server}, seeds {seed}..{seed + args.batch - 1}): {dt:.3f} s")
    return 0


def _serve_common(p) -> None:
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="engine folder, or a model name (its engine is built if missing)")
    p.add_argument("--max-batch", type=int, help="Triton max_batch_size (default: the engine folder's max batch)")
    p.add_argument("--max-queue-delay-us", type=int, default=2000, help="dynamic batching: longest wait to fill a batch (default 2000)")
    p.add_argument("--instances", type=int, help="model instances (per GPU on KIND_GPU)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=int, help="steps for requests that send no num_inference_steps (default 1)")
    g.add_argument("--timesteps", type=_int_list, help="explicit timesteps for requests that send no num_inference_steps, e.g. 17,0")
    p.add_argument("--max-steps", type=int, help="largest num_inference_steps a request may ask for (default: the model's num_train_timesteps)")
    p.add_argument("--rng", choices=("numpy", "torch"), default="numpy",
                   help="'torch': a seed gives what diffusers makes with generator=torch.manual_seed(seed)")
    p.add_argument("--precision", choices=("fp32", "fp16"))


def _serve_settings(args):
    from .serve.handler import ServeSettings

    return ServeSettings(
        steps=args.steps, timesteps=None if args.timesteps is None else tuple(args.timesteps),
        max_steps=args.max_steps, rng=args.rng,
    )


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve an engine folder on Triton Inference Server (needs cmrt[serve])")
    _serve_common(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001, help="0: no gRPC")
    p.add_argument("--metrics-port", type=int, default=8002, help="0: no metrics")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"))
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: one per core)")
    p.add_argument("--max-request-bytes", type=int,
                   help="largest HTTP request body; larger ones get 413 (default: 16 KiB + 256 bytes per batch row; "
                   "0: no cap, tritonserver answers HTTP itself). gRPC is not capped")
    p.add_argument("--drain-timeout", type=float, default=300.0,
                   help="on SIGTERM/Ctrl-C, seconds that requests in flight get to finish (default 300); a second signal stops now")


def cmd_serve(args) -> int:
    from .serve.server import ServeOptions, serve

    opts = ServeOptions(
        host=args.host, http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
        max_batch=args.max_batch, max_queue_delay_us=args.max_queue_delay_us, instances=args.instances or 1,
        settings=_serve_settings(args), backend=args.backend, device=args.device, precision=args.precision,
        threads=args.threads, verbose=args.verbose, max_request_bytes=args.max_request_bytes, drain_timeout=args.drain_timeout,
    )

    def ready(server):
        o = server.options
        print(
            f"serving model 'cmrt' ({server.engine_dir}) on {server.url}"
            + (f", {server.grpc_url}" if o.grpc_port else "")
            + (f", metrics {server.metrics_url}" if o.metrics_port else "")
            + f" (tritonserver pid {server.triton_pid}, workspace {server.workspace}); SIGTERM or Ctrl-C stops it",
            flush=True,
        )

    return serve(args.model, opts, ready=ready)


def _add_triton_repo(sub) -> None:
    p = sub.add_parser("triton-repo", help="write a Triton model repository for the official tritonserver container")
    _serve_common(p)
    p.add_argument("--out", type=Path, required=True, help="repository folder to write")
    p.add_argument("--unet", choices=("triton", "inprocess"), default="triton",
                   help="triton: UNet on Triton's ONNX Runtime backend (official container as is; default); "
                   "inprocess: cmrt's runtime in the Python backend (needs onnxruntime there)")
    p.add_argument("--kind", choices=("gpu", "cpu"), default="gpu", help="instance kind: gpu = one instance group per GPU (default)")
    p.add_argument("--force", action="store_true", help="replace an existing repository")


def cmd_triton_repo(args) -> int:
    from .runtime.loading import find_engine_folder
    from .serve.triton_repo import RepoOptions, write_repository

    opts = RepoOptions(
        unet=args.unet, kind=args.kind, precision=args.precision, max_batch=args.max_batch,
        max_queue_delay_us=args.max_queue_delay_us, instances=args.instances, settings=_serve_settings(args),
    )
    out = write_repository(find_engine_folder(args.model), args.out, opts, force=args.force)
    print(f"wrote Triton model repository {out}: serve it with `tritonserver --model-repository {out.resolve()}`")
    return 0


COMMANDS = {"build": cmd_build, "generate": cmd_generate, "info": cmd_info, "demo": cmd_demo, "doctor": cmd_doctor}
COMMANDS.update({"serve": cmd_serve, "triton-repo": cmd_triton_repo})
COMMANDS["edit"] = cmd_edit
COMMANDS["bench"] = cmd_bench


def make_parser() -> argparse.ArgumentParser:
    # named `ap`: the GPU API check (../shared/tools/gpu_api_check.py) takes any `parser` attribute call for an OnnxParser one
    ap = argparse.ArgumentParser(prog="cmrt", description="Fast inference for OpenAI Consistency Models.")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    ap.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = ap.add_subparsers(dest="command", required=True)
    _add_build(sub)
    _add_generate(sub)
    _add_info(sub)
    _add_demo(sub)
    _add_doctor(sub)
    _add_serve(sub)
    _add_triton_repo(sub)
    _add_bench(sub)
    from .edit_cli import add_parser as _add_edit

    _add_edit(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # the harness parses its own options (argparse.REMAINDER drops leading flags)
        return cmd_bench(argparse.Namespace(bench_args=argv[1:]))
    args = make_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from .engine.manifest import EngineFolderError
    from .engine.tensorrt_build import BackendUnavailableError, EngineValidationError

    try:
        return COMMANDS[args.command](args)
    except (ValueError, TypeError, EngineFolderError, FileNotFoundError, FileExistsError, BackendUnavailableError, EngineValidationError) as e:
        print(f"cmrt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # hub unreachable, missing extras: one line, not a traceback
        if type(e).__name__ in ("ModelUnavailableError", "ServeError", "ServerError", "URLError") or isinstance(e, ImportError):
            print(f"cmrt {args.command}: error: {e}", file=sys.stderr)
            return 2
        raise

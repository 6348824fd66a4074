"""`cmrt serve MODEL|DIR`: serve an engine folder on Triton Inference Server (needs cmrt[serve])."""
from __future__ import annotations

from .args import add_model, add_rng, add_runtime, int_list, positive_int

HELP = "serve an engine folder on Triton Inference Server (needs cmrt[serve])"


def add_common(p) -> None:
    """What `serve` and `triton-repo` share: the model, batching, instances, the default schedule."""
    add_model(p)
    p.add_argument("--max-batch", type=positive_int, help="Triton max_batch_size (default: the engine folder's max batch)")
    p.add_argument("--max-queue-delay-us", type=int, default=2000, help="dynamic batching: longest wait to fill a batch (default 2000)")
    p.add_argument("--instances", type=positive_int, help="model instances (per GPU on KIND_GPU)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=int, help="steps for requests that send no num_inference_steps (default 1)")
    g.add_argument("--timesteps", type=int_list, help="explicit timesteps for requests that send no num_inference_steps, e.g. 17,0")
    p.add_argument("--max-steps", type=int, help="largest num_inference_steps a request may ask for (default: the model's num_train_timesteps)")
    add_rng(p, "'torch': a seed gives what diffusers makes with generator=torch.manual_seed(seed)")
    p.add_argument("--warmup", type=int_list, metavar="1,4",
                   help="batch sizes to warm up when the model loads, before it is ready (default: none)")


def settings(args):
    from ..serve.handler import ServeSettings

    return ServeSettings(
        steps=args.steps, timesteps=None if args.timesteps is None else tuple(args.timesteps),
        max_steps=args.max_steps, rng=args.rng,
    )


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help=HELP)
    add_common(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001, help="0: no gRPC")
    p.add_argument("--metrics-port", type=int, default=8002, help="0: no metrics")
    add_runtime(p)
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: one per core)")
    p.add_argument("--max-request-bytes", type=int,
                   help="largest HTTP request body; larger ones get 413 (default: 16 KiB + 256 bytes per batch row; "
                   "0: no cap, tritonserver answers HTTP itself). gRPC is not capped")
    p.add_argument("--drain-timeout", type=float, default=300.0,
                   help="on SIGTERM/Ctrl-C, seconds that requests in flight get to finish (default 300); a second signal stops now")


def run(args) -> int:
    from ..serve.server import ServeOptions, serve

    opts = ServeOptions(
        host=args.host, http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
        max_batch=args.max_batch, max_queue_delay_us=args.max_queue_delay_us, instances=args.instances or 1,
        settings=settings(args), backend=args.backend, device=args.device, precision=args.precision,
        threads=args.threads, warmup=None if args.warmup is None else tuple(args.warmup), verbose=args.verbose,
        max_request_bytes=args.max_request_bytes, drain_timeout=args.drain_timeout,
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

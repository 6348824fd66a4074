"""`cmrt triton-repo MODEL|DIR --out REPO`: a Triton model repository for the official tritonserver container."""
from __future__ import annotations

from pathlib import Path

from ..engine.io_spec import PRECISIONS
from .serve import add_common, settings

HELP = "write a Triton model repository for the official tritonserver container"


def add_parser(sub) -> None:
    from ..serve.triton_repo import KINDS, UNETS

    p = sub.add_parser("triton-repo", help=HELP)
    add_common(p)
    p.add_argument("--precision", choices=PRECISIONS, help="ONNX graph to serve (default: fp16 for --kind gpu, else fp32)")
    p.add_argument("--out", type=Path, required=True, help="repository folder to write")
    p.add_argument("--unet", choices=UNETS, default=UNETS[0],
                   help="triton: UNet on Triton's ONNX Runtime backend (official container as is; default); "
                   "inprocess: cmrt's runtime in the Python backend (needs onnxruntime there)")
    p.add_argument("--kind", choices=KINDS, default=KINDS[0], help="instance kind: gpu = one instance group per GPU (default)")
    p.add_argument("--force", action="store_true", help="replace an existing repository")


def run(args) -> int:
    from ..runtime.loading import find_engine_folder
    from ..serve.triton_repo import RepoOptions, write_repository

    opts = RepoOptions(
        unet=args.unet, kind=args.kind, precision=args.precision, max_batch=args.max_batch,
        max_queue_delay_us=args.max_queue_delay_us, instances=args.instances, settings=settings(args),
        warmup=None if args.warmup is None else tuple(args.warmup),
    )
    out = write_repository(find_engine_folder(args.model), args.out, opts, force=args.force)
    print(f"wrote Triton model repository {out}: serve it with `tritonserver --model-repository {out.resolve()}`")
    return 0

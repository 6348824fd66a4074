"""`cmrt generate MODEL|DIR`: a grid of images, in process or from a running `cmrt serve`."""
from __future__ import annotations

import time
from pathlib import Path

from .args import add_model, add_rng, add_runtime, int_list, positive_int

HELP = "generate a grid of images from an engine folder or model"


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help=HELP)
    add_model(p)
    p.add_argument("--batch", type=positive_int, default=1)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=positive_int, help="number of sampling steps (default 1)")
    g.add_argument("--timesteps", type=int_list, help="explicit timesteps, e.g. 17,0")
    p.add_argument("--class-labels", type=int_list, help="one label, or one per image, comma-separated")
    p.add_argument("--seed", type=int)
    add_rng(p)
    p.add_argument("--out", type=Path, default=Path("outputs/grid.png"), help="grid PNG to write")
    p.add_argument("--cols", type=positive_int, help="grid columns (default: square)")
    add_runtime(p)
    p.add_argument("--no-winograd", action="store_true", help="ONNX Runtime on the CPU: run the plain graph")
    p.add_argument("--server", metavar="URL",
                   help="generate on a running `cmrt serve` (http://HOST:PORT or grpc://HOST:PORT); image i uses seed SEED+i")


def run(args) -> int:
    if args.server:
        return _on_server(args)
    from ..runtime.loading import load
    from ..runtime.postprocess import make_grid
    from .images import write_png

    t0 = time.perf_counter()
    pipe = load(args.model, backend=args.backend, device=args.device, precision=args.precision,
                winograd=False if args.no_winograd else None)
    t_load = time.perf_counter() - t0
    labels = args.class_labels
    if labels is not None and len(labels) == 1 and args.batch > 1:
        labels = labels * args.batch
    t1 = time.perf_counter()
    images = pipe(
        batch_size=args.batch, class_labels=labels, num_inference_steps=args.steps, timesteps=args.timesteps,
        seed=args.seed, rng=args.rng, output_type="np",
    ).images
    t_gen = time.perf_counter() - t1
    write_png(args.out, make_grid(images, cols=args.cols))
    print(
        f"wrote {args.out} ({args.batch} images, {pipe.backend.name}/{pipe.backend.device}): "
        f"load {t_load:.2f} s, generate {t_gen:.3f} s ({t_gen / args.batch * 1000:.1f} ms/image)"
    )
    return 0


def _on_server(args) -> int:
    import numpy as np

    from ..runtime.postprocess import make_grid
    from ..serve.client import Client
    from .images import write_png

    if args.timesteps is not None:
        raise ValueError("--timesteps cannot be sent to a server: start it with `cmrt serve ... --timesteps 17,0`, or send --steps")
    if args.rng != "numpy":
        raise ValueError("--rng is the server's choice: start it with `cmrt serve ... --rng torch`")
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % (2**62))
    labels = args.class_labels
    if labels is not None and len(labels) not in (1, args.batch):
        raise ValueError(f"--class-labels has {len(labels)} labels for --batch {args.batch}; give one, or one per image")
    t0 = time.perf_counter()
    images = Client(args.server).generate(
        [seed + i for i in range(args.batch)], class_labels=labels, num_inference_steps=args.steps
    )
    dt = time.perf_counter() - t0
    write_png(args.out, make_grid(images.astype(np.float32) / 255, cols=args.cols))
    print(f"wrote {args.out} ({args.batch} images from {args.server}, seeds {seed}..{seed + args.batch - 1}): {dt:.3f} s")
    return 0

"""`cmrt edit {inpaint,colorize,superres,interpolate,stroke} MODEL|DIR ...`: zero-shot editing to a before/after grid.

Each row of the grid is one sample: what the model is given (masked, grayscale, low
resolution, the strokes) on the left, the result on the right. `interpolate` writes one row,
one image per alpha. Torch is never imported.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ..runtime.editing import DEFAULT_ALPHAS
from .args import add_rng, add_runtime, float_list, int_list, positive_int

logger = logging.getLogger(__name__)

METHODS = ("inpaint", "colorize", "superres", "interpolate", "stroke")
HELP = "zero-shot editing (inpaint, colorize, superres, interpolate, stroke) to a before/after grid"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "edit",
        help=HELP,
        description="Zero-shot editing with the consistency model (paper section 5). Writes a grid PNG: "
        "one row per sample, the model's input on the left and the result on the right.",
    )
    p.add_argument("method", choices=METHODS)
    p.add_argument("model", help="engine folder, or a model name (its engine is built if missing)")
    p.add_argument("--image", type=Path, help="input PNG (the low-resolution image for superres; a full-size one is "
                   "averaged down by --patch-size); not used by interpolate")
    p.add_argument("--mask", type=Path, help="mask PNG, white = pixels to generate (inpaint; optional for stroke)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=positive_int, help="number of steps on the training grid")
    g.add_argument("--timesteps", type=int_list, help="explicit timesteps, e.g. 20,16")
    g.add_argument("--sigmas", type=float_list, help="explicit noise levels, e.g. 5.38,2.24 (not for interpolate)")
    p.add_argument("--batch", type=positive_int, help="samples per input image (default 1; inpaint/colorize/superres/stroke)")
    p.add_argument("--patch-size", type=positive_int, default=8, help="superres: upscaling factor (default 8)")
    p.add_argument("--alphas", type=float_list, default=list(DEFAULT_ALPHAS), help="interpolate: comma-separated")
    p.add_argument("--class-labels", type=int_list, help="one label, or one per image, comma-separated")
    p.add_argument("--seed", type=int_list, help="a seed, or one per sample (interpolate: two seeds, one per endpoint)")
    add_rng(p)
    p.add_argument("--no-resize", action="store_true", help="reject inputs of the wrong size instead of resizing them")
    p.add_argument("--out", type=Path, default=Path("outputs/edit.png"), help="grid PNG to write")
    p.add_argument("--scale", type=positive_int, default=1, help="enlarge the grid by this integer factor (nearest)")
    add_runtime(p)


def _before_images(method: str, pipe, image01: np.ndarray | None, mask: np.ndarray | None, patch: int) -> np.ndarray:
    """What the model is given, as [B, S, S, 3] in [0, 1], for the left column."""
    from ..runtime import editing
    from ..runtime.images import to_model_space

    if method == "inpaint":
        y = editing.KeepPixels(mask).kept(to_model_space(image01))
    elif method == "colorize":
        y = editing.KeepLuma().gray(to_model_space(image01))
    elif method == "superres":
        y = editing.upsample(to_model_space(image01), patch)
    else:
        y = to_model_space(image01)
    return np.clip(y.transpose(0, 2, 3, 1) / 2 + 0.5, 0, 1)


def run(args) -> int:
    from ..runtime.editing import check_patch_size
    from ..runtime.images import broadcast_batch, load_images, load_masks
    from ..runtime.loading import load
    from ..runtime.postprocess import make_grid
    from .images import open_image, write_png

    method = args.method
    if method == "interpolate":
        if args.image is not None or args.mask is not None:
            raise ValueError("interpolate takes no --image or --mask (it interpolates between two seeds' noises)")
        if args.sigmas is not None:
            raise ValueError("interpolate takes --steps or --timesteps, not --sigmas")
    elif args.image is None:
        raise ValueError(f"{method} needs --image IN.png")
    if method == "inpaint" and args.mask is None:
        raise ValueError("inpaint needs --mask M.png (white = pixels to generate)")
    if args.mask is not None and method not in ("inpaint", "stroke"):
        raise ValueError(f"{method} takes no --mask")

    t0 = time.perf_counter()
    pipe = load(args.model, backend=args.backend, device=args.device, precision=args.precision)
    t_load = time.perf_counter() - t0
    s = pipe.sample_size
    resize = not args.no_resize
    seed = args.seed[0] if args.seed is not None and len(args.seed) == 1 else args.seed
    labels = args.class_labels
    sched = dict(num_inference_steps=args.steps, timesteps=args.timesteps)
    common = dict(seed=seed, rng=args.rng, output_type="np", **sched)

    t1 = time.perf_counter()
    if method == "interpolate":
        if labels is not None and len(labels) == 1:
            labels = labels[0]
        after = pipe.interpolate(args.alphas, class_labels=labels, **common).images
        grid = make_grid(after, cols=len(after))
        n = len(after)
    else:
        p = check_patch_size(args.patch_size, s) if method == "superres" else args.patch_size
        if method == "superres":
            img = open_image(args.image, "--image")
            if img.size == (s, s) and p > 1:
                logger.info("%s is full size; averaging it down by %d to the low-resolution input", args.image, p)
                img = img.convert("RGB").reduce(p)
            image01 = load_images(img, "--image", s // p, resize)
        else:
            image01 = load_images(open_image(args.image, "--image"), "--image", s, resize)
        arrays = {"--image": image01}
        if args.mask is not None:
            arrays["--mask"] = load_masks(open_image(args.mask, "--mask"), "--mask", s, resize)
        b, arrays = broadcast_batch(arrays, args.batch)
        image01, mask = arrays["--image"], arrays.get("--mask")
        if labels is not None and len(labels) == 1 and b > 1:
            labels = labels * b
        common.update(class_labels=labels, sigmas=args.sigmas, resize=False)
        if method == "inpaint":
            after = pipe.inpaint(image01, mask, **common).images
        elif method == "colorize":
            after = pipe.colorize(image01, **common).images
        elif method == "superres":
            after = pipe.super_resolve(image01, patch_size=p, **common).images
        else:
            after = pipe.edit(image01, mask, **common).images
        before = _before_images(method, pipe, image01, mask, p)
        pairs = np.stack([before, after], axis=1).reshape(-1, s, s, 3)
        grid = make_grid(pairs, cols=2)
        n = b
    t_edit = time.perf_counter() - t1
    write_png(args.out, grid, scale=args.scale)
    print(
        f"wrote {args.out} ({method}, {n} image{'s' if n != 1 else ''}, {pipe.backend.name}/{pipe.backend.device}): "
        f"load {t_load:.2f} s, edit {t_edit:.3f} s"
    )
    return 0

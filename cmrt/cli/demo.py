"""`cmrt demo` (what `make demo` runs): build the default model's engine folder, write labelled
grids at 1 and 2 steps. It builds (torch) before it generates, so it is a command, not runtime.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..engine.models import DEFAULT_MODEL, resolve_model
from ..engine.paths import engine_root

HELP = "build the default model and write sample grids (what `make demo` runs)"

logger = logging.getLogger(__name__)


@dataclass
class DemoResult:
    engine_dir: Path
    build_seconds: float
    load_seconds: float
    grids: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    images: int = 0


def _labels_and_cols(num_classes: int | None, per_class: int) -> tuple[np.ndarray | None, int]:
    if num_classes is not None and num_classes <= 10:
        # one row per class: row c holds `per_class` samples of class c
        return np.repeat(np.arange(num_classes), per_class), per_class
    return None, per_class


def _generate_chunked(pipe, labels, total: int, seed: int, **schedule) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, total, pipe.max_batch):
        n = min(pipe.max_batch, total - start)
        chunk = None if labels is None else labels[start : start + n]
        if chunk is None and pipe.num_classes is not None:
            chunk = rng.integers(0, pipe.num_classes, size=n)
        out.append(pipe(batch_size=n, class_labels=chunk, generator=rng, output_type="np", **schedule).images)
    return np.concatenate(out)


def run_demo(model: str, engines: Path, out: Path, per_class: int = 8, seed: int = 0) -> DemoResult:
    from ..build.folder import build_engine_folder
    from ..runtime.loading import load
    from ..runtime.postprocess import make_grid
    from .images import write_png

    source = resolve_model(model)
    t0 = time.perf_counter()
    folder = build_engine_folder(model, out=Path(engines) / source.slug)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    pipe = load(folder)
    t_load = time.perf_counter() - t0
    res = DemoResult(engine_dir=folder, build_seconds=t_build, load_seconds=t_load)
    labels, cols = _labels_and_cols(pipe.num_classes, per_class)
    total = len(labels) if labels is not None else per_class
    two_step = source.default_timesteps
    schedules = {"1step": {"num_inference_steps": 1},
                 "2step": {"timesteps": list(two_step)} if two_step else {"num_inference_steps": 2}}
    scale = max(1, 128 // pipe.sample_size)
    for name, sched in schedules.items():
        t0 = time.perf_counter()
        images = _generate_chunked(pipe, labels, total, seed, **sched)
        res.seconds[name] = time.perf_counter() - t0
        path = Path(out) / f"{source.slug}-{name}.png"
        write_png(path, make_grid(images, cols=cols), scale=scale)
        res.grids[name] = path
        res.images += len(images)
    return res


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help=HELP)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--engines", type=Path, default=None, help="folder holding engine folders (default $CMRT_ENGINE_DIR, else engines)")
    p.add_argument("--out", type=Path, default=Path("outputs"), help="folder for the PNG grids")
    p.add_argument("--per-class", type=int, default=8, help="samples per class (per row)")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    r = run_demo(args.model, args.engines or engine_root(), args.out, per_class=args.per_class, seed=args.seed)
    print(f"engine folder {r.engine_dir} (build/reuse {r.build_seconds:.1f} s, load {r.load_seconds:.2f} s)")
    for name, path in r.grids.items():
        n = r.images // len(r.grids)
        print(f"{name}: wrote {path}  ({n} images in {r.seconds[name]:.2f} s, {r.seconds[name] / n * 1000:.1f} ms/image)")
    return 0

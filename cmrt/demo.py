"""`make demo`: build the default model's engine folder, generate labelled grids at 1 and 2 steps.

Kept out of the runtime package: it builds (torch) before it generates.
"""
from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._atomic import write_bytes_atomic
from .registry import resolve_model

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


def save_png(array_u8: np.ndarray, path: Path, scale: int = 1) -> None:
    from PIL import Image

    img = Image.fromarray(array_u8)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())


def run_demo(model: str, engines: Path, out: Path, per_class: int = 8, seed: int = 0) -> DemoResult:
    from .engine.build import build_engine_folder
    from .runtime import load
    from .runtime.postprocess import make_grid

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
        save_png(make_grid(images, cols=cols), path, scale=scale)
        res.grids[name] = path
        res.images += len(images)
    return res

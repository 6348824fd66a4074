"""Model space [-1, 1] to user images, exactly as diffusers' `postprocess_image` does it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .scheduler import clip_ufunc

OUTPUT_TYPES = ("pil", "np")


@dataclass
class PipelineOutput:
    """`images`: a list of PIL images, or float32 [B, H, W, 3] in [0, 1] for output_type='np'."""

    images: Any


def to_unit_range(sample: np.ndarray, scratch: bool = False) -> np.ndarray:
    """[B, C, H, W] in [-1, 1] -> float32 [B, H, W, C] in [0, 1]; `scratch` computes in `sample`'s memory."""
    if scratch and sample.dtype == np.float32 and sample.flags.writeable:
        x = np.divide(sample, np.float32(2), out=sample)
        x += np.float32(0.5)
        clip_ufunc(x, np.float32(0.0), np.float32(1.0), out=x)
    else:
        x = np.clip(sample / np.float32(2) + np.float32(0.5), 0.0, 1.0)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1), dtype=np.float32)


def to_pil(images: np.ndarray) -> list:
    from PIL import Image

    u8 = (images * 255).round().astype(np.uint8)
    if u8.shape[-1] == 1:
        return [Image.fromarray(im.squeeze(-1), mode="L") for im in u8]
    return [Image.fromarray(im) for im in u8]


def postprocess(sample: np.ndarray, output_type: str, scratch: bool = False):
    images = to_unit_range(sample, scratch=scratch)
    if output_type == "np":
        return images
    return to_pil(images)


# The most pixels a picture written by cmrt (a grid, an enlarged grid) may have: 2**28 is
# 0.8 GB of uint8 RGB, far beyond any grid of a batch; larger requests are mistakes.
MAX_PICTURE_PIXELS = 2**28


def check_picture_size(height: int, width: int, hint: str) -> None:
    """Refuse a picture over MAX_PICTURE_PIXELS before it is allocated; `hint` says what to change."""
    if height * width > MAX_PICTURE_PIXELS:
        raise ValueError(
            f"the picture would be {width}x{height} pixels, over cmrt's limit of {MAX_PICTURE_PIXELS:,} (2**28); {hint}"
        )


def make_grid(images: np.ndarray, cols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile float [B, H, W, C] images into one uint8 [rows*H, cols*W, C] picture; `cols` None: square."""
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
    b, h, w, c = images.shape
    if cols is None:
        cols = int(np.ceil(np.sqrt(b)))
    elif isinstance(cols, bool) or not isinstance(cols, (int, np.integer)) or cols < 1:
        raise ValueError(f"cols must be an integer >= 1 (or None for a square grid), got {cols!r}")
    rows = int(np.ceil(b / cols))
    check_picture_size(rows * (h + pad) + pad, cols * (w + pad) + pad, f"use fewer columns (cols {cols} for {b} images)")
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    u8 = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    for i in range(b):
        r, q = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y : y + h, x : x + w] = u8[i]
    return grid

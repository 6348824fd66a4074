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


def make_grid(images: np.ndarray, cols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile float [B, H, W, C] images into one uint8 [rows*H, cols*W, C] picture."""
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
    b, h, w, c = images.shape
    cols = cols or int(np.ceil(np.sqrt(b)))
    rows = int(np.ceil(b / cols))
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    u8 = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    for i in range(b):
        r, q = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y : y + h, x : x + w] = u8[i]
    return grid

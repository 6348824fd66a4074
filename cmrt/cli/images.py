"""The commands' pictures: the one PNG writer (an image array to a file, atomically), and
input images opened with their size checked from the header before any pixel is decoded."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..engine.atomic import write_bytes_atomic
from ..runtime.images import check_image_size
from ..runtime.postprocess import check_picture_size


def write_png(path: str | Path, image_u8: np.ndarray, scale: int = 1) -> Path:
    """Write uint8 [H, W] or [H, W, C] as a PNG, enlarged `scale` times (nearest); returns the path."""
    from PIL import Image

    if image_u8.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image_u8.dtype}")
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    h, w = image_u8.shape[:2]
    check_picture_size(h * scale, w * scale, f"use a smaller --scale than {scale}")
    if scale > 1:
        image_u8 = np.repeat(np.repeat(image_u8, scale, axis=0), scale, axis=1)
    buf = io.BytesIO()
    Image.fromarray(image_u8).save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)


def open_image(path: str | Path, option: str):
    """A lazily opened PIL image for `option` (e.g. "--image"); only its header has been read."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise ValueError(f"{option} {path}: {e}") from e
    check_image_size(f"{option} {path}", *img.size)
    return img

"""The one PNG writer of the commands: an image array to a file, atomically."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..engine.atomic import write_bytes_atomic


def write_png(path: str | Path, image_u8: np.ndarray, scale: int = 1) -> Path:
    """Write uint8 [H, W] or [H, W, C] as a PNG, enlarged `scale` times (nearest); returns the path."""
    from PIL import Image

    if image_u8.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image_u8.dtype}")
    if scale > 1:
        image_u8 = np.repeat(np.repeat(image_u8, scale, axis=0), scale, axis=1)
    buf = io.BytesIO()
    Image.fromarray(image_u8).save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)

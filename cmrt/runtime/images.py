"""User images and masks in, model-space arrays out (for the zero-shot editing methods).

Images are PIL images, or numpy arrays [H, W, 3] / [B, H, W, 3] (also [.., 1] or [H, W]
grayscale) holding floats in [0, 1] or uint8 in 0..255; a list of either is a batch.
Masks are PIL images (white = True) or boolean arrays [H, W] / [B, H, W]; True marks the
pixels to GENERATE (diffusers' convention). A boolean [H, W, 3] / [B, H, W, 3] mask (one
value per RGB channel) is read as one mask per image when its channels agree. Everything
that does not fit raises a ValueError/TypeError that names the argument. Pillow is imported
lazily, torch never.

No image side may exceed MAX_IMAGE_SIDE pixels: inputs are resized to the model's size (at
most 256 for the openai models), and a larger one costs memory before it is resized (a
highly compressible 9000 x 9000 PNG of 99 KB is 0.97 GB as float32 RGB). PIL images are
checked from their header (`Image.open` reads only the header; `.size` is known before any
pixel is decoded).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MAX_IMAGE_SIDE = 4096  # 4096 x 4096 RGB is 0.2 GB as float32; larger inputs are resized by the caller first


def check_image_size(name: str, width: int, height: int) -> None:
    """Refuse an image with a side over MAX_IMAGE_SIDE, before its pixels are decoded or copied."""
    if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE:
        raise ValueError(
            f"{name} is {width}x{height} pixels; cmrt takes images up to {MAX_IMAGE_SIDE} pixels a side "
            "(they are resized to the model's size anyway): downscale it first"
        )


def _is_pil(obj: Any) -> bool:
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "getbands") and hasattr(obj, "resize")


def _check_size(name: str, size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size for {name} must be a positive integer, got {size!r}")
    return int(size)


def _check_resize(resize: Any) -> bool:
    if not isinstance(resize, (bool, np.bool_)):
        raise TypeError(f"resize must be True or False, got {resize!r}")
    return bool(resize)


def _pil_to_array(img: Any, name: str) -> np.ndarray:
    """Any PIL mode -> float32 [H, W, 3] in [0, 1]."""
    check_image_size(name, *img.size)
    if img.mode in ("I", "I;16", "F"):
        raise ValueError(f"PIL images in mode {img.mode!r} are not supported; convert to 'RGB' or 'L' first")
    rgb = img.convert("RGB")
    return np.asarray(rgb, dtype=np.float32) / np.float32(255)


def _array_to_nhwc(name: str, arr: np.ndarray) -> np.ndarray:
    """A numpy image array -> float32 [B, H, W, 3] in [0, 1] (values checked, not clipped)."""
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or arr.dtype == np.uint8):
        raise TypeError(f"{name} must hold floats in [0, 1] or uint8 values, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[None, :, :, None]
    elif arr.ndim == 3:
        if arr.shape[-1] not in (1, 3):
            raise ValueError(
                f"{name} has shape {arr.shape}; expected [H, W, 3] or [B, H, W, 3] (RGB last; drop any alpha channel)"
            )
        arr = arr[None]
    elif arr.ndim == 4:
        if arr.shape[-1] not in (1, 3):
            raise ValueError(f"{name} has shape {arr.shape}; expected [B, H, W, 3] with RGB last (drop any alpha channel)")
    else:
        raise ValueError(f"{name} has {arr.ndim} dimensions (shape {arr.shape}); expected [H, W, 3] or [B, H, W, 3]")
    if 0 in arr.shape:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    check_image_size(name, arr.shape[2], arr.shape[1])
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / np.float32(255)
    else:
        out = arr.astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise ValueError(f"{name} contains NaN or infinite values")
        lo, hi = float(out.min()), float(out.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{name} values must be in [0, 1] (float) or 0..255 (uint8), got range [{lo:.4g}, {hi:.4g}]")
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return out


def _resize_float(img: np.ndarray, size: int) -> np.ndarray:
    """[H, W, C] float32 -> [size, size, C], bicubic per channel (PIL mode 'F'), clipped to [0, 1]."""
    from PIL import Image

    chans = [
        np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c]), mode="F").resize((size, size), Image.BICUBIC))
        for c in range(img.shape[-1])
    ]
    return np.clip(np.stack(chans, axis=-1), 0.0, 1.0).astype(np.float32)


def _load_list(load, items, name: str, size, resize: bool, what: str, hint: str) -> np.ndarray:
    """A list of images or masks, each loaded by `load` under the name `name[i]`, as one batch."""
    if len(items) == 0:
        raise ValueError(f"{name} is an empty list")
    parts = [load(item, f"{name}[{i}]", size, resize) for i, item in enumerate(items)]
    shapes = {p.shape[1:] for p in parts}
    if len(shapes) != 1:
        raise ValueError(f"the {what} in {name} have different sizes {sorted(shapes)}{hint}")
    return np.concatenate(parts)


def _checked_args(value: Any, name: str, size: Any, resize: Any, required: str) -> tuple[int | None, bool]:
    """What `load_images` and `load_masks` check first: `size`, `resize`, and that `value` is there."""
    resize = _check_resize(resize)
    if size is not None:
        size = _check_size(name, size)
    if value is None:
        raise TypeError(f"{name} is required: {required}")
    return size, resize


def _is_size(batch: np.ndarray, name: str, size: int | None, resize: bool) -> bool:
    """Whether `batch` [B, H, W, ...] is already `size` x `size` (or no size is asked for);
    False means resize it, and a ValueError naming `name` is raised when that is not allowed."""
    h, w = batch.shape[1:3]
    if size is None or (h, w) == (size, size):
        return True
    if not resize:
        raise ValueError(f"{name} is {w}x{h} but this needs {size}x{size}; resize it first or pass resize=True (CLI: drop --no-resize)")
    return False


def load_images(image: Any, name: str = "image", size: int | None = None, resize: bool = True) -> np.ndarray:
    """`image` as float32 [B, size, size, 3] in [0, 1].

    A size other than `size` x `size` is resized (bicubic) when `resize` is true, and is a
    ValueError naming `name` otherwise. `size=None` keeps the input size (all images must agree).
    """
    size, resize = _checked_args(image, name, size, resize, "a PIL image or a numpy array [H, W, 3] / [B, H, W, 3] in [0, 1]")
    if isinstance(image, (list, tuple)):
        return _load_list(load_images, image, name, size, resize, "images", "; pass a size or resize them")
    if _is_pil(image):
        batch = _pil_to_array(image, name)[None]
    elif isinstance(image, np.ndarray):
        batch = _array_to_nhwc(name, image)
    else:
        raise TypeError(
            f"{name} must be a PIL image, a numpy array [H, W, 3] / [B, H, W, 3] in [0, 1], or a list of them; "
            f"got {type(image).__name__}"
        )
    if _is_size(batch, name, size, resize):
        return np.ascontiguousarray(batch)
    h, w = batch.shape[1:3]
    if h != w:
        logger.warning("%s is %dx%d (not square); it is stretched to %dx%d", name, w, h, size, size)
    else:
        logger.info("%s resized from %dx%d to %dx%d", name, w, h, size, size)
    return np.stack([_resize_float(im, size) for im in batch])


def load_masks(mask: Any, name: str = "mask", size: int | None = None, resize: bool = True) -> np.ndarray:
    """`mask` as bool [B, size, size]; True = pixels to generate. Resizing is nearest-neighbour."""
    size, resize = _checked_args(mask, name, size, resize, "a PIL image (white = generate) or a boolean numpy array [H, W]")
    if isinstance(mask, (list, tuple)):
        return _load_list(load_masks, mask, name, size, resize, "masks", "")
    if _is_pil(mask):
        check_image_size(name, *mask.size)
        batch = (np.asarray(mask.convert("L")) > 127)[None]
    elif isinstance(mask, np.ndarray):
        if mask.dtype != np.bool_:
            raise TypeError(
                f"{name} must be a boolean array (True = generate) or a PIL image, got dtype {mask.dtype}; "
                f"use e.g. `{name} > 0.5`"
            )
        if mask.ndim in (3, 4) and mask.shape[-1] in (1, 3):  # [.., H, W, 1 or 3]: channels, not a width
            if mask.shape[-1] == 3 and not (np.array_equal(mask[..., 0], mask[..., 1])
                                            and np.array_equal(mask[..., 0], mask[..., 2])):
                raise ValueError(
                    f"{name} has shape {mask.shape} with channels that differ; a mask has one value per pixel: "
                    f"pass {name}[..., 0] or {name}.any(axis=-1)"
                )
            mask = mask[..., 0]
        if mask.ndim == 2:
            batch = mask[None]
        elif mask.ndim == 3:
            batch = mask
        else:
            raise ValueError(f"{name} has shape {mask.shape}; expected [H, W] or [B, H, W]")
        if 0 in batch.shape:
            raise ValueError(f"{name} is empty (shape {mask.shape})")
        check_image_size(name, batch.shape[2], batch.shape[1])
    else:
        raise TypeError(f"{name} must be a PIL image or a boolean numpy array [H, W] / [B, H, W], got {type(mask).__name__}")
    if _is_size(batch, name, size, resize):
        return np.ascontiguousarray(batch)
    h, w = batch.shape[1:3]
    from PIL import Image

    out = [
        np.asarray(Image.fromarray(m.astype(np.uint8) * 255, mode="L").resize((size, size), Image.NEAREST)) > 127
        for m in batch
    ]
    logger.info("%s resized from %dx%d to %dx%d (nearest)", name, w, h, size, size)
    return np.stack(out)


def broadcast_batch(arrays: dict[str, np.ndarray], batch_size: int | None) -> tuple[int, dict[str, np.ndarray]]:
    """Give every array (batch on axis 0) the same batch: each has 1 or B entries; B from `batch_size` or the largest."""
    sizes = {k: int(v.shape[0]) for k, v in arrays.items()}
    target = batch_size if batch_size is not None else max(sizes.values())
    out = {}
    for k, v in arrays.items():
        n = sizes[k]
        if n == target:
            out[k] = v
        elif n == 1:
            out[k] = np.repeat(v, target, axis=0)
        else:
            what = f"batch_size {target}" if batch_size is not None else f"{max(sizes, key=sizes.get)} ({target})"
            raise ValueError(f"{k} holds {n} images, which does not match {what}; give 1 or {target}")
    return target, out


def to_model_space(images: np.ndarray) -> np.ndarray:
    """float [B, H, W, 3] in [0, 1] -> float32 [B, 3, H, W] in [-1, 1]."""
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected float images [B, H, W, 3], got {getattr(images, 'shape', type(images).__name__)}")
    x = images.astype(np.float32).transpose(0, 3, 1, 2) * np.float32(2) - np.float32(1)
    return np.ascontiguousarray(x)

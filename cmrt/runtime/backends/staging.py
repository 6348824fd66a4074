"""What one upload holds for a generation through a step graph on a GPU: the layout of a staging buffer.

A GPU backend that runs every step of a generation on the device (TensorRT, ONNX Runtime CUDA)
copies everything the steps need to the device in one host-to-device copy: x_T, the class
labels, each step's timesteps, each step's constants (`STEP_COEF_ORDER`) and each step's
renoising term. `GenerationLayout` lays them out in one buffer (each part 256-byte aligned, as
TensorRT wants its tensor addresses), gives numpy views of a host copy of it, the device address
of each part, and packs a generation's arrays into the views after checking their shapes.
Pure: numpy only.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ...engine.io_spec import STEP_COEF_ORDER
from .cuda import aligned_layout

# the parts indexed by step, and each part's dtype
_PER_STEP = ("timesteps", "coefs", "noise")


class GenerationLayout:
    """The staging layout of a generation of `steps` steps at `batch`, with or without renoising terms (`noisy`)."""

    def __init__(self, batch: int, steps: int, noisy: bool, sample_tail: Sequence[int], conditional: bool):
        if batch < 1 or steps < 1:
            raise ValueError(f"a generation needs batch >= 1 and steps >= 1, got batch {batch}, {steps} steps")
        self.batch, self.steps, self.noisy, self.conditional = int(batch), int(steps), bool(noisy), bool(conditional)
        tail = tuple(int(d) for d in sample_tail)
        self.shapes = {
            "x": ((batch, *tail), np.dtype(np.float32)),
            "labels": ((batch,) if conditional else (0,), np.dtype(np.int64)),
            "timesteps": ((steps, batch), np.dtype(np.float32)),
            "coefs": ((steps, len(STEP_COEF_ORDER)), np.dtype(np.float32)),
            "noise": ((steps, batch, *tail) if noisy else (0,), np.dtype(np.float32)),
        }
        self.sizes = {n: int(np.prod(s, dtype=np.int64)) * d.itemsize for n, (s, d) in self.shapes.items()}
        offsets, self.nbytes = aligned_layout(list(self.sizes.values()))
        self.offsets = dict(zip(self.shapes, offsets))

    def part_bytes(self, name: str) -> int:
        """Bytes of `name`; of one step's share for the per-step parts."""
        return self.sizes[name] // self.steps if name in _PER_STEP else self.sizes[name]

    def offset(self, name: str, step: int = 0) -> int:
        """Byte offset of `name` in the buffer (of step `step`'s share for the per-step parts)."""
        if not 0 <= step < self.steps:
            raise IndexError(f"step {step} of a {self.steps}-step generation")
        return self.offsets[name] + (step * self.part_bytes(name) if name in _PER_STEP else 0)

    def views(self, buffer: np.ndarray) -> dict[str, np.ndarray]:
        """Typed views of each part of `buffer` (uint8, at least `nbytes`): where `fill` writes."""
        if buffer.dtype != np.uint8 or buffer.nbytes < self.nbytes:
            raise ValueError(f"a staging buffer needs {self.nbytes} bytes of uint8, got {buffer.dtype} {buffer.nbytes}")
        return {n: buffer[self.offsets[n]:self.offsets[n] + self.sizes[n]].view(d).reshape(s)
                for n, (s, d) in self.shapes.items()}

    def fill(self, views: dict[str, np.ndarray], x: np.ndarray, labels: np.ndarray | None,
             timesteps: Sequence[np.ndarray], coefs: np.ndarray, renoise: np.ndarray | None) -> None:
        """Check a generation's arrays against the layout and copy them into `views` (from `views`)."""
        b = self.batch
        _put(views["x"], x, "the sample")
        if self.conditional:
            if labels is None:
                raise ValueError("this model needs class_labels")
            labels = np.asarray(labels)
            if labels.shape != (b,) or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"class_labels must be {b} integers, got {labels.dtype} {labels.shape}")
            np.copyto(views["labels"], labels, casting="same_kind")
        elif labels is not None:
            raise ValueError("class_labels were given but this model is unconditional")
        if len(timesteps) != self.steps:
            raise ValueError(f"{len(timesteps)} timestep arrays for {self.steps} steps")
        for i, t in enumerate(timesteps):
            _put(views["timesteps"][i], t, f"timesteps[{i}]")
        _put(views["coefs"], coefs, "coefs", f" (steps, {len(STEP_COEF_ORDER)})")
        if self.noisy:
            if renoise is None:
                raise ValueError("this generation renoises: renoise [steps, B, C, H, W] is needed")
            _put(views["noise"], renoise, "renoise")
        elif renoise is not None:
            raise ValueError("renoising terms were given to a generation laid out without them")


def _put(view: np.ndarray, value, what: str, layout: str = "") -> None:
    """Copy `value` into its staging `view`, or a ValueError naming `what` when the shapes differ."""
    value = np.asarray(value)
    if value.shape != view.shape:
        raise ValueError(f"{what} has shape {value.shape}, expected {view.shape}{layout}")
    np.copyto(view, value, casting="same_kind")

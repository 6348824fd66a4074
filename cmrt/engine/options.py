"""What an engine folder is built with: recorded in its manifest and keyed into its build key.

Torch-free, so the CLI declares its `cmrt build` choices from here without importing the builder.
"""
from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass
from typing import Any

from .io_spec import PRECISIONS
from .winograd import DEFAULT_BAND_MIB, DEFAULT_F4_MIN_SPATIAL, DEFAULT_MIN_SPATIAL, F4, PER_CALL_CHOICES

# The CPU graph with Winograd 3x3 convolutions (cmrt/build/winograd.py): "auto" keeps it only
# where it measures faster than the plain graph on the build machine, "always" keeps it,
# "never" does not make it.
WINOGRAD_MODES = ("auto", "always", "never")
# What `cmrt build --backend` adds to the ONNX folder: "onnxruntime" nothing, "tensorrt" a
# validated TensorRT engine (an error where TensorRT cannot run), "auto" the engine where it can.
BUILD_BACKENDS = ("auto", "onnxruntime", "tensorrt")


@dataclass(frozen=True)
class BuildOptions:
    precisions: tuple[str, ...] = PRECISIONS
    opset: int = 17
    min_batch: int = 1
    opt_batch: int = 4
    max_batch: int = 16
    winograd: str = "auto"
    # The Winograd graph's map-size thresholds: the smallest map rewritten, and the smallest
    # rewritten with F(4x4) tiles (smaller ones get F(2x2)). Raising them trades speed for
    # filter memory (docs/engine-folder.md has the measured trade).
    winograd_min_size: int = DEFAULT_MIN_SPATIAL
    winograd_f4_min_size: int = DEFAULT_F4_MIN_SPATIAL
    # Which tiles' filters the Winograd graph transforms at every call instead of storing them
    # ("none", "f4", "all"). "all" by default: stored filters hold 4x (F(4x4)) or 1.8x (F(2x2)) the
    # 3x3 weights, which put the graph's memory above diffusers', and the transform's multiply-adds
    # cost a few percent of warm latency (docs/engine-folder.md has both measured).
    winograd_per_call: str = "all"
    # Convolutions whose transformed input tiles exceed this many MiB per image run in bands of
    # rows: less activation memory on large maps, some speed (docs/engine-folder.md); 0: none.
    winograd_band_mib: int = DEFAULT_BAND_MIB

    def __post_init__(self) -> None:
        if self.winograd_per_call not in PER_CALL_CHOICES:
            raise ValueError(f"winograd_per_call must be one of {tuple(PER_CALL_CHOICES)}, got {self.winograd_per_call!r}")
        if self.winograd not in WINOGRAD_MODES:
            raise ValueError(f"winograd must be one of {WINOGRAD_MODES}, got {self.winograd!r}")
        if not self.precisions or any(p not in PRECISIONS for p in self.precisions):
            raise ValueError(f"precisions must be a non-empty subset of {PRECISIONS}, got {self.precisions}")
        for name in ("opset", "min_batch", "opt_batch", "max_batch", "winograd_min_size", "winograd_f4_min_size", "winograd_band_mib"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"{name} must be an integer, got {v!r}")
        for name in ("winograd_min_size", "winograd_f4_min_size"):
            if not F4.m <= getattr(self, name) <= 1 << 16:
                raise ValueError(f"{name} must be a map side between {F4.m} and {1 << 16} pixels, got {getattr(self, name)}")
        if not 0 <= self.winograd_band_mib <= 1 << 20:
            raise ValueError(f"winograd_band_mib must be between 0 (no bands) and {1 << 20} MiB, got {self.winograd_band_mib}")
        if not 14 <= self.opset <= 20:
            raise ValueError(f"opset must be between 14 and 20 (17 is tested), got {self.opset}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                f"need 1 <= min_batch <= opt_batch <= max_batch, got {self.min_batch}, {self.opt_batch}, {self.max_batch}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["precisions"] = sorted(self.precisions)
        if d["winograd_per_call"] == "none":  # as folders built before the option record it: by its absence
            del d["winograd_per_call"]
        if d["winograd_band_mib"] == DEFAULT_BAND_MIB:  # the default, by its absence (EXPORT_RECIPE 7 on: folders before had no bands)
            del d["winograd_band_mib"]
        return d

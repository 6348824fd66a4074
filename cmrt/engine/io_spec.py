"""The UNet's side of the engine-folder contract: its I/O names and dtypes, its precisions,
the tolerances its graphs are held to, and inputs that look like sampling.

Declared once here and used by the export (which names the graph's tensors), every backend
(which feeds them), the TensorRT build (profiles over the batch axis) and the validations.
Every graph has fp32 inputs and outputs whatever its inner precision, so all backends are
driven identically and the timestep (t = 250 ln sigma, about 1095.5 at sigma = 80) is never
rounded to fp16 before the UNet's own embedding sees it.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

SAMPLE = "sample"
TIMESTEP = "timestep"
CLASS_LABELS = "class_labels"
OUTPUT = "model_output"
INPUT_NAMES = (SAMPLE, TIMESTEP, CLASS_LABELS)

# The step graph (cmrt/build/step_graph.py): the UNet with one whole consistency step around
# it, so that a backend can run a step, or every step, without the host. Its `x` replaces the
# UNet's `sample` (which the graph computes as x / divisor); `timestep` and `class_labels` are
# the UNet's. The numpy scheduler computes every input: the constants, and the renoising term
# (z * s_noise) * sqrt(sigma_next^2 - sigma_min^2), zeros for a one-step schedule.
STEP_X = "x"  # the current sample x_t, unscaled, float32 [B, C, S, S]
STEP_COEFS = "step_coefs"  # float32 [len(STEP_COEF_ORDER)]: the step's scalar constants
NOISE_TERM = "noise_term"  # float32 [B, C, S, S], added after the clip
STEP_OUTPUT = "x_next"  # clip(c_skip * x + c_out * F, clip_min, clip_max) + noise_term
# The constants in `step_coefs`, in order. Clip bounds are inputs, not graph constants, so one
# graph serves clip_denoised=True (-1, 1) and False (-inf, inf: the identity, bit for bit).
STEP_COEF_ORDER = ("divisor", "c_skip", "c_out", "clip_min", "clip_max")
STEP_INPUT_NAMES = (STEP_X, TIMESTEP, CLASS_LABELS, STEP_COEFS, NOISE_TERM)
# The inputs with a batch axis (the first), in either graph: a batch split into calls splits these.
BATCHED_INPUTS = frozenset((SAMPLE, TIMESTEP, CLASS_LABELS, STEP_X, NOISE_TERM))
# Constants under which a step graph's `model_output` is a plain UNet call on `x` (x / 1 is x
# exactly), so that a backend serves plain calls (zero-shot editing) through its step graph.
UNET_ONLY_COEFS = {"divisor": 1.0, "c_skip": 0.0, "c_out": 1.0, "clip_min": -np.inf, "clip_max": np.inf}

# The graphs a folder may hold, by inner precision.
PRECISIONS = ("fp32", "fp16")

# Max abs error of a graph's UNet output against its reference, on `sample_inputs`:
# "onnx" is an export in ONNX Runtime (CPU) against the PyTorch fp32 UNet; "tensorrt" a
# TensorRT engine against ONNX Runtime fp32. fp16 gets the same bound on both.
TOLERANCE = {
    "onnx": {"fp32": 1e-4, "fp16": 5e-2},
    "tensorrt": {"fp32": 1e-3, "fp16": 5e-2},
}
# Max abs error of a step graph's `x_next` against the numpy step (scheduler.after_unet) on its
# plain graph's output, in ONNX Runtime (CPU): the same float32 operations in the same order,
# so any difference beyond float rounding means the graph computes something else.
STEP_TOLERANCE = 1e-5


def io_spec(unet: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's `inputs` / `outputs` for a UNet described by `sample_size`,
    `in_channels`, `out_channels` and `num_class_embeds` (None: unconditional)."""
    s, c = int(unet["sample_size"]), int(unet["in_channels"])
    inputs = [
        {"name": SAMPLE, "dtype": "float32", "shape": ["batch", c, s, s]},
        {"name": TIMESTEP, "dtype": "float32", "shape": ["batch"]},
    ]
    if unet.get("num_class_embeds") is not None:
        inputs.append({"name": CLASS_LABELS, "dtype": "int64", "shape": ["batch"]})
    outputs = [{"name": OUTPUT, "dtype": "float32", "shape": ["batch", int(unet["out_channels"]), s, s]}]
    return {"inputs": inputs, "outputs": outputs}


def step_io_spec(unet: Mapping[str, Any]) -> dict[str, Any]:
    """The step graph's `inputs` / `outputs` (it also returns the UNet output F, so one
    session on it serves plain UNet calls too)."""
    plain = io_spec(unet)
    sample, *rest = plain["inputs"]
    term = {**sample, "name": NOISE_TERM}
    inputs = [{**sample, "name": STEP_X}, *rest, {"name": STEP_COEFS, "dtype": "float32", "shape": [len(STEP_COEF_ORDER)]}, term]
    outputs = [{**plain["outputs"][0], "name": STEP_OUTPUT}, plain["outputs"][0]]
    return {"inputs": inputs, "outputs": outputs}


def feeds(sample: np.ndarray, timestep: np.ndarray, class_labels: np.ndarray | None) -> dict[str, np.ndarray]:
    """The backend contract's three arguments by tensor name (no labels for unconditional models)."""
    out = {SAMPLE: sample, TIMESTEP: timestep}
    if class_labels is not None:
        out[CLASS_LABELS] = class_labels
    return out


def step_feeds(
    x: np.ndarray, timestep: np.ndarray, class_labels: np.ndarray | None, coefs: np.ndarray, noise_term: np.ndarray
) -> dict[str, np.ndarray]:
    """A step graph's inputs by tensor name (no labels for unconditional models)."""
    out = {STEP_X: x, TIMESTEP: timestep, STEP_COEFS: coefs, NOISE_TERM: noise_term}
    if class_labels is not None:
        out[CLASS_LABELS] = class_labels
    return out


def sample_inputs(unet: Mapping[str, Any], scheduler: Mapping[str, Any], batch: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs that look like sampling, for validating a graph: standard-normal samples,
    timesteps t = 250 ln(sigma) uniform over the scheduler's [sigma_min, sigma_max], and
    valid class labels. Seeded, so a validation is repeatable."""
    rng = np.random.default_rng(seed)
    s, c = int(unet["sample_size"]), int(unet["in_channels"])
    lo, hi = float(scheduler["sigma_min"]), float(scheduler["sigma_max"])
    out = {
        SAMPLE: rng.standard_normal((batch, c, s, s)).astype(np.float32),
        TIMESTEP: rng.uniform(250 * np.log(lo), 250 * np.log(hi), size=batch).astype(np.float32),
    }
    if unet.get("num_class_embeds") is not None:
        out[CLASS_LABELS] = rng.integers(0, int(unet["num_class_embeds"]), size=batch).astype(np.int64)
    return out

"""Request logic shared by `cmrt serve` and `cmrt triton-repo`: validate, group, generate.

This module knows nothing about Triton: the Python-backend `model.py` hands it each
request's input arrays (Triton's shapes, with the batch dimension first) and turns what
it returns into responses. A request may carry several rows (samples); each row has a
seed, an optional class label and an optional step count.

Rows of all requests in one dynamic batch are grouped by schedule (and by whether the
label is given or drawn) and each group runs as one pipeline call with one seed per
sample, so a sample is exactly what a batch-1 call with its seed makes, whatever it was
batched with.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

INPUTS = ("seed", "class_label", "num_inference_steps")
OUTPUT = "image"
INPUT_DTYPES = {"seed": np.int64, "class_label": np.int64, "num_inference_steps": np.int32}


class RequestError(ValueError):
    """A bad request: served as an INVALID_ARG error (HTTP 400) with this message."""


@dataclass(frozen=True)
class ServeSettings:
    """What the server decides for every request.

    `timesteps`: explicit timesteps for requests that send no `num_inference_steps`
    (else `steps`, default 1). A request's `num_inference_steps` selects the scheduler's
    own schedule for that many steps, 1..`max_steps` (default: the model's
    num_train_timesteps). `rng`: "numpy" or "torch" (diffusers' `torch.manual_seed`).
    """

    steps: int | None = None
    timesteps: tuple[int, ...] | None = None
    max_steps: int | None = None
    rng: str = "numpy"

    def __post_init__(self):
        if self.steps is not None and self.timesteps is not None:
            raise ValueError("give either steps or timesteps as the server's default schedule, not both")
        if self.rng not in ("numpy", "torch"):
            raise ValueError(f"rng must be 'numpy' or 'torch', got {self.rng!r}")

    def to_params(self) -> dict[str, str]:
        """As Triton model-config parameters (strings)."""
        p = {"rng": self.rng}
        if self.steps is not None:
            p["steps"] = str(self.steps)
        if self.timesteps is not None:
            p["timesteps"] = ",".join(str(t) for t in self.timesteps)
        if self.max_steps is not None:
            p["max_steps"] = str(self.max_steps)
        return p

    @classmethod
    def from_params(cls, params: dict[str, str]) -> "ServeSettings":
        def opt_int(key):
            v = params.get(key, "")
            return int(v) if v != "" else None

        ts = params.get("timesteps", "")
        return cls(
            steps=opt_int("steps"),
            timesteps=tuple(int(t) for t in ts.split(",")) if ts else None,
            max_steps=opt_int("max_steps"),
            rng=params.get("rng", "numpy") or "numpy",
        )


@dataclass(frozen=True)
class Row:
    seed: int
    label: int | None
    steps: int | None  # None: the server's default schedule


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float [B, H, W, 3] in [0, 1] to uint8, rounded as the PIL output (and diffusers) does."""
    return (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)


class Handler:
    """Validates requests and generates their images on one `Pipeline`."""

    def __init__(self, pipe: Any, settings: ServeSettings | None = None):
        self.pipe = pipe
        self.settings = settings or ServeSettings()
        n_train = pipe.scheduler_config.num_train_timesteps
        self.max_steps = self.settings.max_steps or n_train
        if not 1 <= self.max_steps <= n_train:
            raise ValueError(f"max_steps must be in 1..{n_train} (the model's num_train_timesteps), got {self.max_steps}")
        # the default schedule is checked once, at start-up, not on every request
        self.default_schedule = pipe.schedule(self.settings.steps, self.settings.timesteps)

    # --- validation ---------------------------------------------------------------------
    def parse(self, inputs: dict[str, np.ndarray | None]) -> list[Row]:
        """One request's inputs (batch dimension first) to rows; `RequestError` names what is wrong."""
        seed = inputs.get("seed")
        if seed is None:
            raise RequestError("missing required input 'seed' (INT64, shape [1] per sample)")
        arrays = {}
        for name in INPUTS:
            a = inputs.get(name)
            if a is None:
                continue
            a = np.asarray(a)
            if a.dtype != INPUT_DTYPES[name]:
                raise RequestError(f"input '{name}' must be {np.dtype(INPUT_DTYPES[name]).name.upper()}, got {a.dtype.name.upper()}")
            if a.ndim != 2 or a.shape[1] != 1 or a.shape[0] < 1:
                raise RequestError(f"input '{name}' must have shape [batch, 1], got {list(a.shape)}")
            arrays[name] = a[:, 0]
        k = arrays["seed"].shape[0]
        for name, a in arrays.items():
            if a.shape[0] != k:
                raise RequestError(f"input '{name}' has {a.shape[0]} rows but 'seed' has {k}")
        seeds = arrays["seed"]
        if (seeds < 0).any():
            raise RequestError(f"seed must be >= 0, got {int(seeds[seeds < 0][0])}")
        labels = arrays.get("class_label")
        n = self.pipe.num_classes
        if labels is not None:
            if n is None:
                raise RequestError("class_label was sent but this model is unconditional (it has no classes): leave it out")
            bad = labels[(labels < 0) | (labels >= n)]
            if bad.size:
                raise RequestError(f"class_label {int(bad[0])} is out of range: this model has classes 0..{n - 1}")
        steps = arrays.get("num_inference_steps")
        if steps is not None:
            bad = steps[(steps < 1) | (steps > self.max_steps)]
            if bad.size:
                raise RequestError(f"num_inference_steps {int(bad[0])} is out of range: this server allows 1..{self.max_steps}")
        # a step count equal to the default schedule's joins the default group
        same = self.settings.timesteps is None and (self.settings.steps or 1)
        return [
            Row(
                seed=int(seeds[i]),
                label=None if labels is None else int(labels[i]),
                steps=None if steps is None or int(steps[i]) == same else int(steps[i]),
            )
            for i in range(k)
        ]

    # --- generation ---------------------------------------------------------------------
    def _call(self, rows: Sequence[Row]) -> np.ndarray:
        """One pipeline call for rows that share a schedule and label mode."""
        pipe = self.pipe
        steps = rows[0].steps
        if steps is None:
            kwargs = {"timesteps": list(self.settings.timesteps)} if self.settings.timesteps else {"num_inference_steps": self.settings.steps or 1}
        else:
            kwargs = {"num_inference_steps": steps}
        seeds = [r.seed for r in rows]
        labels = None if rows[0].label is None else [r.label for r in rows]
        pad = max(0, pipe.min_batch - len(rows))  # engines built with min_batch > 1
        if pad:
            seeds += [0] * pad
            labels = None if labels is None else labels + [0] * pad
        images = pipe(
            batch_size=len(seeds), seed=seeds, class_labels=labels, rng=self.settings.rng, output_type="np", **kwargs
        ).images
        return to_uint8(images[: len(rows)])

    def run(self, parsed: Sequence[list[Row] | Exception]) -> list[np.ndarray | Exception]:
        """Images [k, H, W, 3] uint8 per request, or the request's error (bad requests pass through)."""
        flat: dict[tuple, list[tuple[int, int, Row]]] = {}
        for ri, rows in enumerate(parsed):
            if isinstance(rows, Exception):
                continue
            for j, row in enumerate(rows):
                flat.setdefault((row.steps, row.label is None), []).append((ri, j, row))
        out: list[Any] = [p if isinstance(p, Exception) else [None] * len(p) for p in parsed]
        chunk = self.pipe.max_batch
        for key, members in flat.items():
            for c in range(0, len(members), chunk):
                part = members[c : c + chunk]
                try:
                    images = self._call([m[2] for m in part])
                except Exception as e:  # engine failure: these requests fail, the others are served
                    logger.exception("generation failed for %d samples (steps=%s)", len(part), key[0])
                    for ri, _, _ in part:
                        out[ri] = RuntimeError(f"generation failed: {e}")
                    continue
                for (ri, j, _), img in zip(part, images):
                    if not isinstance(out[ri], Exception):
                        out[ri][j] = img
        return [o if isinstance(o, Exception) else np.stack(o) for o in out]

    def groups(self, parsed: Sequence[list[Row] | Exception]) -> int:
        """How many pipeline calls `run` makes for these requests (for logs and tests)."""
        keys = {}
        for rows in parsed:
            if not isinstance(rows, Exception):
                for r in rows:
                    keys[(r.steps, r.label is None)] = keys.get((r.steps, r.label is None), 0) + 1
        return sum(-(-n // self.pipe.max_batch) for n in keys.values())

"""How many images one ONNX Runtime CPU call takes: measured at build time on the graph the CPU runs.

Why: a batch is worth running as one call only where it buys throughput. On a small model it
does (the GEMMs are too thin to use the cores at batch 1). On a large one, on a CPU, the GEMMs
already run at the machine's multiply-add rate at batch 1, so a bigger batch takes as long per
image, while its activations (and so the process's peak memory) grow with it. The build times
batch b against 2b, from 1 up to the folder's opt batch, and records the largest batch before
the time per image stops falling; the runtime then runs a larger request as consecutive calls
of at most that many images (`OnnxRuntimeBackend.batch_chunk`). docs/benchmarks.md has the
figures; `cmrt.load(..., batch_chunk=...)` overrides the choice on a machine unlike the build's.
"""
from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.io_spec import sample_inputs
from .cpu_timing import median_run_ms

logger = logging.getLogger(__name__)

# A batch of 2b is worth one call when its time per image is at least this much below b's.
MIN_BATCH_GAIN = 0.05


def candidate_batches(opt_batch: int, max_batch: int) -> list[int]:
    """1, 2, 4, ... up to the opt batch (at least 2), within max_batch: the batches timed."""
    top = min(max(opt_batch, 2), max_batch)
    sizes = [1]
    while sizes[-1] * 2 <= top:
        sizes.append(sizes[-1] * 2)
    return sizes


def choose_chunk(per_image_ms: dict[int, float], min_gain: float | None = None) -> int | None:
    """The largest batch b whose double is not at least `min_gain` (default MIN_BATCH_GAIN) faster per
    image, walking up from the smallest; None when every doubling pays (the whole batch in one call)."""
    min_gain = MIN_BATCH_GAIN if min_gain is None else min_gain
    sizes = sorted(per_image_ms)
    for b, twice in zip(sizes, sizes[1:]):
        if per_image_ms[twice] > (1 - min_gain) * per_image_ms[b]:
            return b
    return None


def measure_batching(graph: Path, extra: dict[str, np.ndarray] | None, unet: dict[str, Any], scheduler: dict[str, Any],
                     opt_batch: int, max_batch: int) -> dict[str, Any]:
    """Time `graph` (fed `extra` besides the UNet's inputs; `unet`: the manifest's UNet facts) at batch
    b and 2b, alternated, doubling from 1 while the time per image falls; the manifest's `batching` record."""
    sizes = candidate_batches(opt_batch, max_batch)
    record: dict[str, Any] = {"graph": graph.name, "min_gain": MIN_BATCH_GAIN}
    if len(sizes) < 2:
        record.update(chunk=None, reason=f"the folder serves batch {max_batch} at most: nothing to split")
        return record
    per_image: dict[int, float] = {}
    runs: dict[int, int] = {}
    chunk = None
    sessions: dict = {}  # one session for every round
    for b, twice in zip(sizes, sizes[1:]):
        cases = [(graph, extra, sample_inputs(unet, scheduler, n, seed=7)) for n in (b, twice)]
        (ms_b, n_b), (ms_2b, n_2b) = median_run_ms(cases, sessions)
        per_image[b], per_image[twice] = ms_b / b, ms_2b / twice  # b's figure from this round, timed beside 2b
        runs[b], runs[twice] = n_b, n_2b
        chunk = choose_chunk({b: per_image[b], twice: per_image[twice]})
        if chunk is not None:
            break
    del sessions
    gc.collect()
    record.update(
        chunk=chunk,
        per_image_ms={str(b): round(ms, 3) for b, ms in per_image.items()},
        runs={str(b): n for b, n in runs.items()},
    )
    if chunk is None:
        record["reason"] = f"the time per image fell with every doubling up to batch {max(per_image)}"
    else:
        record["reason"] = (f"batch {2 * chunk} took {per_image[2 * chunk] / per_image[chunk]:.2f}x batch {chunk}'s time "
                            f"per image (one call pays from {1 - MIN_BATCH_GAIN:.2f}x)")
    logger.info("CPU batching on %s: %s per call (%s)", graph.name, f"at most {chunk}" if chunk else "the whole batch",
                record["reason"])
    return record

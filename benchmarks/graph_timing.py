"""Timing ONNX Runtime CPU backends against each other, alternated call by call in one process:
the loop the Winograd benchmarks share (`winograd_min_spatial`, `winograd_against_commit`).

Why alternated: on a shared machine, a burst of load from another process then slows every
graph alike instead of deciding the comparison.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np


def alternated_medians(backends: dict[str, Any], manifest, runs: int, batches=(1, 4), settle_s: float = 0.0):
    """Median ms of one call of each backend at each batch size, after one untimed call each.

    `manifest`: the engine folder's, whose UNet and scheduler give the inputs
    (`io_spec.sample_inputs`, seed 0); `settle_s`: idle time before each timed call, so that the
    previous session's spinning worker threads go quiet. Returns ({batch: {name: ms}},
    {batch: {name: the untimed call's output}}).
    """
    from cmrt.engine.io_spec import CLASS_LABELS, SAMPLE, TIMESTEP, sample_inputs

    medians, outputs = {}, {}
    for batch in batches:
        inputs = sample_inputs(manifest.unet, manifest.scheduler_config, batch, seed=0)
        feeds = (inputs[SAMPLE], inputs[TIMESTEP], inputs.get(CLASS_LABELS))
        outputs[batch] = {name: backend.run(*feeds) for name, backend in backends.items()}
        times: dict[str, list[float]] = {name: [] for name in backends}
        for _ in range(runs):
            for name, backend in backends.items():
                if settle_s:
                    time.sleep(settle_s)
                t0 = time.perf_counter()
                backend.run(*feeds)
                times[name].append((time.perf_counter() - t0) * 1e3)
        medians[batch] = {name: float(np.median(t)) for name, t in times.items()}
    return medians, outputs


def folder_winograd_backend(engine, record: dict, batch_chunk: int | None = None):
    """An ONNX Runtime CPU backend on `engine`'s own Winograd graph, its stored filters mapped;
    `batch_chunk`: the most images per call (the manifest's `batch_chunk` is what `cmrt.load` runs)."""
    from cmrt.engine.winograd_filters import mapped_filters
    from cmrt.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(engine / record["file"], extra_inputs=mapped_filters(engine, record), batch_chunk=batch_chunk)

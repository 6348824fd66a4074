"""Timing ONNX Runtime CPU graphs at build time, for the build's measured choices (the Winograd
graph, the batch per call): what each choice is decided by, timed the way the runtime runs it.

Why alternated: the cases are timed call by call in turn, not one after the other, so that a burst
of load from another process on the build machine slows them alike instead of deciding the choice.
"""
from __future__ import annotations

import gc
import time
from pathlib import Path

import numpy as np

from ..engine.io_spec import CLASS_LABELS, SAMPLE, TIMESTEP

TIMING_BUDGET_S = 2.0  # per case, beyond the first TIMING_RUNS[0] calls
TIMING_RUNS = (3, 15)  # at least, at most
# Idle time before each timed call, so that the previous call's spinning worker threads go quiet:
# this long at most, and no longer than twice the case's warm-up call (a small model's calls are short).
SETTLE_S = 0.1

Case = tuple[Path, "dict[str, np.ndarray] | None", "dict[str, np.ndarray]"]  # graph, constant inputs, feeds


def median_run_ms(cases: list[Case], sessions: dict | None = None) -> list[tuple[float, int]]:
    """Median wall time of one ONNX Runtime CPU call per case (a graph, the constant inputs it is fed
    besides the UNet's, and the UNet's feeds), with the runtime's own session settings:
    (median ms, calls timed) per case. Cases on the same graph share one session, as at run time.

    `sessions`: a caller's dict of open sessions by graph, used and filled, so that a caller timing
    one graph in several rounds opens it once (and closes it by dropping the dict); without it the
    sessions are closed before this returns."""
    from ..runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    if not cases:
        raise ValueError("median_run_ms needs at least one case")
    owned = sessions is None
    sessions = {} if owned else sessions
    for graph, extra, _ in cases:
        if graph not in sessions:
            sessions[graph] = OnnxRuntimeBackend(graph, extra_inputs=extra)
    runs = [(sessions[graph], (feeds[SAMPLE], feeds[TIMESTEP], feeds.get(CLASS_LABELS))) for graph, _, feeds in cases]
    settle = []
    for backend, args in runs:
        t = time.perf_counter()
        backend.run(*args)  # warm-up: first-call allocations at this shape
        settle.append(min(SETTLE_S, 2 * (time.perf_counter() - t)))
    times: list[list[float]] = [[] for _ in runs]
    lo, hi = TIMING_RUNS
    start = time.perf_counter()
    while len(times[0]) < lo or (len(times[0]) < hi and time.perf_counter() - start < len(runs) * TIMING_BUDGET_S):
        for (backend, args), own, pause in zip(runs, times, settle):
            time.sleep(pause)
            t = time.perf_counter()
            backend.run(*args)
            own.append(time.perf_counter() - t)
    del runs
    if owned:
        sessions.clear()
        gc.collect()
    return [(float(np.median(t) * 1e3), len(t)) for t in times]

"""`cmrt.generate` from many threads at once: one load per cache entry, the same images as serial calls."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import cmrt.runtime.loading as loading

THREADS = 8


@pytest.fixture
def counted_loads(monkeypatch):
    """Every `load` that `generate` starts, made slow enough that a race shows."""
    started = []
    real = loading.load

    def slow_load(*args, **kwargs):
        started.append(threading.get_ident())
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(loading, "load", slow_load)
    monkeypatch.setattr(loading, "_PIPELINES", {})
    return started


def test_generate_loads_once_from_many_cold_threads(small_models, counted_loads):
    engine = str(small_models["cond"][1])
    barrier = threading.Barrier(THREADS)

    def call(seed):
        barrier.wait()
        return loading.generate(engine, device="cpu", seed=seed, class_labels=seed, output_type="np").images

    with ThreadPoolExecutor(THREADS) as pool:
        images = list(pool.map(call, range(THREADS)))
    assert len(counted_loads) == 1, f"{len(counted_loads)} loads for one cache entry"
    pipe = loading.load(engine, device="cpu")
    for seed, got in enumerate(images):
        np.testing.assert_array_equal(got, pipe(seed=seed, class_labels=seed, output_type="np").images)


def test_a_failed_load_is_not_cached_and_the_next_call_loads(small_models, counted_loads, tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="does not exist"):
        loading.generate(missing, device="cpu", seed=0)
    assert loading._PIPELINES == {}
    with pytest.raises(ValueError, match="does not exist"):
        loading.generate(missing, device="cpu", seed=0)
    assert len(counted_loads) == 2

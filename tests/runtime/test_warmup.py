"""`cmrt.load(..., warmup=[1, 4])`: validated, and the backend sees the warm-up before the first request."""
from __future__ import annotations

import numpy as np
import pytest

import cmrt
import cmrt.runtime.loading as loading
from cmrt.engine.manifest import read_manifest
from cmrt.runtime.pipeline import Pipeline


class CountingBackend:
    """A backend whose UNet calls are counted by batch size (no warmup hook: the pipeline's default)."""

    name, device = "counting", "cpu"

    def __init__(self):
        self.calls: list[tuple[str, int]] = []

    def run(self, sample, timestep, class_labels=None):
        assert sample.dtype == np.float32 and timestep.shape == (sample.shape[0],)
        self.calls.append(("run", sample.shape[0]))
        return np.zeros_like(sample)


class HookedBackend(CountingBackend):
    """A backend with its own warm-up (what GPU backends do: contexts, graph capture)."""

    def warmup(self, batch_sizes):
        self.calls.append(("warmup", list(batch_sizes)))


@pytest.fixture
def engine(small_models):
    return small_models["cond"][1]  # batch range 1..8


@pytest.mark.parametrize("backend_cls, seen", [
    (CountingBackend, [("run", 1), ("run", 4)]),  # default: one call with zeros per batch size
    (HookedBackend, [("warmup", [1, 4])]),  # the backend's hook, once, with the sizes
])
def test_the_backend_sees_the_warmup_before_the_first_request(engine, monkeypatch, backend_cls, seen):
    backend = backend_cls()
    monkeypatch.setattr(loading, "open_backend", lambda manifest, *a, **k: (manifest, backend))
    pipe = cmrt.load(engine, warmup=[1, 4, 4])  # repeats are warmed up once
    assert backend.calls == seen  # all before cmrt.load returned
    pipe(batch_size=4, seed=0, output_type="np")
    assert backend.calls == seen + [("run", 4)]
    assert cmrt.load(engine).backend.calls == seen + [("run", 4)]  # no warmup: nothing more
    assert pipe.warmup([]) == [] and backend.calls == seen + [("run", 4)]


def test_onnx_runtime_runs_each_warmup_batch_before_returning(engine, monkeypatch):
    """ONNX Runtime's first run at a shape allocates: warm-up makes it happen at load, for the graph that serves
    (the step graph's session too)."""
    import onnxruntime as ort

    runs: list[tuple[str, int]] = []
    real = ort.InferenceSession.run

    def counting(self, output_names, feeds, *args, **kwargs):
        first = "x" if "x" in feeds else "sample"
        runs.append((first, feeds[first].shape[0]))
        return real(self, output_names, feeds, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", counting)
    pipe = cmrt.load(engine, device="cpu", warmup=[1, 4])
    assert runs == [("sample", 1), ("sample", 4)]
    step = cmrt.load(engine, device="cpu", step_graph=True, warmup=(4, 1))
    assert runs[2:] == [("x", 4), ("x", 1)] and step.step_graph
    del runs[:]
    pipe(batch_size=4, seed=0, timesteps=[22, 0], output_type="np")
    assert runs == [("sample", 4)] * 2  # the request's own two steps, nothing else


@pytest.mark.parametrize("warmup, exc, match", [
    ([0], ValueError, r"warmup batch size 0 is outside this engine's range 1..8"),
    ([1, 9], ValueError, r"warmup batch size 9 is outside this engine's range 1..8.*--max-batch 9"),
    ("1,4", TypeError, r"warmup must be a list of batch sizes such as \[1, 4\]"),
    (4, TypeError, r"warmup must be a list of batch sizes"),
    ([1.5], TypeError, r"each warmup batch size must be an integer"),
    ([True], TypeError, r"each warmup batch size must be an integer"),
])
def test_bad_warmup_is_refused_clearly(engine, warmup, exc, match):
    with pytest.raises(exc, match=match):
        cmrt.load(engine, device="cpu", warmup=warmup)
    with pytest.raises(exc, match=match):
        Pipeline(read_manifest(engine), CountingBackend()).warmup(warmup)

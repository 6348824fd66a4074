"""The build's measured batch per ONNX Runtime CPU call (cmrt/build/cpu_batching.py)."""
from __future__ import annotations

import pytest

from cmrt.build import cpu_batching
from cmrt.build.cpu_batching import MIN_BATCH_GAIN, candidate_batches, choose_chunk

UNET = {"sample_size": 16, "in_channels": 3, "out_channels": 3, "num_class_embeds": 10}
SCHEDULER = {"sigma_min": 0.002, "sigma_max": 80.0}


@pytest.mark.parametrize("opt,max_batch,want", [
    (4, 16, [1, 2, 4]),
    (1, 16, [1, 2]),  # at least one doubling, whatever the opt batch
    (6, 16, [1, 2, 4]),
    (16, 8, [1, 2, 4, 8]),
    (4, 2, [1, 2]),
    (4, 1, [1]),
])
def test_the_batches_timed_double_up_to_the_opt_batch_within_the_range(opt, max_batch, want):
    assert candidate_batches(opt, max_batch) == want


def test_the_chunk_is_the_last_batch_before_the_time_per_image_stops_falling():
    assert choose_chunk({1: 800.0, 2: 810.0}) == 1  # a large model on a CPU: no gain from batching
    assert choose_chunk({1: 5.4, 2: 3.7, 4: 2.9}) is None  # a small one: every doubling pays
    assert choose_chunk({1: 10.0, 2: 7.0, 4: 6.9}) == 2
    edge = 10.0 * (1 - MIN_BATCH_GAIN)
    assert choose_chunk({1: 10.0, 2: edge}) is None  # exactly the gain that pays
    assert choose_chunk({1: 10.0, 2: edge * 1.001}) == 1


def _fake_timing(ms_per_call: dict[int, float], calls: list):
    """median_run_ms as if a call at batch b took ms_per_call[b]."""
    def median_run_ms(cases, sessions=None):
        calls.append([len(feeds["sample"]) for _, _, feeds in cases])
        return [(ms_per_call[len(feeds["sample"])], 3) for _, _, feeds in cases]
    return median_run_ms


def measure(monkeypatch, tmp_path, ms_per_call, opt_batch, max_batch=16):
    calls: list = []
    monkeypatch.setattr(cpu_batching, "median_run_ms", _fake_timing(ms_per_call, calls))
    rec = cpu_batching.measure_batching(tmp_path / "g.onnx", None, UNET, SCHEDULER, opt_batch=opt_batch, max_batch=max_batch)
    return rec, calls


def test_the_measurement_stops_at_the_first_doubling_that_does_not_pay(monkeypatch, tmp_path):
    rec, calls = measure(monkeypatch, tmp_path, {1: 800.0, 2: 1630.0}, opt_batch=8)
    assert calls == [[1, 2]]  # 4 and 8 are never run: batch 2 already bought nothing
    assert rec["chunk"] == 1
    assert rec["per_image_ms"] == {"1": 800.0, "2": 815.0}
    assert rec["graph"] == "g.onnx" and "batch 2" in rec["reason"]


def test_a_doubling_that_pays_is_followed_by_the_next(monkeypatch, tmp_path):
    rec, calls = measure(monkeypatch, tmp_path, {1: 100.0, 2: 150.0, 4: 296.0}, opt_batch=4)
    assert calls == [[1, 2], [2, 4]]  # 2: 75 ms per image against 100 pays; 4: 74 against 75 does not
    assert rec["chunk"] == 2
    assert rec["per_image_ms"] == {"1": 100.0, "2": 75.0, "4": 74.0}


def test_when_every_doubling_pays_the_whole_batch_runs_in_one_call(monkeypatch, tmp_path):
    rec, calls = measure(monkeypatch, tmp_path, {1: 5.4, 2: 7.4, 4: 11.6}, opt_batch=4)
    assert calls == [[1, 2], [2, 4]]
    assert rec["chunk"] is None and "batch 4" in rec["reason"]


def test_a_folder_of_batch_one_is_not_timed(monkeypatch, tmp_path):
    rec, calls = measure(monkeypatch, tmp_path, {}, opt_batch=1, max_batch=1)
    assert calls == [] and rec["chunk"] is None


def test_the_build_records_a_measurement_the_runtime_reads(small_models):
    """The small models' folders: a real timing of their plain graph, the only one they keep (their
    Winograd graph is dropped; tests/build/test_winograd.py has a folder that keeps it)."""
    from cmrt.engine.manifest import read_manifest

    m = read_manifest(small_models["cond"][1])
    rec = m.onnx_entry("fp32")["batching"]
    assert rec["graph"] == "unet.fp32.onnx"
    assert rec["chunk"] is None  # the fixture's builds count every doubling as paying (tests/conftest.py)
    assert set(rec["per_image_ms"]) >= {"1", "2"} and all(ms > 0 for ms in rec["per_image_ms"].values())
    assert m.batch_chunk(m.onnx_path("fp32")) == rec["chunk"]
    assert "batching" not in m.winograd

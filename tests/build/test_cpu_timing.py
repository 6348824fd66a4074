"""The build's alternated timing of ONNX Runtime CPU graphs (cmrt/build/cpu_timing.py)."""
from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")

from cmrt.build import cpu_timing  # noqa: E402
from cmrt.engine.io_spec import sample_inputs  # noqa: E402


def test_cases_on_one_graph_share_a_session_and_each_gets_its_median(small_models, monkeypatch):
    from cmrt.engine.manifest import read_manifest
    from cmrt.runtime.backends import onnxruntime_backend

    m = read_manifest(small_models["cond"][1])
    opened = []
    real = onnxruntime_backend.OnnxRuntimeBackend.__init__

    def spy(self, path, *a, **k):
        opened.append(path)
        real(self, path, *a, **k)

    monkeypatch.setattr(onnxruntime_backend.OnnxRuntimeBackend, "__init__", spy)
    monkeypatch.setattr(cpu_timing, "TIMING_BUDGET_S", 0.0)  # the minimum number of calls
    graph = m.onnx_path("fp32")
    cases = [(graph, None, sample_inputs(m.unet, m.scheduler_config, b, seed=7)) for b in (1, 2)]
    results = cpu_timing.median_run_ms(cases)
    assert opened == [graph]
    assert [n for _, n in results] == [cpu_timing.TIMING_RUNS[0]] * 2
    assert all(ms > 0 for ms, _ in results)
    sessions: dict = {}  # a caller's sessions: one opening over several rounds
    for _ in range(2):
        cpu_timing.median_run_ms(cases[:1], sessions)
    assert opened == [graph, graph] and list(sessions) == [graph]


def test_no_case_is_an_error():
    with pytest.raises(ValueError, match="at least one case"):
        cpu_timing.median_run_ms([])

"""The ONNX Runtime CPU backend's session: the options every session is opened with."""
import pytest

pytest.importorskip("onnxruntime")


def test_sessions_run_sequentially_without_the_memory_pattern(small_models, tmp_path, monkeypatch):
    """The memory pattern would add a second set of activations at a shape's second call; the
    options hold for a freshly optimized session and for one opened from the graph cache."""
    import cmrt

    monkeypatch.setenv("CMRT_CACHE", str(tmp_path / "cache"))
    for want_cache in ("written", "hit"):
        backend = cmrt.load(small_models["cond"][1], device="cpu", threads=2).backend
        assert backend.cache == want_cache
        so = backend.session.get_session_options()
        assert not so.enable_mem_pattern
        assert so.intra_op_num_threads == 2 and so.inter_op_num_threads == 1

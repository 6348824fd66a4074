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


class _CountingSession:
    """An InferenceSession wrapper that records the batch of every call."""

    def __init__(self, session, batches: list):
        self._session, self._batches = session, batches

    def run(self, outputs, feeds):
        self._batches.append(len(next(v for k, v in feeds.items() if k in ("sample", "x"))))
        return self._session.run(outputs, feeds)

    def __getattr__(self, name):
        return getattr(self._session, name)


@pytest.mark.parametrize("step_graph", [False, True], ids=["numpy-loop", "step-graph"])
def test_a_batch_over_the_chunk_runs_as_calls_of_at_most_the_chunk_with_the_same_images(small_models, step_graph):
    import cmrt

    engine = small_models["cond"][1]
    whole = cmrt.load(engine, device="cpu", step_graph=step_graph, batch_chunk=None)
    split = cmrt.load(engine, device="cpu", step_graph=step_graph, batch_chunk=2)
    assert (whole.backend.batch_chunk, split.backend.batch_chunk) == (None, 2)
    batches: list = []
    split.backend.session = _CountingSession(split.backend.session, batches)
    kw = dict(batch_size=5, class_labels=[0, 1, 2, 3, 4], num_inference_steps=2, seed=3, output_type="np")
    want, got = whole(**kw).images, split(**kw).images
    assert batches == [2, 2, 1] * 2  # each of the two steps: 5 images as 2 + 2 + 1
    assert got.shape == want.shape == (5, 16, 16, 3)
    assert abs(got - want).max() <= 1e-5


def test_the_chunk_is_the_builds_unless_the_load_says_otherwise(small_models, tmp_path):
    """batch_chunk="auto" reads the folder's measured figure, for the graph the session runs."""
    import json
    import shutil

    import cmrt
    from cmrt.engine.manifest import DIGEST_KEY, manifest_digest

    engine = tmp_path / "engine"
    shutil.copytree(small_models["cond"][1], engine)
    data = json.loads((engine / "manifest.json").read_text())
    data["onnx"]["fp32"]["batching"]["chunk"] = 3  # as a build on a machine where batching does not pay writes it
    data = {k: v for k, v in data.items() if k != DIGEST_KEY}
    (engine / "manifest.json").write_text(json.dumps({**data, DIGEST_KEY: manifest_digest(data)}))
    for step_graph in (False, True):  # the step graph has its UNet graph's figure
        assert cmrt.load(engine, device="cpu", step_graph=step_graph).backend.batch_chunk == 3
    assert cmrt.load(engine, device="cpu", batch_chunk=None).backend.batch_chunk is None
    assert cmrt.load(engine, device="cpu", batch_chunk=1).backend.batch_chunk == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", "all", [2]])
def test_a_bad_batch_chunk_is_refused_before_the_backend_opens(small_models, bad, monkeypatch):
    import cmrt
    from cmrt.runtime import loading

    def never(*a, **k):
        raise AssertionError("the backend was opened")

    monkeypatch.setattr(loading, "select_backend", never)
    with pytest.raises(ValueError, match="batch_chunk must be an integer >= 1"):
        cmrt.load(small_models["cond"][1], device="cpu", batch_chunk=bad)


def test_warmup_runs_each_shape_the_batches_call_at_once(small_models):
    """With a chunk of 2, batches 1, 4 and 5 call at batch 1 and 2 only: two warm-up calls."""
    import cmrt

    pipe = cmrt.load(small_models["cond"][1], device="cpu", batch_chunk=2)
    assert [pipe.backend.call_batches(b) for b in (1, 2, 4, 5)] == [[1], [2], [2, 2], [2, 2, 1]]
    batches: list = []
    pipe.backend.session = _CountingSession(pipe.backend.session, batches)
    pipe.warmup([1, 4, 5])
    assert batches == [1, 2]
    whole = cmrt.load(small_models["cond"][1], device="cpu", batch_chunk=None).backend
    assert whole.call_batches(5) == [5]

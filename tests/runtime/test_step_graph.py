"""Generation through the step graph on ONNX Runtime (CPU) against the numpy scheduler path."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import cmrt
from cmrt.engine.errors import EngineFolderError
from cmrt.runtime.postprocess import postprocess

SCHEDULES = [{"num_inference_steps": 1}, {"timesteps": [22, 0]}, {"num_inference_steps": 3}]


@pytest.fixture(scope="module")
def pairs(small_models):
    """(numpy-loop pipeline, step-graph pipeline) per model."""
    return {name: (cmrt.load(engine, device="cpu"), cmrt.load(engine, device="cpu", step_graph=True))
            for name, (_, engine) in small_models.items()}


@pytest.mark.parametrize("name,labels_given", [("cond", True), ("cond", False), ("uncond", False)])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("sched", SCHEDULES, ids=["1step", "2step", "3step"])
def test_step_graph_matches_the_numpy_path(pairs, name, labels_given, batch, sched):
    numpy_path, graph_path = pairs[name]
    assert not numpy_path.step_graph and graph_path.step_graph
    kw = dict(batch_size=batch, class_labels=list(range(batch)) if labels_given else None, seed=30 + batch,
              output_type="np", **sched)
    want, got = numpy_path(**kw).images, graph_path(**kw).images
    assert np.abs(got - want).max() <= 1e-5
    np.testing.assert_array_equal(got, want)  # the same float32 operations in the same order: the same bits
    assert 0.05 < float(got.std())  # not trivially saturated


def test_callbacks_see_the_same_steps(pairs):
    numpy_path, graph_path = pairs["cond"]
    seen = {"numpy": [], "graph": []}
    for key, pipe in (("numpy", numpy_path), ("graph", graph_path)):
        for timesteps in ([0], [39, 20, 3]):
            pipe(batch_size=2, class_labels=[1, 2], timesteps=timesteps, seed=4, output_type="np",
                 callback=lambda i, t, x, key=key: seen[key].append((i, t, x)))
    assert [(i, t) for i, t, _ in seen["graph"]] == [(i, t) for i, t, _ in seen["numpy"]] and len(seen["graph"]) == 4
    for (_, _, a), (_, _, b) in zip(seen["graph"], seen["numpy"]):
        np.testing.assert_array_equal(a, b)


def test_clip_denoised_false_gives_the_numpy_path_too(small_models):
    import dataclasses

    _, engine = small_models["uncond"]
    a, b = cmrt.load(engine, device="cpu"), cmrt.load(engine, device="cpu", step_graph=True)
    for p in (a, b):  # (-inf, inf) bounds in the graph, no clip in the numpy loop
        p.scheduler_config = dataclasses.replace(p.scheduler_config, clip_denoised=False)
    kw = dict(batch_size=2, timesteps=[39, 20, 3], seed=8, output_type="np")
    np.testing.assert_array_equal(b(**kw).images, a(**kw).images)
    plan = b.step_plan(b.schedule(None, [39, 20, 3]))
    assert np.isinf(b.step_arrays(plan, 2).coefs[:, 3:]).all()


@pytest.mark.parametrize("output_type", ["np", "pil"])
def test_clipping_the_last_step_changes_no_image(output_type):
    """Why the step graph may always clip: the numpy loop skips the last clip of a one-step run with
    no callback, and postprocessing's clip of x / 2 + 0.5 to [0, 1] makes the same bits either way."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 3, 16, 16)) * 3).astype(np.float32)  # far outside [-1, 1] too
    x.flat[:8] = [-1.0, 1.0, -0.0, 0.0, np.nextafter(np.float32(1), np.float32(2)), np.nextafter(np.float32(-1), np.float32(-2)),
                  np.float32(1e30), np.float32(-1e30)]
    assert (np.abs(x) > 1).mean() > 0.5
    clipped = np.clip(x, -1, 1)
    a, b = postprocess(x.copy(), output_type), postprocess(clipped, output_type)
    if output_type == "np":
        np.testing.assert_array_equal(a, b)
        assert a.view(np.uint32).tolist() == b.view(np.uint32).tolist()  # bit for bit, signed zeros included
    else:
        assert all(np.array_equal(np.asarray(p), np.asarray(q)) for p, q in zip(a, b))


def test_plain_unet_calls_go_through_the_same_session(pairs):
    """Editing calls `backend.run`: the step graph's F output, bit for bit the plain graph's, with one session."""
    numpy_path, graph_path = pairs["cond"]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 3, 16, 16), dtype=np.float32)
    t = np.array([1000.0, 3.5, -100.0], np.float32)
    labels = np.array([0, 5, 9])
    np.testing.assert_array_equal(graph_path.backend.run(x, t, labels), numpy_path.backend.run(x, t, labels))
    image = np.random.default_rng(2).uniform(0, 1, (16, 16, 3)).astype(np.float32)
    kw = dict(image=image, class_labels=[3], seed=5, output_type="np")
    np.testing.assert_array_equal(graph_path.colorize(**kw).images, numpy_path.colorize(**kw).images)


def test_step_graph_requests_that_cannot_be_served_say_why(small_models, tmp_path):
    _, engine = small_models["cond"]
    with pytest.raises(TypeError, match="step_graph must be None, True or False"):
        cmrt.load(engine, device="cpu", step_graph="yes")
    pytest.importorskip("openvino")
    with pytest.raises(ValueError, match="step_graph=True: openvino on cpu runs each step's arithmetic in numpy"):
        cmrt.load(engine, backend="openvino", step_graph=True)
    assert not cmrt.load(engine, backend="openvino").step_graph


def test_a_folder_without_a_step_graph_loads_and_says_how_to_get_one(small_models, tmp_path):
    from cmrt.engine.manifest import write_manifest

    folder = tmp_path / "old"
    shutil.copytree(small_models["cond"][1], folder)
    data = json.loads((folder / "manifest.json").read_text())
    step = data["onnx"]["fp32"].pop("step")
    del data["files"][step["file"]]
    (folder / step["file"]).unlink()
    write_manifest(folder, data)
    assert not cmrt.load(folder, device="cpu").step_graph  # the default never needs one
    with pytest.raises(EngineFolderError, match=r"no step graph of its fp32 graph .*rebuild it with `cmrt build`, or load it with step_graph=False"):
        cmrt.load(folder, device="cpu", step_graph=True)

"""Same seed, same image: `rng="torch"` reproduces diffusers' `generator=torch.manual_seed(s)` images.

The cmrt side runs in this process with torch present only to produce the reference; the
noise itself comes from cmrt.runtime.torch_rng (numpy). A separate test proves the runtime
path imports no torch.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import cmrt  # noqa: E402

SCHEDULES = [{"num_inference_steps": 1}, {"timesteps": [22, 0]}]


@pytest.fixture(scope="module")
def pairs(small_models):
    out = {}
    for name, (folder, engine) in small_models.items():
        ref = diffusers.ConsistencyModelPipeline.from_pretrained(folder)
        ref.set_progress_bar_config(disable=True)
        out[name] = (ref, cmrt.load(engine))
        out[name, "step graph"] = (ref, cmrt.load(engine, step_graph=True))
    return out


@pytest.mark.parametrize("step_graph", [False, True], ids=["numpy-step", "step-graph"])
@pytest.mark.parametrize("name,labels_given", [("cond", True), ("cond", False), ("uncond", False)])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("sched", SCHEDULES, ids=["1step", "2step"])
def test_seed_reproduces_diffusers(pairs, name, batch, sched, labels_given, step_graph):
    ref, pipe = pairs[(name, "step graph") if step_graph else name]
    assert pipe.step_graph == step_graph
    seed = 100 + batch
    labels = list(range(batch)) if labels_given else None
    want = ref(batch_size=batch, class_labels=labels, generator=torch.manual_seed(seed), output_type="np", **sched).images
    got = pipe(batch_size=batch, class_labels=labels, seed=seed, rng="torch", output_type="np", **sched).images
    assert np.abs(got - want).max() <= 1e-4


def test_torch_generator_is_continued_and_advanced(pairs):
    ref, pipe = pairs["cond"]
    g_ref = torch.Generator().manual_seed(9)
    torch.randn(5, generator=g_ref)  # a used generator
    g_ours = torch.Generator().manual_seed(9)
    torch.randn(5, generator=g_ours)
    want = ref(batch_size=2, class_labels=[1, 2], timesteps=[22, 0], generator=g_ref, output_type="np").images
    got = pipe(batch_size=2, class_labels=[1, 2], timesteps=[22, 0], generator=g_ours, output_type="np").images
    assert np.abs(got - want).max() <= 1e-4
    assert torch.equal(g_ref.get_state(), g_ours.get_state())


def test_per_sample_seeds_do_not_depend_on_the_batch(pairs):
    _, pipe = pairs["cond"]
    for rng in ("numpy", "torch"):
        batch = pipe(batch_size=3, seed=[5, 6, 7], timesteps=[22, 0], rng=rng, output_type="np").images
        for i, s in enumerate([5, 6, 7]):
            single = pipe(batch_size=1, seed=[s], timesteps=[22, 0], rng=rng, output_type="np").images
            np.testing.assert_allclose(batch[i], single[0], atol=1e-5)
    torch_single = pipe(seed=6, rng="torch", timesteps=[22, 0], output_type="np").images
    per_sample = pipe(batch_size=3, seed=[5, 6, 7], rng="torch", timesteps=[22, 0], output_type="np").images
    np.testing.assert_allclose(per_sample[1], torch_single[0], atol=1e-5)


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"rng": "cuda"}, ValueError, "rng"),
    ({"seed": [1, 2], "batch_size": 3}, ValueError, "one per sample"),
    ({"seed": [1, "a"], "batch_size": 2}, TypeError, "seed"),
    ({"generator": np.random.default_rng(0), "rng": "torch"}, TypeError, "rng='torch'"),
])
def test_rng_argument_errors(pairs, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        pairs["cond"][1](**kwargs)


def test_torch_seed_without_torch_in_the_runtime(pairs, small_models, tmp_path):
    """The same comparison with cmrt running in a process where importing torch fails."""
    from tests.runtime.test_isolation import run_without_torch

    ref, _ = pairs["cond"]
    want = ref(batch_size=2, timesteps=[22, 0], generator=torch.manual_seed(42), output_type="np").images
    out = tmp_path / "images.npy"
    r = run_without_torch(
        f"""
        import numpy as np, cmrt
        pipe = cmrt.load({str(small_models["cond"][1])!r})
        np.save({str(out)!r}, pipe(batch_size=2, timesteps=[22, 0], seed=42, rng="torch", output_type="np").images)
        """
    )
    assert r.returncode == 0, r.stderr
    assert np.abs(np.load(out) - want).max() <= 1e-4


# --- a caller's own torch.Generator(s): labels come from torch's global generator, as in diffusers ---
def _global_then(make):
    """Seed torch's global generator, then make the call's generator(s) (which may reseed it)."""
    def factory():
        torch.manual_seed(123)
        return make()
    return factory


GENERATOR_CASES = {
    "own-generator": _global_then(lambda: torch.Generator().manual_seed(9)),
    "generator-list": _global_then(lambda: [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]),
    "list-with-the-global-generator": _global_then(lambda: [torch.manual_seed(5), torch.Generator().manual_seed(6)]),
    "one-generator-twice": _global_then(lambda: [torch.Generator().manual_seed(3)] * 2),
    "the-global-generator": _global_then(lambda: torch.manual_seed(7)),
}


def _states(gens):
    gens = gens if isinstance(gens, list) else [gens]
    return [g.get_state().clone() for g in gens] + [torch.default_generator.get_state().clone()]


@pytest.mark.parametrize("case", list(GENERATOR_CASES))
@pytest.mark.parametrize("sched", SCHEDULES, ids=["1step", "2step"])
def test_torch_generators_without_labels_reproduce_diffusers(pairs, case, sched):
    """Images, the caller's generators' final states and torch's global generator all as diffusers leaves them."""
    ref, pipe = pairs["cond"]
    make = GENERATOR_CASES[case]
    gens = make()
    want = ref(batch_size=2, generator=gens, output_type="np", **sched).images
    want_states = _states(gens)
    gens = make()
    got = pipe(batch_size=2, generator=gens, output_type="np", **sched).images
    assert np.abs(got - want).max() <= 1e-4
    for ours, theirs in zip(_states(gens), want_states):
        assert torch.equal(ours, theirs)


def test_torch_generator_labels_do_not_advance_it(pairs):
    """With labels given nothing is drawn from torch's global generator (diffusers draws none either)."""
    _, pipe = pairs["cond"]
    torch.manual_seed(11)
    before = torch.default_generator.get_state().clone()
    pipe(batch_size=2, class_labels=[1, 2], generator=torch.Generator().manual_seed(9), output_type="np")
    assert torch.equal(torch.default_generator.get_state(), before)

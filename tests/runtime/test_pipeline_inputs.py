"""Bad input gets a clear ValueError/TypeError that names the argument."""
import numpy as np
import pytest

import cmrt


@pytest.fixture(scope="module")
def pipes(small_models):
    return {k: cmrt.load(v[1]) for k, v in small_models.items()}


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"timesteps": [0, 22]}, ValueError, "descending"),
    ({"timesteps": [40, 0]}, ValueError, "num_train_timesteps"),
    ({"timesteps": [5, -2]}, ValueError, ">= 0"),
    ({"timesteps": [22, 0], "num_inference_steps": 2}, ValueError, "exactly one"),
    ({"num_inference_steps": 0}, ValueError, "num_inference_steps"),
    ({"num_inference_steps": 41}, ValueError, "num_inference_steps"),
    ({"num_inference_steps": 2.0}, TypeError, "num_inference_steps"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"batch_size": 9}, ValueError, "batch_size 9 is outside"),
    ({"batch_size": "2"}, TypeError, "batch_size"),
    ({"latents": np.zeros((1, 3, 8, 8), np.float32)}, ValueError, "latents has shape"),
    ({"latents": [[0.0]]}, TypeError, "latents"),
    ({"output_type": "pt"}, ValueError, "output_type"),
    ({"class_labels": [10]}, ValueError, "out of range"),
    ({"class_labels": [-1]}, ValueError, "out of range"),
    ({"class_labels": [1, 2], "batch_size": 3}, ValueError, "class_labels has 2"),
    ({"class_labels": 3, "batch_size": 2}, ValueError, "batch_size 1"),
    ({"class_labels": [1.5]}, TypeError, "class_labels"),
    ({"seed": 1, "generator": np.random.default_rng(1)}, ValueError, "seed or generator"),
    ({"generator": 5}, TypeError, "generator"),
    ({"seed": -1}, ValueError, "seed"),
    ({"timesteps": [22, 0], "noise": [np.zeros((1, 3, 16, 16), np.float32)]}, ValueError, "noise has 1"),
    ({"callback_steps": 0}, ValueError, "callback_steps"),
])
def test_bad_input(pipes, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        pipes["cond"](**kwargs)


def test_labels_on_unconditional_model(pipes):
    with pytest.raises(ValueError, match="unconditional"):
        pipes["uncond"](class_labels=[1])


def test_every_batch_size_in_range_from_one_engine(pipes):
    pipe = pipes["cond"]
    for b in (pipe.min_batch, 2, 5, pipe.max_batch):
        out = pipe(batch_size=b, seed=0, output_type="np").images
        assert out.shape == (b, 16, 16, 3) and out.dtype == np.float32
        assert 0.0 <= out.min() and out.max() <= 1.0


def test_seed_is_deterministic_and_matters(pipes):
    pipe = pipes["cond"]
    a = pipe(batch_size=2, timesteps=[22, 0], seed=4, output_type="np").images
    b = pipe(batch_size=2, timesteps=[22, 0], seed=4, output_type="np").images
    c = pipe(batch_size=2, timesteps=[22, 0], seed=5, output_type="np").images
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_timesteps_example_and_outputs(pipes):
    pipe = pipes["cond"]
    image = pipe(timesteps=[17, 0]).images[0]
    assert image.size == (16, 16) and image.mode == "RGB"
    (images,) = pipe(batch_size=2, output_type="np", return_dict=False)
    assert images.shape == (2, 16, 16, 3)


def test_callback_sees_every_step(pipes):
    seen = []
    pipes["uncond"](num_inference_steps=3, seed=0, callback=lambda i, t, x: seen.append((i, round(t, 3), x.shape)))
    assert [s[0] for s in seen] == [0, 1, 2] and seen[0][2] == (1, 3, 16, 16)
    assert seen[0][1] > seen[1][1] > seen[2][1]


def test_callers_arrays_are_never_written_and_callback_samples_stay_valid(pipes):
    """The loop reuses its own buffers in place; what the caller passed or was handed must not change."""
    pipe = pipes["uncond"]
    rng = np.random.default_rng(3)
    latents = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    noise = [rng.standard_normal((2, 3, 16, 16)).astype(np.float32) for _ in range(3)]
    kept = [latents.copy()] + [z.copy() for z in noise]
    seen = []
    pipe(batch_size=2, num_inference_steps=3, latents=latents, noise=noise, output_type="np",
         callback=lambda i, t, x: seen.append((x, x.copy())))
    for given, before in zip([latents] + noise, kept):
        np.testing.assert_array_equal(given, before)
    assert len(seen) == 3 and all(np.array_equal(x, snapshot) for x, snapshot in seen)
    assert not np.array_equal(seen[0][0], seen[1][0])


def test_seeded_noise_is_drawn_in_diffusers_order(pipes):
    """seed=S equals passing the draws yourself: latents first, then one noise tensor per step."""
    pipe = pipes["uncond"]
    gen = np.random.default_rng(21)
    latents = gen.standard_normal((2, 3, 16, 16), dtype=np.float32)
    noise = [gen.standard_normal((2, 3, 16, 16), dtype=np.float32) for _ in range(3)]
    a = pipe(batch_size=2, num_inference_steps=3, seed=21, output_type="np").images
    b = pipe(batch_size=2, num_inference_steps=3, latents=latents, noise=noise, output_type="np").images
    np.testing.assert_array_equal(a, b)


def test_generate_one_call(small_models):
    out = cmrt.generate(small_models["uncond"][1], batch_size=2, seed=1, output_type="np")
    assert out.images.shape == (2, 16, 16, 3)


@pytest.mark.parametrize("kwargs,exc", [({"backend": "tensorflow"}, ValueError), ({"device": "tpu"}, ValueError),
                                        ({"precision": "int8"}, ValueError)])
def test_bad_load_arguments(small_models, kwargs, exc):
    with pytest.raises(exc):
        cmrt.load(small_models["cond"][1], **kwargs)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'cd_imagenet_64'"):
        cmrt.load("cd_imagenet_64")

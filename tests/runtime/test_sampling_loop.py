"""The pipeline's allocation-free loop (split steps, pre-drawn noise, shared per-plan arrays)
gives the same bits as chaining the one-call scheduler functions."""
import dataclasses

import numpy as np
import pytest

import cmrt
from cmrt.runtime import scheduler as cm
from cmrt.runtime.postprocess import to_unit_range


def fake_unet(sample, timestep, class_labels=None):
    """A deterministic stand-in whose output depends on every input, so a mixed-up buffer shows;
    large enough that the denoised sample leaves [-1, 1] and the clips matter."""
    label = 0.0 if class_labels is None else class_labels.astype(np.float32)[:, None, None, None] * 0.01
    return (np.float32(3) * np.tanh(sample * np.float32(0.7)) + timestep[:, None, None, None] * np.float32(1e-3) + label).astype(np.float32)


def reference_samples(cfg, latents, noise, schedule, labels):
    """The sample after each step, from the one-call scheduler functions."""
    x = latents * np.float32(cfg.init_noise_sigma)
    samples = []
    for i in range(schedule.num_steps):
        sigma, sigma_next = schedule.sigmas[i], schedule.sigmas[i + 1]
        t = np.full((x.shape[0],), np.float32(schedule.timesteps[i]), np.float32)
        out = fake_unet(cm.scale_model_input(x, sigma, cfg), t, labels)
        x = cm.step(out, x, sigma, sigma_next, noise[i] if schedule.num_steps > 1 else None, cfg)
        samples.append(x)
    return samples


@pytest.fixture(scope="module")
def engine_dir(small_models):
    return small_models["cond"][1]


@pytest.mark.parametrize("s_noise", [1.0, 1.007])
@pytest.mark.parametrize("timesteps", [[0], [22, 0], [39, 20, 3]])
def test_loop_is_bit_identical_to_chained_steps(engine_dir, s_noise, timesteps):
    pipe = cmrt.load(engine_dir)
    pipe.scheduler_config = dataclasses.replace(pipe.scheduler_config, s_noise=s_noise)
    pipe.backend.run = fake_unet
    rng = np.random.default_rng(7)
    shape = (3, *pipe.sample_shape)
    latents = rng.standard_normal(shape, dtype=np.float32)
    noise = [rng.standard_normal(shape, dtype=np.float32) for _ in timesteps]
    labels = np.array([1, 4, 9])
    kept = [z.copy() for z in noise]
    cfg, schedule = pipe.scheduler_config, pipe.schedule(None, timesteps)
    ref = reference_samples(cfg, latents, noise, schedule, labels)
    unclipped = reference_samples(dataclasses.replace(cfg, clip_denoised=False), latents, noise, schedule, labels)
    assert not np.array_equal(ref[-1], unclipped[-1]), "the fake UNet should take samples out of [-1, 1]"
    kw = dict(batch_size=3, class_labels=labels, timesteps=timesteps, latents=latents,
              noise=noise if len(timesteps) > 1 else None, output_type="np")
    for _ in range(2):  # the second call reuses the cached per-plan arrays
        np.testing.assert_array_equal(pipe(**kw).images, to_unit_range(ref[-1]))
    seen = []  # with a callback, too, and it sees every step's sample
    images = pipe(**kw, callback=lambda i, t, x: seen.append(x)).images
    np.testing.assert_array_equal(images, to_unit_range(ref[-1]))
    assert len(seen) == len(ref) and all(np.array_equal(a, b) for a, b in zip(seen, ref))
    assert all(np.array_equal(a, b) for a, b in zip(noise, kept)), "the caller's noise arrays were written"


@pytest.mark.parametrize("s_noise", [1.0, 0.993])
def test_scaling_all_steps_at_once_matches_step_by_step(s_noise):
    cfg = cm.SchedulerConfig(num_train_timesteps=40, s_noise=s_noise)
    plan = cm.step_constants(cm.make_schedule(cfg, num_inference_steps=4), cfg)
    z = np.random.default_rng(0).standard_normal((4, 2, 3, 5, 5), dtype=np.float32)
    each = np.stack([cm.scale_noise(z[i].copy(), k.noise_coef, cfg) for i, k in enumerate(plan)])
    at_once = cm.scale_noise(z.copy(), cm.step_arrays(plan, 2).noise_coefs, cfg)
    np.testing.assert_array_equal(at_once, each)
    by_formula = np.stack([(z[i] * np.float32(s_noise)) * k.noise_coef for i, k in enumerate(plan)])
    np.testing.assert_array_equal(at_once, by_formula)


def test_step_arrays_are_shared_and_read_only(engine_dir):
    pipe = cmrt.load(engine_dir)
    plan = pipe.step_plan(pipe.schedule(None, [39, 20, 3]))
    arrays = pipe.step_arrays(plan, 2)
    assert pipe.step_arrays(plan, 2) is arrays and pipe.step_arrays(plan, 3) is not arrays
    other = tuple(list(plan))  # an equal plan, another object: never handed the first one's cache entry
    assert pipe.step_arrays(other, 2) is not arrays
    assert [a.tolist() for a in arrays.timesteps] == [[k.t, k.t] for k in plan]
    assert arrays.noise_coefs.reshape(-1).tolist() == [k.noise_coef for k in plan]
    for a in (*arrays.timesteps, arrays.noise_coefs):
        assert a.dtype == np.float32 and not a.flags.writeable


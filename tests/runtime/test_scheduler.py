"""Scheduler-level parity with diffusers' CMStochasticIterativeScheduler (the reference)."""
import numpy as np
import pytest

from cmrt.runtime import scheduler as cm

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

CONFIGS = [40, 151, 201]  # CD (N=40), CT bedroom/cat (N=151), CT imagenet (N=201)


def reference(n_train):
    return diffusers.CMStochasticIterativeScheduler(num_train_timesteps=n_train)


@pytest.mark.parametrize("n_train", CONFIGS)
@pytest.mark.parametrize("kwargs", [
    {"num_inference_steps": 1}, {"num_inference_steps": 2}, {"num_inference_steps": 3},
    {"num_inference_steps": 4}, {"num_inference_steps": 7}, {"num_inference_steps": 40},
    {"timesteps": [22, 0]}, {"timesteps": [17, 0]}, {"timesteps": [39, 20, 3]}, {"timesteps": [0]},
])
def test_schedule_matches_diffusers(n_train, kwargs):
    ref = reference(n_train)
    ref.set_timesteps(**kwargs)
    ours = cm.make_schedule(cm.SchedulerConfig(num_train_timesteps=n_train), **kwargs)
    assert ours.sigmas.dtype == np.float32 and ours.timesteps.dtype == np.float64
    np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())


def test_documented_values():
    cfg = cm.SchedulerConfig()
    s = cm.make_schedule(cfg, num_inference_steps=1)
    np.testing.assert_allclose(s.sigmas, [80, 0.002], rtol=1e-6)
    np.testing.assert_allclose(s.timesteps, [1095.5067], atol=1e-4)
    s = cm.make_schedule(cfg, timesteps=[22, 0])
    np.testing.assert_allclose(s.sigmas, [80, 1.38237, 0.002], rtol=1e-5)
    np.testing.assert_allclose(s.timesteps, [1095.5067, 80.9495], atol=1e-4)
    assert list(cm.make_schedule(cfg, num_inference_steps=4).indices) == [30, 20, 10, 0]


@pytest.mark.parametrize("n_train", CONFIGS)
@pytest.mark.parametrize("sigma", [80.0, 24.4, 1.38237, 0.3, 0.002])
def test_scalings_match_diffusers(n_train, sigma):
    ref = reference(n_train)
    cfg = cm.SchedulerConfig(num_train_timesteps=n_train)
    s32 = torch.tensor(sigma, dtype=torch.float32)
    rs, ro = ref.get_scalings_for_boundary_condition(s32)
    os_, oo = cm.boundary_scalings(np.float32(sigma), cfg)
    assert abs(float(rs) - float(os_)) <= 1e-7 * max(1, abs(float(rs)))
    assert abs(float(ro) - float(oo)) <= 1e-7 * max(1, abs(float(ro)))
    x = torch.randn(2, 3, 4, 4)
    ref_scaled = x / ((s32**2 + 0.25) ** 0.5)
    np.testing.assert_allclose(cm.scale_model_input(x.numpy(), np.float32(sigma), cfg), ref_scaled.numpy(), rtol=1e-6)


@pytest.mark.parametrize("kwargs", [{"num_inference_steps": 1}, {"timesteps": [22, 0]}, {"num_inference_steps": 3}])
def test_step_matches_diffusers(kwargs):
    ref = reference(40)
    ref.set_timesteps(**kwargs)
    cfg = cm.SchedulerConfig()
    ours = cm.make_schedule(cfg, **kwargs)
    g = torch.Generator().manual_seed(3)
    g_copy = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, 8) * 80
    x_np = x.numpy().copy()
    n = ours.num_steps
    for i, t in enumerate(ref.timesteps):
        out = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(100 + i))
        ref.scale_model_input(x, t)
        x = ref.step(out, t, x, generator=g).prev_sample
        noise = torch.randn(x.shape, generator=g_copy).numpy() if n > 1 else None
        x_np = cm.step(out.numpy(), x_np, ours.sigmas[i], ours.sigmas[i + 1], noise, cfg)
        np.testing.assert_allclose(x_np, x.numpy(), atol=1e-6)


def test_last_step_noise_coefficient_is_not_zero():
    # diffusers' float32 arithmetic leaves ~6.7e-7 of noise on the last step; so must we
    coef = cm.noise_scale(np.float32(0.002), cm.SchedulerConfig())
    assert 5e-7 < coef < 9e-7


@pytest.mark.parametrize("kwargs", [
    {}, {"num_inference_steps": 2, "timesteps": [22, 0]}, {"num_inference_steps": 41},
    {"timesteps": [0, 22]}, {"timesteps": [22, 22]}, {"timesteps": [40, 0]},
])
def test_errors_match_diffusers(kwargs):
    with pytest.raises(ValueError):
        reference(40).set_timesteps(**kwargs)
    with pytest.raises(ValueError):
        cm.make_schedule(cm.SchedulerConfig(), **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    ({"timesteps": [10, -1]}, ">= 0"),
    ({"timesteps": []}, "empty"),
    ({"num_inference_steps": 0}, ">= 1"),
    ({"num_inference_steps": -3}, ">= 1"),
])
def test_errors_diffusers_misses(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cm.make_schedule(cm.SchedulerConfig(), **kwargs)


@pytest.mark.parametrize("kwargs", [{"num_inference_steps": 1.5}, {"num_inference_steps": "2"}, {"timesteps": "17,0"},
                                    {"timesteps": [17, "0"]}])
def test_type_errors(kwargs):
    with pytest.raises(TypeError):
        cm.make_schedule(cm.SchedulerConfig(), **kwargs)


def test_config_from_diffusers_dict():
    ref = reference(151)
    cfg = cm.SchedulerConfig.from_dict(dict(ref.config))
    assert cfg.num_train_timesteps == 151 and cfg.sigma_max == 80.0
    with pytest.raises(ValueError, match="CMStochasticIterativeScheduler"):
        cm.SchedulerConfig.from_dict({"_class_name": "DDPMScheduler"})
    with pytest.raises(ValueError):
        cm.SchedulerConfig(sigma_min=1.0, sigma_max=0.5)

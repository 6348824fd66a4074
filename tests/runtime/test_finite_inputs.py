"""Non-finite or non-normal inputs are a ValueError naming the argument, never a black image.

NaN passes every comparison (a NaN timestep became INT64_MIN) and NaN / 1e30 latents run
through the UNet into all-NaN arrays and black PIL images; each case here is refused first.
"""
import numpy as np
import pytest

import cmrt
from cmrt.runtime import noise as noise_module

NAN, INF = float("nan"), float("inf")
SHAPE = (1, 3, 16, 16)


@pytest.fixture(scope="module")
def pipe(small_models):
    return cmrt.load(small_models["cond"][1])


def normals(value=None, shape=SHAPE, seed=0, dtype=np.float32):
    z = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    if value is not None:
        z[0, 1, 2, 3] = value
    return z


@pytest.mark.parametrize("kwargs,match", [
    ({"latents": normals(NAN)}, "latents holds 1 NaN"),
    ({"latents": normals(INF)}, "latents holds 1 infinite"),
    ({"latents": normals(-INF)}, "latents holds 1 infinite"),
    ({"latents": normals(1e30)}, "latents ranges over .* not standard normal"),
    ({"latents": normals(1e300, dtype=np.float64)}, "latents ranges over"),  # would overflow float32
    ({"timesteps": [22, 0], "noise": [normals(NAN), normals()]}, r"noise\[0\] holds 1 NaN"),
    ({"timesteps": [22, 0], "noise": [normals(), normals(INF)]}, r"noise\[1\] holds 1 infinite"),
    ({"timesteps": [22, 0], "noise": [normals(), normals(-1e30)]}, r"noise\[1\] ranges over"),
    ({"timesteps": [NAN]}, "timesteps must be finite"),
    ({"timesteps": [NAN, 0]}, "timesteps must be finite"),
    ({"timesteps": [40, NAN]}, "timesteps must be finite"),
    ({"timesteps": [22, np.float64(NAN)]}, "timesteps must be finite"),
    ({"timesteps": np.array([INF, 0.0])}, "timesteps must be finite"),
], ids=["latents-nan", "latents-inf", "latents-neg-inf", "latents-1e30", "latents-1e300-f64", "noise-nan",
        "noise-inf", "noise-1e30", "timesteps-nan", "timesteps-nan-0", "timesteps-40-nan", "timesteps-np-nan",
        "timesteps-inf"])
def test_generation_refuses_non_finite_input(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe(output_type="np", **kwargs)


def test_latents_within_the_bound_still_run(pipe):
    """The bound refuses what no standard normal reaches, not deliberately scaled inputs."""
    z = normals() * 80  # latents already multiplied by sigma_max: a mistake, but a visible one
    out = pipe(latents=z, output_type="np").images
    assert np.isfinite(out).all()
    bound = noise_module.STANDARD_NORMAL_BOUND
    noise_module.check_standard_normal("z", np.full(4, bound, np.float32))  # the bound itself is accepted


# --- editing ------------------------------------------------------------------------------------
def image01(value=None):
    im = np.random.default_rng(1).random((16, 16, 3)).astype(np.float32)
    if value is not None:
        im[3, 4, 1] = value
    return im


MASK = np.zeros((16, 16), bool)
MASK[4:12, 4:12] = True
LOW = np.random.default_rng(2).random((2, 2, 3)).astype(np.float32)  # super_resolve's input at patch 8


def call(pipe, method, **kwargs):
    args = {"inpaint": (image01(), MASK), "colorize": (image01(),), "super_resolve": (LOW,), "edit": (image01(),)}[method]
    return getattr(pipe, method)(*args, output_type="np", **kwargs)


EDITING = ["inpaint", "colorize", "super_resolve", "edit"]


@pytest.mark.parametrize("method", EDITING)
@pytest.mark.parametrize("what,kwargs,match", [
    ("latents-nan", {"latents": normals(NAN)}, "latents holds 1 NaN"),
    ("latents-1e30", {"latents": normals(1e30)}, "latents ranges over"),
    ("noise-nan", {"num_inference_steps": 2, "noise": [normals(NAN)]}, r"noise\[0\] holds 1 NaN"),
    ("noise-inf", {"num_inference_steps": 2, "noise": [normals(INF)]}, r"noise\[0\] holds 1 infinite"),
    ("sigmas-nan", {"sigmas": [5.38, NAN]}, "sigmas must be finite"),
    ("timesteps-nan", {"timesteps": [20, NAN]}, "timesteps must be finite"),
])
def test_editing_refuses_non_finite_input(pipe, method, what, kwargs, match):
    with pytest.raises(ValueError, match=match):
        call(pipe, method, **kwargs)


@pytest.mark.parametrize("method,args,match", [
    ("inpaint", (image01(NAN), MASK), "image contains NaN"),
    ("colorize", (image01(INF),), "image contains NaN or infinite"),
    ("super_resolve", (np.full((2, 2, 3), NAN, np.float32),), "image contains NaN"),
    ("edit", (image01(NAN),), "image contains NaN"),
])
def test_editing_refuses_non_finite_images(pipe, method, args, match):
    with pytest.raises(ValueError, match=match):
        getattr(pipe, method)(*args, output_type="np")


def test_a_mask_cannot_hold_nan(pipe):
    """Masks are boolean: a float mask (where a NaN could hide) is refused, with the fix."""
    with pytest.raises(TypeError, match="boolean"):
        pipe.inpaint(image01(), np.where(MASK, NAN, 0.0), output_type="np")


@pytest.mark.parametrize("kwargs,match", [
    ({"alphas": [0.0, NAN, 1.0]}, "alphas must be in"),
    ({"latents": np.stack([normals(NAN)[0], normals()[0]])}, "latents holds 1 NaN"),
    ({"latents": np.stack([normals()[0], normals(1e30)[0]])}, "latents ranges over"),
    ({"num_inference_steps": 2, "noise": [np.stack([normals(INF)[0]] * 2), np.stack([normals()[0]] * 2)]},
     r"noise\[0\] holds 2 infinite"),
    ({"timesteps": [NAN]}, "timesteps must be finite"),
], ids=["alphas-nan", "latents-nan", "latents-1e30", "noise-inf", "timesteps-nan"])
def test_interpolate_refuses_non_finite_input(pipe, kwargs, match):
    kwargs = {"alphas": [0.0, 0.5, 1.0], **kwargs}
    with pytest.raises(ValueError, match=match):
        pipe.interpolate(output_type="np", **kwargs)

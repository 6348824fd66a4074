"""Zero-shot editing (inpaint, colorize, super_resolve, edit, interpolate) on the engine.

(a) parity: every method against an independent PyTorch reference written here from the
    paper (Algorithm 4, slerp + one step) that calls the diffusers UNet directly with the
    same noise: max abs error <= 1e-4 on [0, 1] images (fp32);
(b) what each method keeps: known pixels, luminance, patch means, interpolation endpoints;
    the schedule is validated like generation's;
(c) bad input raises a ValueError/TypeError naming the argument.
"""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import cmrt  # noqa: E402
from cmrt.cli import main  # noqa: E402
from cmrt.runtime import editing  # noqa: E402

TOL = 1e-4
W_LUMA = np.array([0.2989, 0.5870, 0.1140], dtype=np.float64)


# --- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(small_models):
    out = {}
    for name, (folder, engine) in small_models.items():
        unet = diffusers.UNet2DModel.from_pretrained(folder, subfolder="unet").eval()
        sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        out[name] = (cmrt.load(engine), unet, sched)
    return out


def randn(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def images01(seed, batch, size=16):
    g = np.random.default_rng(seed)
    return g.random((batch, size, size, 3)).astype(np.float32)


# --- the independent reference (torch, from the paper) --------------------------------------------
class Ref:
    """Consistency function and Algorithm 4 in torch float32, sigmas/timesteps in float64 as in diffusers."""

    def __init__(self, unet, sched):
        self.unet = unet
        self.n = sched.get("num_train_timesteps", 40)
        self.smin = sched.get("sigma_min", 0.002)
        self.smax = sched.get("sigma_max", 80.0)
        self.sd = sched.get("sigma_data", 0.5)
        self.rho = sched.get("rho", 7.0)

    def sigmas_for_timesteps(self, timesteps):
        # diffusers' set_timesteps: ramp = timesteps reversed / (N - 1) on the Karras grid
        ramp = torch.tensor(list(reversed(timesteps)), dtype=torch.float64) / (self.n - 1)
        lo, hi = self.smin ** (1 / self.rho), self.smax ** (1 / self.rho)
        return [float(v) for v in (hi + ramp * (lo - hi)) ** self.rho]

    @torch.no_grad()
    def f(self, x, sigma64, labels):
        s = torch.tensor(sigma64, dtype=torch.float32)
        smin = torch.tensor(self.smin, dtype=torch.float32)
        sd = torch.tensor(self.sd, dtype=torch.float32)
        c_in = 1 / torch.sqrt(s * s + sd * sd)
        c_skip = sd * sd / ((s - smin) ** 2 + sd * sd)
        c_out = (s - smin) * sd / torch.sqrt(s * s + sd * sd)
        t = torch.full((x.shape[0],), 250.0 * np.log(sigma64 + 1e-44), dtype=torch.float32)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a 16x16 UNet: threads only contend with ONNX Runtime's on shared cores
        try:
            out = self.unet(x * c_in, t, class_labels=labels).sample
        finally:
            torch.set_num_threads(threads)
        return (c_skip * x + c_out * out).clamp(-1, 1)

    def renoise_scale(self, sigma64):
        s = min(max(torch.tensor(sigma64, dtype=torch.float32), torch.tensor(self.smin, dtype=torch.float32)),
                torch.tensor(self.smax, dtype=torch.float32))
        return torch.sqrt(s * s - torch.tensor(self.smin, dtype=torch.float32) ** 2)

    def algorithm4(self, sigmas, y_kept, start, z, step_noise, replace, labels):
        x = start + torch.tensor(sigmas[0], dtype=torch.float32) * z
        for i, sigma in enumerate(sigmas):
            x0 = replace(self.f(x, sigma, labels))
            if i + 1 < len(sigmas):
                x = x0 + step_noise[i] * self.renoise_scale(sigmas[i + 1])
        return x0


def orthogonal_with_first(v):
    """Torch QR of a matrix whose first column is v / |v|; sign so that the first column sums > 0."""
    m = torch.eye(len(v), dtype=torch.float64)
    m[:, 0] = v / torch.linalg.norm(v)
    q, _ = torch.linalg.qr(m)
    return (-q if q[:, 0].sum() < 0 else q).to(torch.float32)


def shrink_toward(anchor, x, dims):
    """anchor + s (x - anchor), the largest s in [0, 1] (shared over dims) keeping all values in [-1, 1]."""
    d = x - anchor
    room = torch.full_like(d, float("inf"))
    pos, neg = d > 0, d < 0
    room[pos] = ((1 - anchor) / d)[pos]
    room[neg] = ((-1 - anchor) / d)[neg]
    s = room.clamp(min=0)
    for dim in dims:
        s = s.amin(dim=dim, keepdim=True)
    return anchor + s.clamp(max=1) * d


def to_model(u):
    return torch.from_numpy(u).permute(0, 3, 1, 2) * 2 - 1


def to_unit(x):
    return ((x / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).numpy()


def noises(seed, count, shape):
    z = randn(seed, *shape)
    return z, [randn(seed + 1 + i, *shape) for i in range(count)]


def check(name, ours, ref):
    err = float(np.abs(ours - ref).max())
    print(f"parity {name}: max abs error {err:.2e}")
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert err <= TOL, f"{name}: max abs error {err}"
    assert float(ours.std()) > 0.05  # not trivially saturated


# --- (a) parity -----------------------------------------------------------------------------------
def test_parity_inpaint(models):
    pipe, unet, sched = models["cond"]
    ref = Ref(unet, sched)
    ts = [30, 20, 10, 0]
    u = images01(1, 2)
    mask = np.zeros((2, 16, 16), bool)
    mask[0, 3:11, 2:9] = True
    mask[1, 8:, :] = True
    z, steps = noises(10, len(ts) - 1, (2, 3, 16, 16))
    labels = [3, 7]
    ours = pipe.inpaint(u, mask, timesteps=ts, class_labels=labels, latents=z.numpy(),
                        noise=[e.numpy() for e in steps], output_type="np").images

    gen = torch.from_numpy(mask)[:, None]
    y = torch.where(gen, torch.zeros(()), to_model(u))  # A = I; unknown pixels 0 (paper)
    x = ref.algorithm4(ref.sigmas_for_timesteps(ts), y, y, z, steps, lambda x0: torch.where(gen, x0, y),
                       torch.tensor(labels))
    check("inpaint", ours, to_unit(x))


def test_parity_colorize(models):
    pipe, unet, sched = models["uncond"]
    ref = Ref(unet, sched)
    ts = [30, 20, 10, 0]
    u = images01(2, 2)
    z, steps = noises(20, len(ts) - 1, (2, 3, 16, 16))
    ours = pipe.colorize(u, timesteps=ts, latents=z.numpy(), noise=[e.numpy() for e in steps], output_type="np").images

    q = orthogonal_with_first(torch.tensor(W_LUMA))
    keep = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)

    def mix(a, b):
        ca, cb = torch.einsum("bchw,cd->bdhw", a, q), torch.einsum("bchw,cd->bdhw", b, q)
        return torch.einsum("bdhw,cd->bchw", ca * keep + cb * (1 - keep), q)

    y = mix(to_model(u), torch.zeros(2, 3, 16, 16))
    x = ref.algorithm4(ref.sigmas_for_timesteps(ts), y, y, z, steps, lambda x0: mix(y, x0), None)
    w = torch.tensor(W_LUMA, dtype=torch.float32)
    gray = (torch.einsum("bchw,c->bhw", y, w) / w.sum()).clamp(-1, 1)[:, None].expand(-1, 3, -1, -1)
    x = shrink_toward(gray, x, dims=(1,))
    check("colorize", ours, to_unit(x))


@pytest.mark.parametrize("p", [4, 8])
def test_parity_super_resolve(models, p):
    pipe, unet, sched = models["cond"]
    ref = Ref(unet, sched)
    ts = [30, 20, 10, 0]
    k = 16 // p
    low = images01(3, 2, size=k)
    z, steps = noises(30 + p, len(ts) - 1, (2, 3, 16, 16))
    labels = [1, 9]
    ours = pipe.super_resolve(low, patch_size=p, timesteps=ts, class_labels=labels, latents=z.numpy(),
                              noise=[e.numpy() for e in steps], output_type="np").images

    q = orthogonal_with_first(torch.ones(p * p, dtype=torch.float64))

    def to_patches(x):  # [B, 3, 16, 16] -> [B, 3, k*k, p*p]
        return x.reshape(-1, 3, k, p, k, p).permute(0, 1, 2, 4, 3, 5).reshape(-1, 3, k * k, p * p)

    def from_patches(c):
        return c.reshape(-1, 3, k, k, p, p).permute(0, 1, 2, 4, 3, 5).reshape(-1, 3, 16, 16)

    def mix(a, b):
        ca, cb = torch.einsum("bcnd,de->bcne", to_patches(a), q), torch.einsum("bcnd,de->bcne", to_patches(b), q)
        cb[..., 0] = ca[..., 0]
        return from_patches(torch.einsum("bcne,de->bcnd", cb, q))

    y = torch.repeat_interleave(torch.repeat_interleave(to_model(low), p, dim=2), p, dim=3)
    x = ref.algorithm4(ref.sigmas_for_timesteps(ts), y, y, z, steps, lambda x0: mix(y, x0), torch.tensor(labels))
    blocks = lambda a: a.reshape(-1, 3, k, p, k, p)  # noqa: E731
    x = shrink_toward(blocks(y), blocks(x), dims=(3, 5)).reshape(-1, 3, 16, 16)
    check(f"super_resolve p={p}", ours, to_unit(x))


@pytest.mark.parametrize("sched_kw", [{}, {"sigmas": [6.0, 1.5, 0.3]}], ids=["default-5.38-2.24", "sigmas"])
def test_parity_stroke_edit(models, sched_kw):
    pipe, unet, sched = models["uncond"]
    ref = Ref(unet, sched)
    sigmas = sched_kw.get("sigmas") or ref.sigmas_for_timesteps([20, 16])
    if not sched_kw:  # the paper's stroke-guided schedule: 5.38 then 2.24
        assert abs(sigmas[0] - 5.38) < 5e-3 and abs(sigmas[1] - 2.24) < 5e-3
    u = images01(4, 3)
    z, steps = noises(40, len(sigmas) - 1, (3, 3, 16, 16))
    ours = pipe.edit(u, latents=z.numpy(), noise=[e.numpy() for e in steps], output_type="np", **sched_kw).images
    y = to_model(u)
    x = ref.algorithm4(sigmas, y, y, z, steps, lambda x0: x0, None)
    check(f"edit {sched_kw or 'default'}", ours, to_unit(x))


def test_parity_interpolate(models):
    pipe, unet, sched = models["cond"]
    ref = Ref(unet, sched)
    alphas = [0.0, 0.3, 0.7, 1.0]
    z1, z2 = randn(50, 3, 16, 16), randn(51, 3, 16, 16)
    ours = pipe.interpolate(alphas, latents=(z1.numpy(), z2.numpy()), class_labels=4, output_type="np").images

    a64, b64 = z1.double().flatten(), z2.double().flatten()
    psi = torch.arccos(torch.dot(a64, b64) / (a64.norm() * b64.norm()))
    z = torch.stack([(torch.sin((1 - a) * psi) * a64 + torch.sin(a * psi) * b64) / torch.sin(psi) for a in alphas])
    z = z.reshape(len(alphas), 3, 16, 16).float()
    x = ref.f(z * ref.smax, ref.smax, torch.full((len(alphas),), 4))
    check("interpolate", ours, to_unit(x))


# --- (b) what each method keeps -------------------------------------------------------------------
def test_inpaint_keeps_known_pixels_exactly(models):
    from PIL import Image

    pipe = models["cond"][0]
    u8 = (images01(5, 1)[0] * 255).round().astype(np.uint8)
    m = np.zeros((16, 16), np.uint8)
    m[2:9, 5:14] = 255
    img, mask = Image.fromarray(u8), Image.fromarray(m)
    out = pipe.inpaint(img, mask, batch_size=3, seed=0)
    known = m == 0
    for im in out.images:
        a = np.asarray(im)
        np.testing.assert_array_equal(a[known], u8[known])
        assert np.abs(a[~known].astype(int) - u8[~known]).mean() > 5  # the hole was filled, not copied
    np.testing.assert_allclose(
        pipe.inpaint(img, mask, seed=0, output_type="np").images[0][known], u8[known] / 255.0, rtol=0, atol=1e-6)


def test_edit_with_mask_changes_only_the_mask(models):
    pipe = models["uncond"][0]
    u = images01(12, 2)
    mask = np.zeros((16, 16), bool)
    mask[:, :7] = True
    out = pipe.edit(u, mask, seed=3, output_type="np").images
    assert np.abs(out[:, ~mask] - u[:, ~mask]).max() <= 1e-6
    assert np.abs(out[:, mask] - u[:, mask]).mean() > 0.02


@pytest.mark.parametrize("gray", [False, True])
def test_colorize_keeps_luminance(models, gray):
    from PIL import Image

    pipe = models["cond"][0]
    u = images01(6, 2)
    if gray:
        u = np.repeat((u @ W_LUMA.astype(np.float32))[..., None], 3, axis=-1)
    out = pipe.colorize(u, seed=1, output_type="np").images
    assert np.abs(out @ W_LUMA - u @ W_LUMA).max() <= 1e-5
    assert np.abs(out - u).mean() > 0.02  # the colors changed
    pil = pipe.colorize(Image.fromarray((u[0] * 255).round().astype(np.uint8)), seed=1).images[0]
    lum_in = (u[0] * 255).round() @ W_LUMA
    assert np.abs(np.asarray(pil, dtype=np.float64) @ W_LUMA - lum_in).max() <= 1.0  # within 1/255


@pytest.mark.parametrize("p", [2, 8])
def test_super_resolve_keeps_patch_means(models, p):
    pipe = models["uncond"][0]
    k = 16 // p
    low = images01(7, 2, size=k)
    low[0, 0, 0] = [0.0, 1.0, 0.02]  # saturated patches still keep their means
    out = pipe.super_resolve(low, patch_size=p, seed=2, num_inference_steps=3, output_type="np").images
    means = out.reshape(2, k, p, k, p, 3).mean(axis=(2, 4))
    assert np.abs(means - low).max() <= 1e-5
    assert out.reshape(2, k, p, k, p, 3).std(axis=(2, 4)).mean() > 0.01  # detail was added


@pytest.mark.parametrize("name,labels", [("uncond", None), ("cond", 5)])
@pytest.mark.parametrize("sched_kw", [{}, {"timesteps": [22, 0]}], ids=["1step", "ts22-0"])
def test_interpolation_endpoints_are_the_generations(models, name, labels, sched_kw):
    pipe = models[name][0]
    out = pipe.interpolate([0.0, 0.5, 1.0], seed=[11, 12], class_labels=labels, output_type="np", **sched_kw).images
    g1 = pipe(seed=11, class_labels=labels, output_type="np", **sched_kw).images[0]
    g2 = pipe(seed=12, class_labels=labels, output_type="np", **sched_kw).images[0]
    assert np.abs(out[0] - g1).max() <= 1e-6 and np.abs(out[2] - g2).max() <= 1e-6
    assert np.abs(out[1] - g1).max() > 1e-3 and np.abs(out[1] - g2).max() > 1e-3


def test_interpolation_labels_from_the_first_seed(models):
    pipe = models["cond"][0]
    out = pipe.interpolate([0.0, 1.0], seed=[3, 4], rng="torch", output_type="np").images
    np.testing.assert_allclose(out[0], pipe(seed=3, rng="torch", output_type="np").images[0], atol=1e-6)


def test_default_schedules(models):
    pipe = models["cond"][0]
    cfg = pipe.scheduler_config
    assert editing.timesteps_for_sigmas(cfg, editing.STROKE_SIGMAS) == [20, 16]
    s = editing.editing_schedule(cfg, default={"num_inference_steps": 5}).sigmas
    np.testing.assert_allclose(s[:-1], [80, 23.61, 5.38, 0.8229, 0.0628], rtol=2e-3)
    u = images01(8, 1)
    z, steps = noises(60, 4, (1, 3, 16, 16))
    kw = dict(class_labels=[2], latents=z.numpy(), output_type="np")
    a = pipe.colorize(u, noise=[e.numpy() for e in steps], **kw).images
    b = pipe.colorize(u, num_inference_steps=5, noise=[e.numpy() for e in steps], **kw).images
    np.testing.assert_array_equal(a, b)
    c = pipe.edit(u, noise=[steps[0].numpy()], **kw).images
    d = pipe.edit(u, timesteps=[20, 16], noise=[steps[0].numpy()], **kw).images
    np.testing.assert_array_equal(c, d)


def test_seeds_batches_and_outputs(models):
    pipe = models["cond"][0]
    u = images01(9, 1)
    a = pipe.colorize(u, batch_size=3, seed=[1, 2, 3], class_labels=[0, 1, 2], output_type="np").images
    b = pipe.colorize(u, seed=2, class_labels=[1], output_type="np").images
    np.testing.assert_allclose(a[1], b[0], atol=1e-6)
    c = pipe.colorize(u, batch_size=3, seed=[1, 2, 3], class_labels=[0, 1, 2], output_type="np").images
    np.testing.assert_array_equal(a, c)
    t1 = pipe.edit(u, seed=7, rng="torch", output_type="np").images
    # seed=7 is torch.manual_seed(7): the global generator, from which diffusers also draws the labels
    t2 = pipe.edit(u, generator=torch.manual_seed(7), output_type="np").images
    np.testing.assert_array_equal(t1, t2)
    (imgs,) = pipe.inpaint(u[0], np.ones((16, 16), bool), seed=0, return_dict=False)
    assert len(imgs) == 1 and imgs[0].size == (16, 16) and imgs[0].mode == "RGB"
    big = pipe.edit(images01(9, 1, size=32), seed=0, output_type="np").images  # resized to 16x16
    assert big.shape == (1, 16, 16, 3)


@pytest.mark.parametrize("method", ["inpaint", "colorize", "super_resolve", "edit", "interpolate"])
@pytest.mark.parametrize("kwargs,match", [
    ({"timesteps": [0, 22]}, "descending"),
    ({"timesteps": [40, 0]}, "num_train_timesteps"),
    ({"timesteps": [5, -2]}, ">= 0"),
    ({"timesteps": [22, 0], "num_inference_steps": 2}, "one of"),
    ({"num_inference_steps": 41}, "num_inference_steps"),
])
def test_schedule_validated_like_generation(models, method, kwargs, match):
    pipe = models["cond"][0]
    with pytest.raises(ValueError, match=match):
        _call(pipe, method, **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    ({"sigmas": [2.0, 5.0]}, "descending"),
    ({"sigmas": [100.0, 1.0]}, "sigma_min, sigma_max"),
    ({"sigmas": [5.0, 1.0], "timesteps": [20, 16]}, "at most one"),
    ({"sigmas": []}, "empty"),
])
def test_sigmas_validated(models, kwargs, match):
    with pytest.raises(ValueError, match=match):
        models["uncond"][0].edit(images01(0, 1), **kwargs)


def _call(pipe, method, **kwargs):
    u = images01(0, 1)
    if method == "inpaint":
        return pipe.inpaint(u, np.ones((16, 16), bool), **kwargs)
    if method == "super_resolve":
        return pipe.super_resolve(images01(0, 1, size=2), **kwargs)
    if method == "interpolate":
        return pipe.interpolate(**kwargs)
    return getattr(pipe, method)(u, **kwargs)


# --- (c) bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("call,exc,match", [
    (lambda p: p.edit(images01(0, 1, size=20), resize=False), ValueError, "image is 20x20 but this needs 16x16"),
    (lambda p: p.inpaint(images01(0, 1), np.ones((8, 8), bool), resize=False), ValueError, "mask is 8x8"),
    (lambda p: p.inpaint(images01(0, 1), np.ones((2, 3, 16, 16), bool)), ValueError, "mask has shape"),
    (lambda p: p.inpaint(images01(0, 2), np.ones((3, 16, 16), bool)), ValueError, "image holds 2 images, which does not match mask"),
    (lambda p: p.inpaint(images01(0, 1), np.ones((16, 16)) * 0.7), TypeError, "mask must be a boolean"),
    (lambda p: p.inpaint(images01(0, 1), "mask.png"), TypeError, "mask must be"),
    (lambda p: p.colorize("photo.png"), TypeError, "image must be a PIL image"),
    (lambda p: p.colorize([[0.5]]), TypeError, r"image\[0\]\[0\] must be a PIL image"),
    (lambda p: p.colorize(images01(0, 1) * 2), ValueError, r"image values must be in \[0, 1\]"),
    (lambda p: p.colorize(np.zeros((16, 16, 4), np.float32)), ValueError, "alpha"),
    (lambda p: p.colorize(np.zeros((1, 16, 16, 3), np.int64)), TypeError, "image must hold"),
    (lambda p: p.colorize(images01(0, 1), batch_size=9), ValueError, "batch_size 9 is outside"),
    (lambda p: p.colorize(images01(0, 2), batch_size=3), ValueError, "image holds 2"),
    (lambda p: p.colorize(images01(0, 1), output_type="pt"), ValueError, "output_type"),
    (lambda p: p.colorize(images01(0, 1), class_labels=[10]), ValueError, "out of range"),
    (lambda p: p.colorize(images01(0, 1), latents=np.zeros((1, 3, 8, 8), np.float32)), ValueError, "latents has shape"),
    (lambda p: p.colorize(images01(0, 1), num_inference_steps=2, noise=[]), ValueError, "noise has 0"),
    (lambda p: p.colorize(images01(0, 1), seed=-1), ValueError, "seed"),
    (lambda p: p.super_resolve(images01(0, 1), resize=False), ValueError, "image is 16x16 but this needs 2x2"),
    (lambda p: p.super_resolve(images01(0, 1, size=3), patch_size=5), ValueError, "patch_size"),
    (lambda p: p.super_resolve(images01(0, 1, size=2), patch_size=2.0), TypeError, "patch_size"),
    (lambda p: p.interpolate([0, 1.5]), ValueError, "alphas must be in"),
    (lambda p: p.interpolate(["a"]), TypeError, "alphas"),
    (lambda p: p.interpolate([0.1] * 9), ValueError, "alphas has 9"),
    (lambda p: p.interpolate([0, 1], latents=np.zeros((3, 3, 16, 16), np.float32)), ValueError, "latents has shape"),
    (lambda p: p.interpolate([0, 1], seed=[1, 2, 3]), ValueError, "seed has 3"),
    (lambda p: p.edit(images01(0, 1), resize="no"), TypeError, "resize"),
])
def test_bad_input(models, call, exc, match):
    with pytest.raises(exc, match=match):
        call(models["cond"][0])


def test_labels_on_unconditional_model(models):
    with pytest.raises(ValueError, match="unconditional"):
        models["uncond"][0].colorize(images01(0, 1), class_labels=[1])


# --- CLI --------------------------------------------------------------------------------------------
def test_cli_edit_every_method(small_models, tmp_path, capsys):
    from PIL import Image

    engine = str(small_models["cond"][1])
    Image.fromarray((images01(1, 1)[0] * 255).astype(np.uint8)).save(tmp_path / "in.png")
    m = np.zeros((16, 16), np.uint8)
    m[4:12, 4:12] = 255
    Image.fromarray(m).save(tmp_path / "mask.png")
    runs = {
        "inpaint": ["--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "--batch", "2"],
        "colorize": ["--image", str(tmp_path / "in.png"), "--steps", "2", "--class-labels", "3"],
        "superres": ["--image", str(tmp_path / "in.png"), "--patch-size", "4"],  # full size: averaged down
        "stroke": ["--image", str(tmp_path / "in.png"), "--sigmas", "5.38,2.24"],
        "interpolate": ["--seed", "1,2", "--alphas", "0,0.5,1"],
    }
    for method, extra in runs.items():
        out = tmp_path / f"{method}.png"
        assert main(["edit", method, engine, *extra, "--seed" if "--seed" not in extra else "--rng", *(
            ["0"] if "--seed" not in extra else ["numpy"]), "--out", str(out)]) == 0
        size = Image.open(out).size
        assert size == ((2 + 3 * 18, 2 + 18) if method == "interpolate" else (2 + 2 * 18, 2 + (2 if method == "inpaint" else 1) * 18))
    assert "wrote" in capsys.readouterr().out
    assert main(["edit", "inpaint", engine, "--image", str(tmp_path / "in.png")]) == 2
    assert "needs --mask" in capsys.readouterr().err
    assert main(["edit", "colorize", engine, "--image", str(tmp_path / "in.png"), "--timesteps", "0,20"]) == 2
    assert "descending" in capsys.readouterr().err


def test_editing_runs_without_torch(small_models):
    from tests.runtime.test_isolation import run_without_torch

    r = run_without_torch(
        f"""
        import sys, numpy as np, cmrt
        pipe = cmrt.load({str(small_models['uncond'][1])!r})
        u = np.full((16, 16, 3), 0.5, np.float32)
        m = np.zeros((16, 16), bool); m[:8] = True
        shapes = [pipe.inpaint(u, m, seed=0, output_type='np').images.shape,
                  pipe.colorize(u, seed=0, output_type='np').images.shape,
                  pipe.super_resolve(u[:2, :2], seed=0, output_type='np').images.shape,
                  pipe.edit(u, seed=0, output_type='np').images.shape,
                  pipe.interpolate([0, 1], seed=[1, 2], output_type='np').images.shape]
        assert 'torch' not in sys.modules
        print(shapes)
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str([(1, 16, 16, 3)] * 4 + [(2, 16, 16, 3)])

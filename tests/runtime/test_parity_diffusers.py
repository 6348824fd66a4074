"""End-to-end parity: cmrt (ONNX Runtime, numpy scheduler) vs diffusers' ConsistencyModelPipeline.

Both get the same latents and step noise (drawn here with torch's generator in diffusers'
order), so the images must agree to float rounding: max abs error <= 1e-4 on [0, 1] images.
cmrt runs each step's arithmetic in numpy, and, as a second variant, in the step graph.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import cmrt  # noqa: E402
from cmrt.build.folder import build_engine_folder
from cmrt.engine.options import BuildOptions  # noqa: E402

from tests.models import save_small_model  # noqa: E402

VARIANTS = [(True, "scale_shift"), (True, "default"), (False, "scale_shift"), (False, "default")]
SCHEDULES = [{"num_inference_steps": 1}, {"timesteps": [22, 0]}, {"num_inference_steps": 3}]


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: f"{'cond' if v[0] else 'uncond'}-{v[1]}")
def model(request, tmp_path_factory):
    conditional, shift = request.param
    root = tmp_path_factory.mktemp(f"m-{conditional}-{shift}")
    folder = save_small_model(root / "model", conditional, shift)
    engine = build_engine_folder(str(folder), out=root / "engine", options=BuildOptions(precisions=("fp32",)))
    ref = diffusers.ConsistencyModelPipeline.from_pretrained(folder)
    ref.set_progress_bar_config(disable=True)
    return ref, {False: cmrt.load(engine), True: cmrt.load(engine, step_graph=True)}, conditional


def torch_draws(seed, batch, size, steps):
    """Latents, then one noise tensor per step (only when steps > 1), as diffusers draws them."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 3, size, size)
    latents = torch.randn(shape, generator=g)
    noise = [torch.randn(shape, generator=g) for _ in range(steps)] if steps > 1 else None
    return latents, noise


@pytest.mark.parametrize("step_graph", [False, True], ids=["numpy-step", "step-graph"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("sched", SCHEDULES, ids=["1step", "ts22-0", "3steps"])
def test_images_match_diffusers(model, batch, sched, step_graph):
    ref, pipes, conditional = model
    pipe = pipes[step_graph]
    assert pipe.step_graph == step_graph
    steps = sched.get("num_inference_steps") or len(sched["timesteps"])
    labels = [7, 2, 9][:batch] if conditional else None
    seed = 11 * batch + steps
    latents, _ = torch_draws(seed, batch, 16, steps)
    ref_images = ref(
        batch_size=batch, class_labels=labels, generator=torch.Generator().manual_seed(seed), output_type="np", **sched
    ).images
    _, noise = torch_draws(seed, batch, 16, steps)
    ours = pipe(
        batch_size=batch,
        class_labels=labels,
        latents=latents.numpy(),
        noise=[z.numpy() for z in noise] if noise else None,
        output_type="np",
        **sched,
    ).images
    assert ours.shape == ref_images.shape == (batch, 16, 16, 3) and ours.dtype == np.float32
    err = float(np.abs(ours - ref_images).max())
    assert err <= 1e-4, f"max abs error {err}"
    # the images are not trivially saturated: parity means something
    assert 0.05 < float(ours.std())


@pytest.mark.parametrize("step_graph", [False, True], ids=["numpy-step", "step-graph"])
def test_pil_output_matches(model, step_graph):
    ref, pipes, conditional = model
    pipe = pipes[step_graph]
    labels = [3] if conditional else None
    latents, _ = torch_draws(5, 1, 16, 1)
    ref_img = ref(class_labels=labels, generator=torch.Generator().manual_seed(5)).images[0]
    ours = pipe(class_labels=labels, latents=latents.numpy()).images[0]
    diff = np.abs(np.asarray(ref_img, dtype=int) - np.asarray(ours, dtype=int))
    assert ours.size == ref_img.size and ours.mode == "RGB"
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01

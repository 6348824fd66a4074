"""The shipped `digits` model: it loads (cmrt and diffusers), is deterministic, and makes digits."""
import numpy as np
import pytest

import cmrt
from cmrt.engine.models import DEFAULT_MODEL, SHIPPED_MODELS_DIR, resolve_model

DIGITS = SHIPPED_MODELS_DIR / "digits"
pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def digits_pipe(tmp_path_factory):
    pytest.importorskip("torch")
    from cmrt.build.folder import build_engine_folder
    from cmrt.engine.options import BuildOptions

    out = tmp_path_factory.mktemp("digits") / "engine"
    return cmrt.load(build_engine_folder("digits", out=out, options=BuildOptions(precisions=("fp32",))))


def test_digits_is_the_default_and_small():
    assert DEFAULT_MODEL == "digits"
    assert resolve_model("digits").kind == "builtin"
    size = sum(p.stat().st_size for p in DIGITS.rglob("*") if p.is_file())
    assert size < 10 * 2**20, f"shipped model is {size / 2**20:.1f} MiB"
    assert (DIGITS / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_diffusers_loads_the_shipped_folder():
    diffusers = pytest.importorskip("diffusers")
    pipe = diffusers.ConsistencyModelPipeline.from_pretrained(DIGITS)
    assert pipe.unet.config.num_class_embeds == 10


def test_deterministic_for_a_seed(digits_pipe):
    a = digits_pipe(batch_size=4, class_labels=[0, 1, 2, 3], seed=7, output_type="np").images
    b = digits_pipe(batch_size=4, class_labels=[0, 1, 2, 3], seed=7, output_type="np").images
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("two_step", [False, True], ids=["1step", "2step"])
def test_independent_classifier_reads_the_requested_digit(digits_pipe, two_step):
    from benchmarks.quality.digits import score_samples

    source = resolve_model("digits")
    sched = {"timesteps": list(source.default_timesteps)} if two_step else {"num_inference_steps": 1}
    labels = np.repeat(np.arange(10), 4)  # 40 samples, 4 per class
    images = np.concatenate([
        digits_pipe(batch_size=8, class_labels=labels[i:i + 8], seed=100 + i, output_type="np", **sched).images
        for i in range(0, 40, 8)
    ])
    scores = score_samples(images, labels)
    # on 1,000 samples the model scores >= 90% (README); a 40-sample CI check allows for sampling noise
    assert scores["agreement"] >= 0.8, scores

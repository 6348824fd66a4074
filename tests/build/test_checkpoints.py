"""A checkpoint is checked before anything is built from it: its configs (with the rules the
run time applies to an engine folder), the model's size (before any weight exists), and its
weight files. Every failure is a CheckpointError (a ValueError) naming the file and field."""
import inspect
import json
import math
import shutil

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from cmrt.build import checkpoints  # noqa: E402
from cmrt.build.architectures import IMAGENET64, LSUN256, TINY_RANDOM  # noqa: E402
from cmrt.build.folder import build_engine_folder  # noqa: E402
from cmrt.engine.options import BuildOptions  # noqa: E402
from cmrt.runtime.scheduler import SchedulerConfig  # noqa: E402
from tests.models import save_small_model, small_unet_config  # noqa: E402


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory):
    return save_small_model(tmp_path_factory.mktemp("ckpt") / "model", True, "scale_shift")


@pytest.fixture
def no_model_built(monkeypatch):
    """Fail loudly if diffusers is asked to build a UNet or scheduler (what allocates) before the check."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was instantiated before its config was checked")

    monkeypatch.setattr(diffusers.UNet2DModel, "from_pretrained", refuse)
    monkeypatch.setattr(diffusers.UNet2DModel, "__init__", refuse)
    monkeypatch.setattr(diffusers.CMStochasticIterativeScheduler, "__init__", refuse)


def edited_copy(src, dst, part, **changes):
    shutil.copytree(src, dst)
    path = dst / part
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))  # NaN is written as the literal NaN, which json reads back
    return dst


def build(folder, out):
    return build_engine_folder(str(folder), out=out, options=BuildOptions(precisions=("fp32",), opt_batch=2, max_batch=2))


def assert_checkpoint_error(excinfo, *fragments):
    assert type(excinfo.value).__name__ == "CheckpointError", type(excinfo.value)
    msg = str(excinfo.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg


UNET_CASES = {
    "block_out_channels-1e5": ({"block_out_channels": [100000, 100000]}, "block_out_channels"),
    "num_class_embeds-1e9": ({"num_class_embeds": 10**9}, "billion parameters"),
    "sample_size-1e5": ({"sample_size": 100000}, "sample_size must be an integer in 1..1024"),
    "layers_per_block-1e6": ({"layers_per_block": 10**6}, "layers_per_block must be an integer in 1..64"),
    "within-field-limits-but-huge": ({"block_out_channels": [8192, 8192], "layers_per_block": 8}, "billion parameters"),
    "sample_size-not-divisible": ({"sample_size": 15}, "sample_size 15 must be divisible by 2"),
    "sample_size-a-string": ({"sample_size": "16"}, "sample_size must be an integer"),
    "channels-differ": ({"in_channels": 3, "out_channels": 6}, "in_channels and out_channels must be equal"),
    "lists-disagree": ({"block_out_channels": [32, 64, 64]}, "one entry per resolution"),
    "not-a-UNet2DModel": ({"_class_name": "UNet2DConditionModel"}, "cmrt exports UNet2DModel"),
}


def refused_build(good_folder, tmp_path, part, changes, fragment):
    """Build a copy of the good model with `changes` in `part`: a CheckpointError naming the file, nothing written."""
    folder = edited_copy(good_folder, tmp_path / "model", part, **changes)
    with pytest.raises(ValueError) as e:
        build(folder, tmp_path / "engine")
    assert_checkpoint_error(e, str(folder / part), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no folder, no staging debris
    return folder, e.value


@pytest.mark.parametrize("case", list(UNET_CASES))
def test_absurd_unet_configs_are_refused_before_the_model_exists(good_folder, tmp_path, no_model_built, case):
    refused_build(good_folder, tmp_path, "unet/config.json", *UNET_CASES[case])


SCHEDULER_CASES = {
    "sigma_max--1": ({"sigma_max": -1}, "need 0 < sigma_min < sigma_max"),
    "sigma_min-NaN": ({"sigma_min": math.nan}, "sigma_min must be finite"),
    "N-1": ({"num_train_timesteps": 1}, "num_train_timesteps must be an integer in 2..10000"),
    "N-1e9": ({"num_train_timesteps": 10**9}, "num_train_timesteps must be an integer in 2..10000"),
    "DDPMScheduler": ({"_class_name": "DDPMScheduler"}, "this config is for 'DDPMScheduler'"),
    "clip_denoised-a-string": ({"clip_denoised": "yes"}, "clip_denoised must be true or false"),
    "sigma_data-0": ({"sigma_data": 0}, "sigma_data must be in (0"),
}


@pytest.mark.parametrize("case", list(SCHEDULER_CASES))
def test_bad_scheduler_configs_are_refused_at_build_with_the_run_times_rule(good_folder, tmp_path, no_model_built, case):
    folder, error = refused_build(good_folder, tmp_path, "scheduler/scheduler_config.json", *SCHEDULER_CASES[case])
    # the same rule, word for word, where the run time reads an engine folder's scheduler record
    raw = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    with pytest.raises(ValueError) as runtime:
        SchedulerConfig.from_dict(raw, where="manifest scheduler")
    assert str(runtime.value).split(": ", 1)[1] == str(error).split(".json: ", 1)[1]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_weight_file_is_a_checkpoint_error(good_folder, tmp_path, damage):
    folder = tmp_path / "model"
    shutil.copytree(good_folder, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"garbage": b"not a safetensors file" * 10, "truncated": data[: len(data) // 2], "empty": b""}[damage])
    with pytest.raises(ValueError) as e:
        build(folder, tmp_path / "engine")
    assert_checkpoint_error(e, str(folder / "unet"), "damaged or incomplete")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize("part,text", [("unet/config.json", "{not json"), ("scheduler/scheduler_config.json", "")])
def test_an_unreadable_config_names_its_file(good_folder, tmp_path, no_model_built, part, text):
    folder = tmp_path / "model"
    shutil.copytree(good_folder, folder)
    (folder / part).write_text(text)
    with pytest.raises(ValueError) as e:
        build(folder, tmp_path / "engine")
    assert_checkpoint_error(e, str(folder / part), "cannot be read as JSON")


def test_a_model_larger_than_memory_is_refused(good_folder, tmp_path, monkeypatch, no_model_built):
    monkeypatch.setattr(checkpoints, "_physical_memory", lambda: 1 << 20)
    with pytest.raises(ValueError) as e:
        build(good_folder, tmp_path / "engine")
    assert_checkpoint_error(e, "more than this machine's 0.0 GiB of memory")


def test_the_defaults_are_diffusers_own():
    from cmrt.engine import scheduler_config, unet_config

    for cls, ours in ((diffusers.UNet2DModel, unet_config.DEFAULTS), (diffusers.CMStochasticIterativeScheduler, scheduler_config.DEFAULTS)):
        theirs = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}
        assert {k: theirs[k] for k in ours} == ours


@pytest.mark.parametrize("name,cfg", [
    ("imagenet64", IMAGENET64), ("lsun256", LSUN256), ("tiny-random", TINY_RANDOM),
    ("small-default-shift", small_unet_config(False, "default")),
    ("conv-resampling-fourier", dict(TINY_RANDOM, downsample_type="conv", upsample_type="conv", time_embedding_type="fourier")),
    ("diffusers-defaults", {"sample_size": 64}),
])
def test_the_parameter_estimate_is_the_models_count(name, cfg):
    """Estimated from the config alone; counted here on torch's meta device (no memory)."""
    from cmrt.engine.unet_config import check_unet_config

    with torch.device("meta"):
        unet = diffusers.UNet2DModel(**cfg)
    assert check_unet_config(cfg)["parameters"] == sum(p.numel() for p in unet.parameters())

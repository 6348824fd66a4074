"""Built-in models that need no download, materialised as ordinary diffusers folders.

They are written in `ConsistencyModelPipeline.save_pretrained` layout and then loaded
through exactly the same code path as a user's local folder, so the demo and the tests
exercise the real loader.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from .._atomic import staging_dir
from ..registry import BUILTIN_TIMESTEPS, SHIPPED_MODELS_DIR, is_diffusers_folder

logger = logging.getLogger(__name__)

# Bump when the recipe changes, so cached folders and engines built from them are renewed.
TINY_RANDOM_VERSION = 1

# diffusers' own ConsistencyModelPipeline test UNet (tests/pipelines/consistency_models), class-conditional.
TINY_RANDOM_UNET = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    num_class_embeds=1000,
    block_out_channels=(32, 64),
    attention_head_dim=8,
    down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D"),
    resnet_time_scale_shift="scale_shift",
    attn_norm_num_groups=32,
    upsample_type="resnet",
    downsample_type="resnet",
)


def cache_root() -> Path:
    return Path(os.environ.get("CMRT_CACHE", Path.home() / ".cache" / "cmrt")).expanduser()


def save_consistency_folder(unet, scheduler, folder: Path) -> None:
    """Write a UNet and scheduler as a diffusers ConsistencyModelPipeline folder, atomically."""
    from diffusers import ConsistencyModelPipeline

    with staging_dir(folder) as stage:
        ConsistencyModelPipeline(unet=unet, scheduler=scheduler).save_pretrained(stage, safe_serialization=True)


def builtin_folder(name: str) -> tuple[Path, str]:
    """Return (folder, fingerprint) of a built-in model, creating the folder on first use."""
    if name in BUILTIN_TIMESTEPS or (SHIPPED_MODELS_DIR / name).is_dir():
        from .loading import folder_fingerprint

        folder = SHIPPED_MODELS_DIR / name
        if not is_diffusers_folder(folder):
            raise ValueError(f"the shipped model {name!r} is missing from {folder}; reinstall cmrt")
        return folder, folder_fingerprint(folder)
    if name != "tiny-random":
        raise ValueError(f"unknown built-in model {name!r}")
    folder = cache_root() / "models" / f"tiny-random-v{TINY_RANDOM_VERSION}"
    if not (folder / "model_index.json").is_file():
        import torch
        from diffusers import CMStochasticIterativeScheduler, UNet2DModel

        logger.info("creating built-in model tiny-random in %s", folder)
        gen_state = torch.random.get_rng_state()
        try:
            torch.manual_seed(0)
            unet = UNet2DModel(**TINY_RANDOM_UNET)
        finally:
            torch.random.set_rng_state(gen_state)
        save_consistency_folder(unet, CMStochasticIterativeScheduler(num_train_timesteps=40), folder)
    return folder, f"builtin:tiny-random:v{TINY_RANDOM_VERSION}"

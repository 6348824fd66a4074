"""The openai consistency-model UNet architectures, as diffusers UNet2DModel configs.

Used to build real-size models with random weights when no checkpoint can be downloaded
(export parity and latency do not depend on the weights), and the built-in `tiny-random`. Configs from diffusers'
scripts/convert_consistency_to_diffusers.py (see shared/reference/consistency-math.md).
"""
from __future__ import annotations

from pathlib import Path

from ..engine.atomic import staging_dir

# What every openai consistency UNet shares (RGB in and out, 64-wide attention heads, resnet
# up/down sampling); each architecture below adds its own sizes and blocks.
_OPENAI_UNET = dict(in_channels=3, out_channels=3, attention_head_dim=64, upsample_type="resnet", downsample_type="resnet")


def _blocks(resnet: int, attn: int) -> dict:
    """`resnet` ResnetDownsample then `attn` AttnDown blocks, and the mirror image going up."""
    return dict(
        down_block_types=("ResnetDownsampleBlock2D",) * resnet + ("AttnDownBlock2D",) * attn,
        up_block_types=("AttnUpBlock2D",) * attn + ("ResnetUpsampleBlock2D",) * resnet,
    )


IMAGENET64 = dict(
    _OPENAI_UNET, **_blocks(1, 3), sample_size=64, layers_per_block=3, num_class_embeds=1000,
    block_out_channels=(192, 384, 576, 768), resnet_time_scale_shift="scale_shift", attn_norm_num_groups=32,
)

LSUN256 = dict(
    _OPENAI_UNET, **_blocks(3, 3), sample_size=256, layers_per_block=2, num_class_embeds=None,
    block_out_channels=(256, 256, 512, 512, 1024, 1024), resnet_time_scale_shift="default",
)

# diffusers' own ConsistencyModelPipeline test UNet (tests/pipelines/consistency_models), class-conditional:
# the built-in `tiny-random` model.
TINY_RANDOM = dict(
    _OPENAI_UNET, **_blocks(1, 1), sample_size=32, layers_per_block=2, num_class_embeds=1000,
    block_out_channels=(32, 64), attention_head_dim=8, resnet_time_scale_shift="scale_shift", attn_norm_num_groups=32,
)

# name -> (UNet2DModel config, the scheduler's num_train_timesteps)
ARCHITECTURES = {"imagenet64": (IMAGENET64, 40), "lsun256": (LSUN256, 40), "tiny-random": (TINY_RANDOM, 40)}


def save_consistency_folder(unet, scheduler, folder: Path) -> None:
    """Write a UNet and scheduler as a diffusers ConsistencyModelPipeline folder, atomically."""
    from diffusers import ConsistencyModelPipeline

    with staging_dir(folder) as stage:
        ConsistencyModelPipeline(unet=unet, scheduler=scheduler).save_pretrained(stage, safe_serialization=True)


def random_weight_folder(arch: str, folder: Path, seed: int = 0) -> Path:
    """A diffusers ConsistencyModelPipeline folder of `arch` with seeded random weights (cached)."""
    import torch
    from diffusers import CMStochasticIterativeScheduler, UNet2DModel

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}")
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    config, n_train = ARCHITECTURES[arch]
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        unet = UNet2DModel(**config)
    finally:
        torch.random.set_rng_state(state)
    save_consistency_folder(unet, CMStochasticIterativeScheduler(num_train_timesteps=n_train), folder)
    return folder

"""Small UNets built from real diffusers configs, saved as ConsistencyModelPipeline folders."""
from __future__ import annotations

from pathlib import Path


def small_unet_config(conditional: bool, shift: str, sample_size: int = 16) -> dict:
    return dict(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        num_class_embeds=10 if conditional else None,
        block_out_channels=(32, 64),
        attention_head_dim=8,
        down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D"),
        resnet_time_scale_shift=shift,
        attn_norm_num_groups=32,
        norm_num_groups=32,
        upsample_type="resnet",
        downsample_type="resnet",
    )


def save_small_model(
    folder: Path, conditional: bool, shift: str, num_train_timesteps: int = 40, seed: int = 0, sample_size: int = 16
) -> Path:
    import torch
    from diffusers import CMStochasticIterativeScheduler, ConsistencyModelPipeline, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(**small_unet_config(conditional, shift, sample_size)).eval()
    # random init leaves the output convolution near zero in some diffusers versions; make outputs matter
    with torch.no_grad():
        for p in unet.conv_out.parameters():
            p.normal_(0, 0.05)
    sched = CMStochasticIterativeScheduler(num_train_timesteps=num_train_timesteps)
    ConsistencyModelPipeline(unet=unet, scheduler=sched).save_pretrained(folder, safe_serialization=True)
    return folder

"""FLOPs of one UNet call, counted once from the model itself (torch's FlopCounterMode)."""
from __future__ import annotations


def unet_flops(model_folder: str, batch: int = 1) -> float:
    """Floating-point operations (2 per multiply-add) of one UNet forward at `batch`."""
    import torch
    from diffusers import UNet2DModel
    from torch.utils.flop_counter import FlopCounterMode

    unet = UNet2DModel.from_pretrained(model_folder, subfolder="unet").eval()
    s, c = unet.config.sample_size, unet.config.in_channels
    x = torch.zeros(batch, c, s, s)
    t = torch.full((batch,), 500.0)
    labels = torch.zeros(batch, dtype=torch.long) if unet.config.num_class_embeds is not None else None
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        unet(x, t, class_labels=labels)
    return float(counter.get_total_flops())

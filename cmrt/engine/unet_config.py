"""The limits a UNet config (`unet/config.json`) must meet before a model is built from it.

diffusers' `UNet2DModel(**config)` allocates every weight before it checks anything, so a
config that says `block_out_channels: [100000]` or `num_class_embeds: 1e9` asks for hundreds
of GB. `check_unet_config` reads the fields that size the model, checks their types and
ranges, and estimates the parameter count from them (`estimate_parameters`, exact for the
block types the openai checkpoints use, within a few percent for the others) before any
weight exists. Torch-free, so build time checks a checkpoint with the same rules the engine
folder's `unet` record can be held to.
"""
from __future__ import annotations

import numbers
from typing import Any, Mapping

UNET_CLASS = "UNet2DModel"

# UNet2DModel.__init__'s defaults for the fields read here (tests/build/test_checkpoints.py compares them).
DEFAULTS: dict[str, Any] = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896),
    "layers_per_block": 2,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,
}

# The openai models have 296 M (ImageNet-64) and 526 M (LSUN-256) parameters.
MAX_PARAMETERS = 4_000_000_000
MAX_SAMPLE_SIZE = 1024  # the openai models are 64 and 256 pixels; activations grow with its square
MAX_BLOCKS = 8
MAX_CHANNELS = 16384
MAX_LAYERS_PER_BLOCK = 64
IMAGE_CHANNELS = (1, 3)  # what the pipeline turns into images (grayscale or RGB)


def _int(where: str, name: str, value: Any, lo: int, hi: int, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
        raise ValueError(f"{where}: {name} must be an integer in {lo}..{hi}{hint}, got {value!r}")
    return int(value)


def _names(where: str, name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value \
            or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: {name} must be a non-empty list of block names, got {value!r}")
    return tuple(value)


def check_unet_config(config: Mapping[str, Any], where: str = "unet config") -> dict[str, Any]:
    """The size-determining fields of a UNet2DModel config, validated, with diffusers' defaults.

    Raises ValueError naming `where` and the field, also when the estimated parameter count
    exceeds MAX_PARAMETERS. Returns the fields with `parameters` (the estimate) added.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"{where} must be a JSON object (a dict), got {type(config).__name__}")
    cls_name = config.get("_class_name", UNET_CLASS)
    if cls_name != UNET_CLASS:
        raise ValueError(f"{where}: cmrt exports {UNET_CLASS} consistency models; this config is for {cls_name!r}")
    cfg = {k: config.get(k, d) for k, d in DEFAULTS.items()}
    down = _names(where, "down_block_types", cfg["down_block_types"])
    up = _names(where, "up_block_types", cfg["up_block_types"])
    chans = cfg["block_out_channels"]
    if isinstance(chans, (str, bytes)) or not isinstance(chans, (list, tuple)) or not 1 <= len(chans) <= MAX_BLOCKS:
        raise ValueError(f"{where}: block_out_channels must be a list of 1..{MAX_BLOCKS} channel counts, got {chans!r}")
    chans = tuple(_int(where, "block_out_channels[i]", c, 1, MAX_CHANNELS) for c in chans)
    if not len(down) == len(up) == len(chans):
        raise ValueError(
            f"{where}: down_block_types ({len(down)}), up_block_types ({len(up)}) and block_out_channels "
            f"({len(chans)}) must have one entry per resolution each"
        )
    cfg.update(down_block_types=down, up_block_types=up, block_out_channels=chans)
    factor = 2 ** (len(chans) - 1)
    s = cfg["sample_size"]
    cfg["sample_size"] = _int(where, "sample_size", s, 1, MAX_SAMPLE_SIZE, " (the image size in pixels)")
    if cfg["sample_size"] % factor:
        raise ValueError(
            f"{where}: sample_size {s} must be divisible by {factor} (the UNet halves it {len(chans) - 1} times)"
        )
    cfg["in_channels"] = _int(where, "in_channels", cfg["in_channels"], 1, MAX_CHANNELS)
    cfg["out_channels"] = _int(where, "out_channels", cfg["out_channels"], 1, MAX_CHANNELS)
    if cfg["in_channels"] != cfg["out_channels"] or cfg["in_channels"] not in IMAGE_CHANNELS:
        raise ValueError(
            f"{where}: in_channels and out_channels must be equal and one of {IMAGE_CHANNELS} (the consistency "
            f"step adds the UNet's output to its input image), got {cfg['in_channels']} and {cfg['out_channels']}"
        )
    cfg["layers_per_block"] = _int(where, "layers_per_block", cfg["layers_per_block"], 1, MAX_LAYERS_PER_BLOCK)
    if cfg["num_class_embeds"] is not None:
        cfg["num_class_embeds"] = _int(where, "num_class_embeds", cfg["num_class_embeds"], 1, MAX_PARAMETERS)
    if cfg["time_embedding_dim"] is not None:
        cfg["time_embedding_dim"] = _int(where, "time_embedding_dim", cfg["time_embedding_dim"], 1, MAX_CHANNELS)
    if cfg["time_embedding_type"] == "learned":
        cfg["num_train_timesteps"] = _int(where, "num_train_timesteps", cfg["num_train_timesteps"], 1, MAX_PARAMETERS)
    if cfg["attention_head_dim"] is not None:
        cfg["attention_head_dim"] = _int(where, "attention_head_dim", cfg["attention_head_dim"], 1, MAX_CHANNELS)
    n = estimate_parameters(cfg)
    if n > MAX_PARAMETERS:
        raise ValueError(
            f"{where}: this config describes a UNet of about {n / 1e9:.3g} billion parameters "
            f"({4 * n / 2**30:.3g} GiB in fp32), over cmrt's limit of {MAX_PARAMETERS / 1e9:g} billion "
            "(the openai models have 0.3 and 0.53); check block_out_channels, layers_per_block and num_class_embeds"
        )
    cfg["parameters"] = n
    return cfg


def estimate_parameters(cfg: Mapping[str, Any]) -> int:
    """Parameters of `UNet2DModel(**cfg)` from a config checked by `check_unet_config`, in closed form
    (no loop over layers, so a huge `layers_per_block` costs nothing to estimate)."""
    c = cfg["block_out_channels"]
    n_blocks, layers = len(c), cfg["layers_per_block"]
    t = cfg["time_embedding_dim"] or 4 * c[0]
    shift = 2 if cfg["resnet_time_scale_shift"] == "scale_shift" else 1

    def conv3(i: int, o: int) -> int:
        return 9 * i * o + o

    def linear(i: int, o: int) -> int:
        return i * o + o

    def resnet(i: int, o: int) -> int:
        shortcut = i * o + o if i != o else 0
        return 2 * i + conv3(i, o) + linear(t, shift * o) + 2 * o + conv3(o, o) + shortcut

    def attention(ch: int) -> int:
        return 2 * ch + 4 * linear(ch, ch)

    def resampler(block: str, kind: str, ch: int) -> int:
        if block.startswith("Resnet") or (block.startswith("Attn") and kind == "resnet"):
            return resnet(ch, ch)
        return conv3(ch, ch)

    fourier = cfg["time_embedding_type"] == "fourier"
    t_in = 2 * c[0] if fourier else c[0]
    total = conv3(cfg["in_channels"], c[0]) + linear(t_in, t) + linear(t, t)
    if fourier:
        total += c[0]
    elif cfg["time_embedding_type"] == "learned":
        total += cfg["num_train_timesteps"] * c[0]
    if cfg["class_embed_type"] is None and cfg["num_class_embeds"] is not None:
        total += cfg["num_class_embeds"] * t
    elif cfg["class_embed_type"] == "timestep":
        total += linear(t_in, t) + linear(t, t)
    for i, block in enumerate(cfg["down_block_types"]):
        cin, cout = c[max(i - 1, 0)], c[i]
        total += resnet(cin, cout) + (layers - 1) * resnet(cout, cout)
        if "Attn" in block:
            total += layers * attention(cout)
        if i < n_blocks - 1:
            total += resampler(block, cfg["downsample_type"], cout)
    if cfg["mid_block_type"] is not None:
        total += 2 * resnet(c[-1], c[-1]) + (attention(c[-1]) if cfg["add_attention"] else 0)
    rev = c[::-1]
    for i, block in enumerate(cfg["up_block_types"]):
        prev, cout, cin = rev[max(i - 1, 0)], rev[i], rev[min(i + 1, n_blocks - 1)]
        # layers + 1 resnets, each on its input concatenated with a skip: the first's input is the
        # previous block's output, the last's skip comes from the resolution below (`cin`)
        total += resnet(prev + cout, cout) + (layers - 1) * resnet(cout + cout, cout) + resnet(cout + cin, cout)
        if "Attn" in block:
            total += (layers + 1) * attention(cout)
        if i < n_blocks - 1:
            total += resampler(block, cfg["upsample_type"], cout)
    total += 2 * c[0] + conv3(c[0], cfg["out_channels"])
    return int(total)

"""Built-in models that need no download, materialised as ordinary diffusers folders.

They are written in `ConsistencyModelPipeline.save_pretrained` layout and then loaded
through exactly the same code path as a user's local folder, so the demo and the tests
exercise the real loader.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..engine.models import BUILTIN_TIMESTEPS, SHIPPED_MODELS_DIR, is_diffusers_folder
from ..engine.paths import cache_root
from .architectures import random_weight_folder
from .fingerprint import folder_fingerprint

logger = logging.getLogger(__name__)

# Bump when the recipe changes, so cached folders and engines built from them are renewed.
TINY_RANDOM_VERSION = 1

def builtin_folder(name: str) -> tuple[Path, str]:
    """Return (folder, fingerprint) of a built-in model, creating the folder on first use."""
    if name in BUILTIN_TIMESTEPS or (SHIPPED_MODELS_DIR / name).is_dir():
        folder = SHIPPED_MODELS_DIR / name
        if not is_diffusers_folder(folder):
            raise ValueError(f"the shipped model {name!r} is missing from {folder}; reinstall cmrt")
        return folder, folder_fingerprint(folder)
    if name != "tiny-random":
        raise ValueError(f"unknown built-in model {name!r}")
    folder = cache_root() / "models" / f"tiny-random-v{TINY_RANDOM_VERSION}"
    if not (folder / "model_index.json").is_file():
        logger.info("creating built-in model tiny-random in %s", folder)
        random_weight_folder("tiny-random", folder, seed=0)
    return folder, f"builtin:tiny-random:v{TINY_RANDOM_VERSION}"

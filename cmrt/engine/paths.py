"""Where cmrt keeps things on disk, declared once so that build and load always agree.

`cmrt build NAME` writes `engine_root() / NAME` and `cmrt.load("NAME")` reads it, both
honouring `$CMRT_ENGINE_DIR`; caches (the tiny-random model, TensorRT timing caches) live
under `cache_root()` (`$CMRT_CACHE`).
"""
from __future__ import annotations

import os
from pathlib import Path

ENGINE_DIR_ENV = "CMRT_ENGINE_DIR"
CACHE_ENV = "CMRT_CACHE"
DEFAULT_ENGINE_ROOT = "engines"


def engine_root() -> Path:
    """The folder that holds engine folders by model name: `$CMRT_ENGINE_DIR`, else ./engines."""
    return Path(os.environ.get(ENGINE_DIR_ENV) or DEFAULT_ENGINE_ROOT).expanduser()


def cache_root() -> Path:
    """cmrt's cache: `$CMRT_CACHE`, else ~/.cache/cmrt."""
    return Path(os.environ.get(CACHE_ENV) or (Path.home() / ".cache" / "cmrt")).expanduser()


def default_engine_dir(slug: str) -> Path:
    """The engine folder of a model whose filesystem-safe name is `slug`."""
    return engine_root() / slug

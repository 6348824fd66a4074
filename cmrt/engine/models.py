"""What a `MODEL` argument names: an openai checkpoint, a hub id, a local folder, or a built-in model.

Resolution is pure string/path logic (no torch, no network) so the CLI can reject a typo
instantly; the actual loading lives in `cmrt.build.checkpoints`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# The nine openai checkpoints converted to diffusers, with the 2-step timesteps from
# openai/consistency_models scripts/launch.sh (None where launch.sh gives none).
OPENAI_CHECKPOINTS: dict[str, tuple[int, ...] | None] = {
    "cd_imagenet64_l2": (22, 0),
    "cd_imagenet64_lpips": (22, 0),
    "ct_imagenet64": (106, 0),
    "cd_bedroom256_l2": (18, 0),
    "cd_bedroom256_lpips": (17, 0),
    "ct_bedroom256": (67, 0),
    "cd_cat256_l2": None,
    "cd_cat256_lpips": None,
    "ct_cat256": (62, 0),
}

# Models that need no download. `digits` is a small class-conditional consistency model that
# ships inside the package (trained by scripts/train_digits.py on scikit-learn's digits);
# `tiny-random` is a randomly initialised UNet of diffusers' own test size: it exercises the
# whole path but draws noise, not pictures.
BUILTIN_MODELS = ("digits", "tiny-random")
DEFAULT_MODEL = "digits"
SHIPPED_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
# 2-step timesteps chosen for the shipped models by scripts/digits_quality.py
DIGITS_TWO_STEP = (40, 0)
BUILTIN_TIMESTEPS: dict[str, tuple[int, ...]] = {"digits": DIGITS_TWO_STEP}


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "openai" | "hub" | "local" | "builtin"
    name: str  # what the user typed
    repo_id: str | None = None  # hub id for openai/hub kinds
    path: Path | None = None  # folder for local kinds
    revision: str | None = None

    @property
    def slug(self) -> str:
        """A filesystem-safe name, used for default engine folder names."""
        if self.kind == "local":
            return self.path.name if self.path is not None else "local"
        return self.name.replace("/", "--")

    @property
    def default_timesteps(self) -> tuple[int, ...] | None:
        if self.kind == "builtin":
            return BUILTIN_TIMESTEPS.get(self.name)
        return OPENAI_CHECKPOINTS.get(self.name) if self.kind == "openai" else None


def looks_like_path(model: str, roots: tuple[Path, ...] = ()) -> bool:
    """Whether `model` is meant as a path rather than a hub id: it exists, starts with `.`, `/`
    or `~`, or its first component is a folder in the current folder or in one of `roots`.

    `cmrt.load` treats such a name as a folder and never as something to download: a missing
    `engines/digits` must not fetch whatever someone publishes as the hub id `engines/digits`.
    """
    if model.startswith((".", "/", "~")) or Path(model).expanduser().exists():
        return True
    parts = Path(model).parts
    return len(parts) >= 2 and any((root / parts[0]).exists() for root in (Path("."), *roots))


def is_diffusers_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() or (path / "unet" / "config.json").is_file()


def resolve_model(model: str | os.PathLike, revision: str | None = None) -> ModelSource:
    """Decide what `model` names, or raise a ValueError that lists what is accepted."""
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if not isinstance(model, str):
        raise TypeError(f"model must be a name, hub id or folder path (str), got {type(model).__name__}")
    if not model.strip():
        raise ValueError("model is empty; pass a checkpoint name such as 'cd_imagenet64_l2', a hub id or a folder")
    path = Path(model).expanduser()
    if path.is_dir():
        if not is_diffusers_folder(path):
            raise ValueError(
                f"{path} is a folder but not a diffusers ConsistencyModelPipeline folder "
                "(no model_index.json or unet/config.json); save one with pipe.save_pretrained(folder)"
            )
        return ModelSource(kind="local", name=model, path=path.resolve())
    if model in BUILTIN_MODELS:
        return ModelSource(kind="builtin", name=model)
    if model in OPENAI_CHECKPOINTS:
        return ModelSource(kind="openai", name=model, repo_id=f"openai/diffusers-{model}", revision=revision)
    if model.startswith("openai/diffusers-") and model[len("openai/diffusers-"):] in OPENAI_CHECKPOINTS:
        short = model[len("openai/diffusers-"):]
        return ModelSource(kind="openai", name=short, repo_id=model, revision=revision)
    parts = model.split("/")
    if len(parts) == 2 and all(parts) and not model.startswith((".", "/", "~")):
        return ModelSource(kind="hub", name=model, repo_id=model, revision=revision)
    if os.sep in model or model.startswith((".", "~")):
        raise ValueError(f"model folder {model} does not exist")
    known = ", ".join(list(OPENAI_CHECKPOINTS) + list(BUILTIN_MODELS))
    raise ValueError(
        f"unknown model {model!r}; use one of {known}, a hub id such as 'openai/diffusers-cd_imagenet64_l2', "
        "or a local diffusers folder"
    )

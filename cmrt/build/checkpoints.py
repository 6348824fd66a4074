"""Load a consistency checkpoint's UNet and scheduler config with the standard diffusers code path."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.errors import ModelUnavailableError
from ..engine.models import ModelSource, is_diffusers_folder
from .builtin import builtin_folder
from .fingerprint import folder_fingerprint

logger = logging.getLogger(__name__)

_HUB_PATTERNS = ["model_index.json", "unet/*", "scheduler/*"]


@dataclass
class LoadedModel:
    unet: Any  # diffusers.UNet2DModel, fp32, eval mode
    scheduler_config: dict[str, Any]
    folder: Path
    source: dict[str, Any] = field(default_factory=dict)  # what goes into the manifest


def _download(source: ModelSource) -> tuple[Path, str]:
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(source.repo_id, revision=source.revision, allow_patterns=_HUB_PATTERNS))
    except Exception as e:  # the hub client raises many types for "offline"
        raise ModelUnavailableError(
            f"could not download {source.repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}). "
            "If this machine cannot reach the hub, download the model elsewhere "
            f"(`huggingface-cli download {source.repo_id} --local-dir FOLDER`, or "
            "`ConsistencyModelPipeline.from_pretrained(...).save_pretrained(FOLDER)`), copy FOLDER here "
            "and pass the folder path as MODEL."
        ) from e
    # snapshot folders are named by the commit hash they hold
    return path, path.name


def model_folder(source: ModelSource) -> tuple[Path, dict[str, Any]]:
    """Where the model's files are on disk, and the source record for the manifest."""
    if source.kind == "builtin":
        folder, fp = builtin_folder(source.name)
        return folder, {"model": source.name, "kind": "builtin", "revision": None, "fingerprint": fp}
    if source.kind == "local":
        folder = Path(source.path)
        if not is_diffusers_folder(folder):
            raise ValueError(f"{folder} is not a diffusers ConsistencyModelPipeline folder")
        return folder, {
            "model": str(folder),
            "kind": "local",
            "revision": None,
            "fingerprint": folder_fingerprint(folder),
        }
    folder, commit = _download(source)
    return folder, {
        "model": source.repo_id,
        "kind": source.kind,
        "revision": commit,
        "fingerprint": f"hub:{source.repo_id}@{commit}",
    }


def load_model(source: ModelSource) -> LoadedModel:
    from diffusers import CMStochasticIterativeScheduler, UNet2DModel

    folder, record = model_folder(source)
    unet_cfg = folder / "unet" / "config.json"
    if not unet_cfg.is_file():
        raise ValueError(f"{folder} has no unet/config.json; it is not a ConsistencyModelPipeline folder")
    cls_name = json.loads(unet_cfg.read_text()).get("_class_name")
    if cls_name != "UNet2DModel":
        raise ValueError(f"cmrt exports UNet2DModel consistency models; {folder}/unet is a {cls_name}")
    if not (folder / "scheduler" / "scheduler_config.json").is_file():
        raise ValueError(f"{folder} has no scheduler/scheduler_config.json; save the whole pipeline with save_pretrained")
    logger.info("loading UNet from %s", folder)
    unet = UNet2DModel.from_pretrained(folder, subfolder="unet").float().eval()
    scheduler = CMStochasticIterativeScheduler.from_pretrained(folder, subfolder="scheduler")
    sched_cfg = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    return LoadedModel(unet=unet, scheduler_config=sched_cfg, folder=folder, source=record)

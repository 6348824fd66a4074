"""Load a consistency checkpoint's UNet and scheduler config with the standard diffusers code path.

The folder's configs are checked first (`check_model_folder`: the UNet's size, the scheduler's
fields, with the rules the run time applies to an engine folder) and before any weight is
allocated; a config, weight file or memory problem is a `CheckpointError` naming the file.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.errors import CheckpointError, ModelUnavailableError
from ..engine.models import ModelSource, is_diffusers_folder
from ..engine.scheduler_config import check_scheduler_config
from ..engine.unet_config import check_unet_config
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


def _read_config(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path.parent.parent} has no {path.parent.name}/{path.name}; {what}")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path} cannot be read as JSON ({e}); restore it from the checkpoint") from e


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # not POSIX
        return None


def check_model_folder(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The UNet config (with its parameter estimate) and the scheduler config of a diffusers folder,
    validated before anything is built from them; a CheckpointError names the file and field."""
    unet_path = folder / "unet" / "config.json"
    sched_path = folder / "scheduler" / "scheduler_config.json"
    unet_raw = _read_config(unet_path, "it is not a ConsistencyModelPipeline folder")
    sched_raw = _read_config(sched_path, "save the whole pipeline with save_pretrained")
    try:
        unet_cfg = check_unet_config(unet_raw, str(unet_path))
        check_scheduler_config(sched_raw, str(sched_path))
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    need, have = 4 * unet_cfg["parameters"], _physical_memory()
    if have is not None and need > have:
        raise CheckpointError(
            f"{unet_path}: the UNet's {unet_cfg['parameters']:,} parameters need {need / 2**30:.1f} GiB in fp32, "
            f"more than this machine's {have / 2**30:.1f} GiB of memory; build on a larger machine"
        )
    return unet_cfg, sched_raw


def model_folder(source: ModelSource) -> tuple[Path, dict[str, Any]]:
    """Where the model's files are on disk, and the source record for the manifest."""
    if source.kind == "builtin":
        folder, fp = builtin_folder(source.name)
        check_model_folder(folder)
        return folder, {"model": source.name, "kind": "builtin", "revision": None, "fingerprint": fp}
    if source.kind == "local":
        folder = Path(source.path)
        if not is_diffusers_folder(folder):
            raise ValueError(f"{folder} is not a diffusers ConsistencyModelPipeline folder")
        check_model_folder(folder)
        return folder, {
            "model": str(folder),
            "kind": "local",
            "revision": None,
            "fingerprint": folder_fingerprint(folder),
        }
    folder, commit = _download(source)
    check_model_folder(folder)
    return folder, {
        "model": source.repo_id,
        "kind": source.kind,
        "revision": commit,
        "fingerprint": f"hub:{source.repo_id}@{commit}",
    }


def load_model(source: ModelSource) -> LoadedModel:
    from diffusers import CMStochasticIterativeScheduler, UNet2DModel

    folder, record = model_folder(source)  # its configs checked
    logger.info("loading UNet from %s", folder)
    try:
        unet = UNet2DModel.from_pretrained(folder, subfolder="unet").float().eval()
    except (OSError, ValueError, RuntimeError, KeyError, EOFError) as e:
        # diffusers reports a damaged, truncated or mismatched weight file as an OSError (or a
        # RuntimeError from load_state_dict); the message names the file, the cause says why
        cause = e.__cause__
        why = f" ({type(cause).__name__}: {' '.join(str(cause).split())})" if cause is not None else ""
        fix = ("check the files' permissions" if isinstance(cause or e, PermissionError)
               else "the weight file is damaged or incomplete: download or save the checkpoint again")
        raise CheckpointError(f"cannot load the UNet weights of {folder / 'unet'}: {' '.join(str(e).split())}{why}; {fix}") from e
    scheduler = CMStochasticIterativeScheduler.from_pretrained(folder, subfolder="scheduler")
    sched_cfg = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    return LoadedModel(unet=unet, scheduler_config=sched_cfg, folder=folder, source=record)

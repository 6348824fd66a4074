"""Trace a diffusers UNet2DModel into ONNX and check the result against PyTorch.

The exported graph always has fp32 inputs and outputs, whatever its inner precision: the
runtime then drives fp32 and fp16 graphs identically, and the timestep (t = 250 ln sigma,
about 1095.5 at sigma = 80) is never rounded to fp16 or to an integer before the UNet's
own sinusoidal embedding sees it.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..engine.io_spec import CLASS_LABELS, OUTPUT, PRECISIONS, SAMPLE, TIMESTEP, TOLERANCE, io_spec, sample_inputs

logger = logging.getLogger(__name__)

# Above this many bytes of weights a single protobuf file cannot hold the graph (2 GiB limit).
EXTERNAL_DATA_THRESHOLD = 1_500_000_000


def _torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16}[precision]


def make_wrapper(unet, precision: str):
    """A module with the fixed cmrt I/O contract around a (copied, cast) UNet."""
    import copy

    import torch

    from diffusers.utils import logging as diffusers_logging

    dtype = _torch_dtype(precision)
    diffusers_logging.set_verbosity_error()  # its fp16-cast advice targets from_pretrained users, not export
    conditional = unet.config.num_class_embeds is not None

    class UNetForExport(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = copy.deepcopy(unet).to(dtype).eval()

        def forward(self, sample, timestep, class_labels=None):
            out = self.unet(sample.to(dtype), timestep, class_labels=class_labels, return_dict=False)[0]
            return out.float()

    wrapper = UNetForExport().eval()
    wrapper.conditional = conditional
    return wrapper


def unet_record(unet) -> dict[str, Any]:
    """The manifest's `unet` facts of a diffusers UNet2DModel (what the runtime and validations read)."""
    cfg = unet.config
    return {
        "class": "UNet2DModel",
        "sample_size": int(cfg.sample_size),
        "in_channels": int(cfg.in_channels),
        "out_channels": int(cfg.out_channels),
        "num_class_embeds": None if cfg.num_class_embeds is None else int(cfg.num_class_embeds),
        "block_out_channels": list(cfg.block_out_channels),
        "layers_per_block": int(cfg.layers_per_block),
        "resnet_time_scale_shift": cfg.resnet_time_scale_shift,
        "parameters": int(sum(p.numel() for p in unet.parameters())),
    }


def random_inputs(unet, scheduler: Mapping[str, Any], batch: int, seed: int) -> dict[str, np.ndarray]:
    """`sample_inputs` for a torch UNet."""
    return sample_inputs(unet_record(unet), scheduler, batch, seed)


def torch_reference(unet, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        labels = feeds.get(CLASS_LABELS)
        out = unet(
            torch.from_numpy(feeds[SAMPLE]),
            torch.from_numpy(feeds[TIMESTEP]),
            class_labels=None if labels is None else torch.from_numpy(labels),
            return_dict=False,
        )[0]
    return out.float().numpy()


def weight_bytes(unet, precision: str) -> int:
    per = 4 if precision == "fp32" else 2
    return sum(p.numel() for p in unet.parameters()) * per


def export_onnx(
    unet, out_file: Path, precision: str, scheduler: Mapping[str, Any], opset: int = 17, separate_weights: bool = False
) -> dict[str, Any]:
    """Export to `out_file`, plus `out_file.data` when the weights are too big for one protobuf
    or `separate_weights` asks for it (other graphs in the folder then share that one copy)."""
    import onnx
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    wrapper = make_wrapper(unet, precision)
    feeds = random_inputs(unet, scheduler, 2, seed=0)
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    names = list(feeds)
    dynamic = {n: {0: "batch"} for n in names + [OUTPUT]}
    out_file = Path(out_file)
    external = separate_weights or weight_bytes(unet, precision) > EXTERNAL_DATA_THRESHOLD
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cmrt-export-", dir=out_file.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shape asserts in diffusers blocks
            torch.onnx.export(
                wrapper,
                args,
                str(raw),
                dynamo=False,
                opset_version=opset,
                input_names=names,
                output_names=[OUTPUT],
                dynamic_axes=dynamic,
                do_constant_folding=True,
            )
        model = onnx.load(str(raw), load_external_data=True)
        model.doc_string = f"cmrt UNet export ({precision}, fp32 I/O)"
        data_name = out_file.name + ".data"
        onnx.save_model(
            model,
            str(out_file),
            save_as_external_data=external,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=1024,
        )
        del model
    if external:
        os.chmod(out_file.parent / data_name, 0o644)  # onnx writes it private; it should read like the graph file
    onnx.checker.check_model(str(out_file))
    files = [out_file.name] + ([data_name] if external else [])
    logger.info("exported %s UNet to %s in %.1f s", precision, out_file, time.perf_counter() - t0)
    return {
        "file": out_file.name,
        "external_data": data_name if external else None,
        "files": files,
        "opset": opset,
        "precision": precision,
        **io_spec(unet_record(unet)),
        "export_seconds": round(time.perf_counter() - t0, 2),
    }


def validate_onnx(
    unet,
    onnx_file: Path,
    precision: str,
    scheduler: Mapping[str, Any],
    batch_sizes=(1, 2),
    extra_feeds: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Run the export in ONNX Runtime (CPU) against the fp32 PyTorch UNet; raise if it is off.
    `extra_feeds`: inputs besides the UNet's own (a Winograd graph's transformed filters)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_file), so, providers=["CPUExecutionProvider"])
    errors = {}
    for b in batch_sizes:
        feeds = random_inputs(unet, scheduler, b, seed=1000 + b)
        ref = torch_reference(unet, feeds)
        got = sess.run([OUTPUT], {**feeds, **(extra_feeds or {})})[0]
        if got.shape != ref.shape:
            raise RuntimeError(f"{onnx_file.name}: output shape {got.shape} at batch {b}, PyTorch gives {ref.shape}")
        if not np.isfinite(got).all():
            raise RuntimeError(f"{onnx_file.name}: NaN or Inf in the ONNX Runtime output at batch {b}")
        errors[b] = float(np.abs(got.astype(np.float64) - ref).max())
    worst = max(errors.values())
    tol = TOLERANCE["onnx"][precision]
    if worst > tol:
        raise RuntimeError(
            f"{onnx_file.name}: ONNX Runtime differs from PyTorch by {worst:.3g} (max abs), over the {precision} "
            f"tolerance {tol}; per batch size: {errors}"
        )
    logger.info("validated %s: max abs error %.3g at batch sizes %s", onnx_file.name, worst, list(batch_sizes))
    return {
        "reference": "PyTorch fp32 UNet",
        "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "batch_sizes": list(batch_sizes),
        "max_abs_error": worst,
        "max_abs_error_per_batch": {str(k): v for k, v in errors.items()},
        "tolerance": tol,
    }

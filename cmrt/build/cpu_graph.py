"""The CPU-only fp32 graph: the exported UNet with Winograd 3x3 convolutions, kept where it pays.

Why a second graph rather than rewriting the first: GPU backends (TensorRT, ONNX Runtime
CUDA) pick their own convolution algorithms and must see plain Convs, and OpenVINO fuses
plain Convs best. Only ONNX Runtime on the CPU, which has no fast-convolution algorithm
of its own, gets this graph. It holds no weights: its transformed filters are graph inputs.
The build computes them once from the fp32 export's weight file (the manifest says where each
3x3 filter lies in it) and stores them beside it, page-aligned, in their own file, which the
runtime memory-maps: a load computes nothing and copies nothing, and the 3x3 weights they
replace are never loaded by the Winograd graph (cmrt/engine/winograd_filters.py).

Whether Winograd pays depends on the model and the machine: on wide layers it does fewer
multiplications than the direct kernel, on a 16x16 model with 32-64 channels the transforms
cost more than they save (docs/benchmarks.md has the measured figures). So in "auto" mode
the build times both graphs here, on this machine, call by call in turn, and keeps the
Winograd graph only when it is clearly faster; the manifest records the timings either way.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..engine.atomic import write_bytes_atomic
from ..engine.winograd import DEFAULT_BAND_MIB, DEFAULT_F4_MIN_SPATIAL, DEFAULT_MIN_SPATIAL
from ..engine.winograd_filters import mapped_filters, write_filters
from .cpu_timing import median_run_ms

logger = logging.getLogger(__name__)

WINOGRAD_FILE = "unet.fp32.winograd.onnx"
FILTERS_FILE = "unet.fp32.winograd.filters"  # float32 [alpha^2, K, C] per stored filter, page-aligned
# Keep the Winograd graph in "auto" mode only when its median is at least this much faster.
MIN_GAIN = 0.05
# "auto" does not make a graph whose extra filter memory would exceed this share of the machine's RAM.
MAX_RAM_SHARE = 0.25


def machine_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # not POSIX
        return None


def filter_location(weight, runtime_filter: dict[str, Any], weights_file: str) -> dict[str, Any]:
    """Where a rewritten Conv's 3x3 weights lie in the fp32 weight file, for the runtime to read."""
    from onnx import TensorProto

    info = {e.key: e.value for e in weight.external_data}
    if weight.data_location != TensorProto.EXTERNAL or info.get("location") != weights_file:
        raise ValueError(f"weight {weight.name} is not in {weights_file}; export fp32 with separate_weights=True")
    if weight.data_type != TensorProto.FLOAT:
        raise ValueError(f"weight {weight.name} is not float32")
    k, c, kh, kw = runtime_filter["shape"]
    location = {
        "input": runtime_filter["input"],
        "offset": int(info.get("offset", 0)),
        "length": int(info.get("length", k * c * kh * kw * 4)),
        "shape": [k, c, kh, kw],
        "tile": int(runtime_filter["tile"]),
    }
    if "chunks" in runtime_filter:  # transformed per call: the graph reads these 3x3 weights in these parts
        location["chunks"] = [list(map(int, ch)) for ch in runtime_filter["chunks"]]
    return location


def winograd_rewrite(folder: Path, fp32_entry: dict[str, Any], min_spatial: int = DEFAULT_MIN_SPATIAL,
                     f4_min_spatial: int = DEFAULT_F4_MIN_SPATIAL, per_call_tiles: tuple[int, ...] = (),
                     band_mib: int = DEFAULT_BAND_MIB):
    """The fp32 export's Winograd rewrite, in memory: (the graph, without weights; the rewrite's
    report; where each rewritten Conv's 3x3 weights lie in the fp32 weight file).

    `min_spatial`, `f4_min_spatial`: the smallest map rewritten, and the smallest rewritten with
    F(4x4) tiles (cmrt/build/winograd.py says why the defaults are what they are);
    `per_call_tiles`: the tiles whose filters the graph transforms at every call instead of taking
    them stored (`rewrite_winograd`); `band_mib`: the bound on a convolution's V per image above
    which it runs in bands of rows (0: none).
    """
    import onnx

    from .winograd import conv_input_shapes, rewrite_winograd

    if not fp32_entry.get("external_data"):
        raise ValueError("the Winograd graph shares the fp32 weight file; export fp32 with separate_weights=True")
    plain = folder / fp32_entry["file"]
    # Shape inference reads small constants, so it gets the whole model; the rewrite then gets
    # the graph alone, whose initializers keep pointing into the fp32 weight file.
    shapes = conv_input_shapes(onnx.load(str(plain)))
    model = onnx.load(str(plain), load_external_data=False)
    weights = {t.name: t for t in model.graph.initializer}  # before the rewrite drops the 3x3 ones
    report = rewrite_winograd(model, min_spatial=min_spatial, input_shapes=shapes, filters="input",
                              f4_min_spatial=f4_min_spatial, per_call_tiles=per_call_tiles, band_bytes=band_mib << 20)
    filters = [filter_location(weights[f["weight"]], f, fp32_entry["external_data"]) for f in report.runtime_filters]
    return model, report, filters


def add_winograd_graph(stage: Path, fp32_entry: dict[str, Any], unet, mode: str, scheduler: dict[str, Any],
                       sizes: tuple[int, int] = (DEFAULT_MIN_SPATIAL, DEFAULT_F4_MIN_SPATIAL),
                       per_call_tiles: tuple[int, ...] = (), band_mib: int = DEFAULT_BAND_MIB) -> dict[str, Any]:
    """Write, validate and (in "auto" mode) time the Winograd graph beside the fp32 export;
    `sizes`: (min_spatial, f4_min_spatial) of the rewrite; `per_call_tiles`: the tiles whose
    filters are transformed at every call rather than stored; `band_mib`: `winograd_rewrite`'s.

    Returns the manifest record; `record["used"]` says whether the file stays in the folder.
    """
    import onnx

    from .onnx_export import random_inputs, validate_onnx

    if mode not in ("auto", "always"):
        raise ValueError(f"mode must be 'auto' or 'always', got {mode!r}")
    plain = stage / fp32_entry["file"]
    model, report, locations = winograd_rewrite(stage, fp32_entry, *sizes, per_call_tiles=per_call_tiles, band_mib=band_mib)
    record: dict[str, Any] = {
        "file": WINOGRAD_FILE,
        "mode": mode,
        "rewrite": report.to_dict(),
        "weights_file": fp32_entry["external_data"],
        "filters": locations,
    }
    if not report.rewritten:
        record.update(used=False, reason="no 3x3 convolution the rewrite applies to")
        logger.info("winograd: nothing to rewrite; the CPU runs the plain fp32 graph")
        return record
    added = report.added_filter_bytes
    ram = machine_memory_bytes()
    if mode == "auto" and ram and added > MAX_RAM_SHARE * ram:
        record.update(
            used=False,
            reason=f"its transformed filters would take {added / 1e9:.1f} GB more memory, over "
            f"{MAX_RAM_SHARE:.0%} of this machine's {ram / 1e9:.1f} GB (--winograd always overrides)",
        )
        logger.info("winograd CPU graph dropped: %s", record["reason"])
        return record
    path = stage / WINOGRAD_FILE
    write_bytes_atomic(path, model.SerializeToString())
    del model
    onnx.checker.check_model(str(path))
    write_filters(stage, record, FILTERS_FILE)
    filters = mapped_filters(stage, record)  # validated and timed as the runtime will feed them
    record["validation"] = validate_onnx(unet, path, "fp32", scheduler, extra_feeds=filters)
    if mode == "always":
        record.update(used=True, reason="--winograd always")
        return record
    feeds = random_inputs(unet, scheduler, 1, seed=7)
    (plain_ms, n_plain), (wino_ms, n_wino) = median_run_ms([(plain, None, feeds), (path, filters, feeds)])
    del filters
    used = wino_ms < (1 - MIN_GAIN) * plain_ms
    record["timing"] = {
        "batch": 1,
        "plain_ms": round(plain_ms, 3),
        "winograd_ms": round(wino_ms, 3),
        "runs": [n_plain, n_wino],
        "speedup": round(plain_ms / wino_ms, 3),
        "min_gain": MIN_GAIN,
    }
    if used:
        record.update(used=True, reason=f"the Winograd graph measured {plain_ms / wino_ms:.2f}x the plain graph's speed at batch 1")
    else:
        path.unlink()
        (stage / FILTERS_FILE).unlink()
        record.update(
            used=False,
            reason=f"the Winograd graph measured {plain_ms / wino_ms:.2f}x the plain graph's speed at batch 1 "
            f"(kept from {1 / (1 - MIN_GAIN):.2f}x)",
        )
    logger.info("winograd CPU graph %s: %s", "kept" if used else "dropped", record["reason"])
    return record

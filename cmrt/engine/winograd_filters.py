"""The Winograd CPU graph's transformed filters in an engine folder: written by the build, mapped by a load.

A Winograd CPU graph takes its transformed filters U = G W G^T as inputs (cmrt/engine/winograd.py
has the tiles). `cmrt build` computes them once and stores them in the folder (`write_filters`),
page-aligned, so that a load maps them (`mapped_filters`): nothing is computed, nothing is
copied, and a page is read only when ONNX Runtime first touches it. Left in the graph, the same
GEMMs would be folded by ONNX Runtime at every session creation; computed at every load, they
cost the transform plus the first touch of the filters in fresh memory. Folders built before the
filters were stored still load: their filters are computed from the 3x3 weights
(`filters_from_weight_file`).

A filter record with `chunks` is transformed by the graph at every call: nothing of it is stored,
and its inputs are views of its 3x3 weights in the weight file, mapped like the stored filters
(`per_call_weights`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .winograd import KERNEL, filter_shape, per_call_inputs, tile_of

# Stored filters start on page boundaries so that each maps on its own and a page never holds two.
FILTER_ALIGN = 4096


def write_filters(folder, record: dict, name: str) -> int:
    """Transform every filter of `record` from the weight file and write them to `folder / name`.

    One filter is in memory at a time. Each stored filter record gets `u_offset`, where its float32
    [alpha^2, K, C] array starts in the file (a multiple of FILTER_ALIGN); per-call records (with
    `chunks`) store nothing. `record["filters_file"]` becomes `name`. The file is written inside a
    build's staging folder, which is what makes it atomic. Returns the file's size.
    """
    path = Path(folder) / name
    offset = 0
    with open(path, "wb") as f:
        for rec in (r for r in record["filters"] if "chunks" not in r):
            u = filters_from_weight_file(folder, {**record, "filters": [rec]})[rec["input"]]
            pad = -offset % FILTER_ALIGN
            f.write(b"\0" * pad)
            offset += pad
            rec["u_offset"] = offset
            f.write(u.tobytes())
            offset += u.nbytes
            del u
        f.flush()
        os.fsync(f.fileno())
    record["filters_file"] = name
    return offset


def mapped_filters(folder, record: dict) -> dict[str, np.ndarray]:
    """The Winograd graph's filter inputs, memory-mapped read-only (no copy, no computation): the
    stored transformed filters, and the 3x3 weights of those made per call (`per_call_weights`)."""
    from .errors import EngineFolderError
    from .manifest import inside

    path = inside(Path(folder), record["filters_file"])
    stored = [f for f in record["filters"] if "chunks" not in f]
    out = per_call_weights(folder, record)
    if not stored:
        return out
    whole = np.memmap(path, dtype=np.uint8, mode="r")  # one mapping; each filter is a view into it
    for f in stored:
        shape = filter_shape(f)
        start = f.get("u_offset")
        if not isinstance(start, int) or start < 0 or start % FILTER_ALIGN or start + int(np.prod(shape)) * 4 > whole.size:
            raise EngineFolderError(
                f"{path}: the stored Winograd filter {f['input']} does not fit the file (offset {start}, "
                f"file {whole.size} bytes); rebuild the folder with `cmrt build`"
            )
        out[f["input"]] = np.ndarray(shape, dtype=np.float32, buffer=whole, offset=start)
    return out


def winograd_filters(folder, record: dict) -> dict[str, np.ndarray]:
    """The inputs a Winograd CPU graph needs: the stored filters where the folder has them,
    else (a folder built before they were stored) computed from the 3x3 weights."""
    if record.get("filters_file"):
        return mapped_filters(folder, record)
    return filters_from_weight_file(folder, record)


def _checked_weights(folder, record: dict, f: dict, size: int) -> tuple[int, int, int]:
    """(K, C, offset) of a filter record's 3x3 weights, after checking they lie inside the weight file."""
    from .errors import EngineFolderError

    k, c, kh, kw = (int(d) for d in f["shape"])
    want = k * c * kh * kw * 4
    offset = int(f["offset"])
    if (kh, kw) != (KERNEL, KERNEL) or f["length"] != want or offset < 0 or offset + want > size:
        raise EngineFolderError(
            f"{Path(folder) / record['weights_file']}: the Winograd filter {f['input']} does not fit the weight file "
            f"(offset {offset}, length {f['length']}, shape {[k, c, kh, kw]}, file {size} bytes); "
            "rebuild the folder with `cmrt build`"
        )
    return k, c, offset


def per_call_weights(folder, record: dict) -> dict[str, np.ndarray]:
    """The inputs of the filters the graph transforms per call: each part of their 3x3 weights as
    [(k1 - k0) * C, 9], a read-only view of the mapped weight file (no copy)."""
    from .errors import EngineFolderError
    from .manifest import inside

    per_call = [f for f in record["filters"] if "chunks" in f]
    if not per_call:
        return {}
    path = inside(Path(folder), record["weights_file"])
    whole = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for f in per_call:
        k, c, offset = _checked_weights(folder, record, f, whole.size)
        if offset % 4:
            raise EngineFolderError(f"{path}: the Winograd filter {f['input']} starts at an unaligned offset {offset}; "
                                    "rebuild the folder with `cmrt build`")
        for name, k0, k1 in per_call_inputs(f):
            out[name] = np.ndarray(((k1 - k0) * c, KERNEL * KERNEL), dtype=np.float32, buffer=whole,
                                   offset=offset + k0 * c * KERNEL * KERNEL * 4)
    return out


def filters_from_weight_file(folder, record: dict) -> dict[str, np.ndarray]:
    """The transformed filters a Winograd CPU graph takes as inputs, read from the fp32 weight file.

    `record` is the manifest's Winograd entry: `weights_file` and, per filter, the graph input
    it feeds, the byte offset and length of its 3x3 weights in that file, and their shape.
    The record comes from an engine folder, so every filter is checked against the file
    before a byte is read (the manifest's schema checks the types; this the bounds).
    """
    from .manifest import inside

    path = inside(Path(folder), record["weights_file"])
    size = path.stat().st_size
    out = per_call_weights(folder, record)
    for f in (f for f in record["filters"] if "chunks" not in f):
        k, c, offset = _checked_weights(folder, record, f, size)
        w = np.memmap(path, dtype=np.float32, mode="r", offset=offset, shape=(k, c, KERNEL, KERNEL))
        out[f["input"]] = tile_of(f).transform_filters(w)
        del w
    return out

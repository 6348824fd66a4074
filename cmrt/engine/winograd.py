"""Winograd F(4x4, 3x3) transform matrices and the transformed filters: numpy only, shared by
the build-time graph rewrite (cmrt/build/winograd.py) and the runtime.

A Winograd CPU graph takes its transformed filters U = G W G^T as inputs. `cmrt build`
computes them once and stores them in the folder (`write_filters`), page-aligned, so that a
load maps them (`mapped_filters`): nothing is computed, nothing is copied, and a page is read
only when ONNX Runtime first touches it. Left in the graph, the same GEMMs would be folded by
ONNX Runtime at every session creation; computed at every load, they cost the transform plus
the first touch of 4x the 3x3 weights in fresh memory. Folders built before the filters were
stored still load: their filters are computed from the 3x3 weights (`filters_from_weight_file`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

TILE = 4  # output tile m of F(m, r)
KERNEL = 3  # filter size r
ALPHA = TILE + KERNEL - 1  # input tile, 6

# Lavin & Gray (2016), F(4x4, 3x3) with interpolation points 0, 1, -1, 2, -2 and infinity.
B_T = np.array(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    dtype=np.float64,
)
G = np.array(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=np.float64,
)
A_T = np.array(
    [
        [1, 1, 1, 1, 1, 0],
        [0, 1, -1, 2, -2, 0],
        [0, 1, 1, 4, 4, 0],
        [0, 1, -1, 8, -8, 1],
    ],
    dtype=np.float64,
)


def input_basis() -> np.ndarray:
    """[36, 1, 6, 6]: filter (a, b) of the input transform is the outer product B_T[a] x B_T[b]."""
    return np.einsum("ai,bj->abij", B_T, B_T).reshape(ALPHA * ALPHA, 1, ALPHA, ALPHA)


def filter_basis_matrix() -> np.ndarray:
    """[36, 9]: this @ vec(W) = vec(G W G^T), row-major over (a, b) and (i, j)."""
    return np.kron(G, G)


def output_basis() -> np.ndarray:
    """[16, 36]: row (p, q) maps the 36 transformed products of a tile to output pixel (p, q)."""
    return np.kron(A_T, A_T)


def winograd_conv_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """The same algorithm in float64 numpy, for tests: x [N,C,H,W], w [K,C,3,3], padding 1."""
    n, c, h, wd = x.shape
    k = w.shape[0]
    th, tw = h // TILE, wd // TILE
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    rows = np.arange(th)[:, None] * TILE + np.arange(ALPHA)[None, :]
    cols = np.arange(tw)[:, None] * TILE + np.arange(ALPHA)[None, :]
    tiles = xp[:, :, rows[:, None, :, None], cols[None, :, None, :]]  # N C th tw 6 6
    v = np.einsum("ai,nctuij,bj->abnctu", B_T, tiles, B_T)
    u = np.einsum("ai,kcij,bj->abkc", G, w.astype(np.float64), G)
    m = np.einsum("abkc,abnctu->abnktu", u, v)
    y = np.einsum("pa,abnktu,qb->nktpuq", A_T, m, A_T).reshape(n, k, h, wd)
    return y if b is None else y + b.reshape(1, -1, 1, 1)


def transform_filters(w: np.ndarray) -> np.ndarray:
    """[K, C, 3, 3] 3x3 filters -> U = G w G^T as float32 [36, K, C]."""
    if w.ndim != 4 or w.shape[2:] != (KERNEL, KERNEL):
        raise ValueError(f"filters must be [K, C, 3, 3], got shape {w.shape}")
    k, c = w.shape[:2]
    basis = filter_basis_matrix().astype(np.float32)
    u = basis @ np.ascontiguousarray(w.reshape(k * c, KERNEL * KERNEL).T, dtype=np.float32)
    return u.reshape(ALPHA * ALPHA, k, c)


# Stored filters start on page boundaries so that each maps on its own and a page never holds two.
FILTER_ALIGN = 4096


def filter_shape(record_filter: dict) -> tuple[int, int, int]:
    """[36, K, C]: the transformed filter of a [K, C, 3, 3] filter record."""
    k, c = record_filter["shape"][:2]
    return (ALPHA * ALPHA, int(k), int(c))


def write_filters(folder, record: dict, name: str) -> int:
    """Transform every filter of `record` from the weight file and write them to `folder / name`.

    One filter is in memory at a time. Each filter record gets `u_offset`, where its float32
    [36, K, C] array starts in the file (a multiple of FILTER_ALIGN); `record["filters_file"]`
    becomes `name`. The file is written inside a build's staging folder, which is what makes it
    atomic. Returns the file's size.
    """
    path = Path(folder) / name
    offset = 0
    with open(path, "wb") as f:
        for rec in record["filters"]:
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
    """The stored transformed filters, memory-mapped read-only (no copy, no computation)."""
    from .errors import EngineFolderError
    from .manifest import inside

    path = inside(Path(folder), record["filters_file"])
    whole = np.memmap(path, dtype=np.uint8, mode="r")  # one mapping; each filter is a view into it
    out = {}
    for f in record["filters"]:
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


def filters_from_weight_file(folder, record: dict) -> dict[str, np.ndarray]:
    """The transformed filters a Winograd CPU graph takes as inputs, read from the fp32 weight file.

    `record` is the manifest's Winograd entry: `weights_file` and, per filter, the graph input
    it feeds, the byte offset and length of its 3x3 weights in that file, and their shape.
    The record comes from an engine folder, so every filter is checked against the file
    before a byte is read (the manifest's schema checks the types; this the bounds).
    """
    from .errors import EngineFolderError
    from .manifest import inside

    path = inside(Path(folder), record["weights_file"])
    size = path.stat().st_size
    out = {}
    for f in record["filters"]:
        k, c, kh, kw = (int(d) for d in f["shape"])
        want = k * c * kh * kw * 4
        offset = int(f["offset"])
        if (kh, kw) != (KERNEL, KERNEL) or f["length"] != want or offset < 0 or offset + want > size:
            raise EngineFolderError(
                f"{Path(folder) / record['weights_file']}: the Winograd filter {f['input']} does not fit the weight file "
                f"(offset {offset}, length {f['length']}, shape {[k, c, kh, kw]}, file {size} bytes); "
                "rebuild the folder with `cmrt build`"
            )
        w = np.memmap(path, dtype=np.float32, mode="r", offset=offset, shape=(k, c, kh, kw))
        out[f["input"]] = transform_filters(w)
        del w
    return out

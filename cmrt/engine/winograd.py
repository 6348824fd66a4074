"""Winograd F(4x4, 3x3) and F(2x2, 3x3): the transform matrices and the transformed filters,
numpy only, shared by the build-time graph rewrite (cmrt/build/winograd.py) and the runtime.

Two tile sizes, because they trade differently. Per output and (input, output) channel pair,
direct convolution does 9 multiplies, F(4x4) 2.25 and F(2x2) 4; in exchange each 3x3 filter
(9 values) becomes 36 transformed values for F(4x4) and 16 for F(2x2). On large maps the GEMMs
have many tiles and are bound by multiplies, so F(4x4) wins; on small maps they have few tiles
and are bound by reading the filters, so F(2x2) runs about as fast while holding 16/36 of the
bytes.

Where the transformed filters live in an engine folder, and how a load gets them, is
cmrt/engine/winograd_filters.py's. A filter record without a `tile` is F(4x4), the only tile of
folders built before F(2x2). A record with `chunks` is transformed per call: the graph takes its
3x3 weights, in parts of output channels, and computes U itself (cmrt/build/winograd.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KERNEL = 3  # filter size r
# The build's default map-size thresholds (cmrt/build/winograd.py says why): maps of at least
# DEFAULT_MIN_SPATIAL are rewritten, those of at least DEFAULT_F4_MIN_SPATIAL with F(4x4) tiles.
DEFAULT_MIN_SPATIAL = 16
DEFAULT_F4_MIN_SPATIAL = 32
# The build's default bound on a convolution's V per image, in MiB, above which it is made in
# bands of rows (cmrt/build/winograd.py: row_bands says why); 0 makes every map whole.
DEFAULT_BAND_MIB = 128


@dataclass(frozen=True, eq=False)
class WinogradTile:
    """F(m x m, 3x3): an m x m output tile from an (m+2) x (m+2) input tile."""

    m: int
    B_T: np.ndarray  # [alpha, alpha] input transform
    G: np.ndarray  # [alpha, 3] filter transform
    A_T: np.ndarray  # [m, alpha] output transform

    @property
    def alpha(self) -> int:
        return self.m + KERNEL - 1

    @property
    def name(self) -> str:
        return f"F({self.m}x{self.m},3x3)"

    def input_basis(self) -> np.ndarray:
        """[alpha^2, 1, alpha, alpha]: filter (a, b) of the input transform is B_T[a] x B_T[b]."""
        a = self.alpha
        return np.einsum("ai,bj->abij", self.B_T, self.B_T).reshape(a * a, 1, a, a)

    def filter_basis_matrix(self) -> np.ndarray:
        """[alpha^2, 9]: this @ vec(W) = vec(G W G^T), row-major over (a, b) and (i, j)."""
        return np.kron(self.G, self.G)

    def output_basis(self) -> np.ndarray:
        """[m^2, alpha^2]: row (p, q) maps the transformed products of a tile to output pixel (p, q)."""
        return np.kron(self.A_T, self.A_T)

    def filter_values(self) -> int:
        """Values of one transformed 3x3 filter (36 for F(4x4), 16 for F(2x2))."""
        return self.alpha * self.alpha

    def transform_filters(self, w: np.ndarray) -> np.ndarray:
        """[K, C, 3, 3] 3x3 filters -> U = G w G^T as float32 [alpha^2, K, C]."""
        if w.ndim != 4 or w.shape[2:] != (KERNEL, KERNEL):
            raise ValueError(f"filters must be [K, C, 3, 3], got shape {w.shape}")
        k, c = w.shape[:2]
        basis = self.filter_basis_matrix().astype(np.float32)
        u = basis @ np.ascontiguousarray(w.reshape(k * c, KERNEL * KERNEL).T, dtype=np.float32)
        return u.reshape(self.filter_values(), k, c)

    def conv_reference(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
        """The same algorithm in float64 numpy, for tests: x [N,C,H,W], w [K,C,3,3], padding 1."""
        n, c, h, wd = x.shape
        k, m, a = w.shape[0], self.m, self.alpha
        th, tw = h // m, wd // m
        xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
        rows = np.arange(th)[:, None] * m + np.arange(a)[None, :]
        cols = np.arange(tw)[:, None] * m + np.arange(a)[None, :]
        tiles = xp[:, :, rows[:, None, :, None], cols[None, :, None, :]]  # N C th tw a a
        v = np.einsum("ai,nctuij,bj->abnctu", self.B_T, tiles, self.B_T)
        u = np.einsum("ai,kcij,bj->abkc", self.G, w.astype(np.float64), self.G)
        mm = np.einsum("abkc,abnctu->abnktu", u, v)
        y = np.einsum("pa,abnktu,qb->nktpuq", self.A_T, mm, self.A_T).reshape(n, k, h, wd)
        return y if b is None else y + b.reshape(1, -1, 1, 1)


# Lavin & Gray (2016), F(4x4, 3x3) with interpolation points 0, 1, -1, 2, -2 and infinity.
F4 = WinogradTile(
    m=4,
    B_T=np.array(
        [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ],
        dtype=np.float64,
    ),
    G=np.array(
        [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ],
        dtype=np.float64,
    ),
    A_T=np.array(
        [
            [1, 1, 1, 1, 1, 0],
            [0, 1, -1, 2, -2, 0],
            [0, 1, 1, 4, 4, 0],
            [0, 1, -1, 8, -8, 1],
        ],
        dtype=np.float64,
    ),
)
# Lavin & Gray (2016), F(2x2, 3x3) with interpolation points 0, 1, -1 and infinity.
F2 = WinogradTile(
    m=2,
    B_T=np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64),
    G=np.array([[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]], dtype=np.float64),
    A_T=np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64),
)
TILES = {t.m: t for t in (F4, F2)}
LEGACY_TILE = 4  # the tile of a filter record that names none


def tile_of(record_filter: dict) -> WinogradTile:
    """The tile a filter record was rewritten with (records that name none are F(4x4))."""
    return TILES[int(record_filter.get("tile", LEGACY_TILE))]


# Which tiles' filters a build transforms at every call instead of storing them (BuildOptions.winograd_per_call).
PER_CALL_CHOICES = {"none": (), "f4": (4,), "all": (4, 2)}


def per_call_inputs(record_filter: dict) -> list[tuple[str, int, int]]:
    """(graph input, k0, k1) per part of a per-call filter record: the input takes output
    channels [k0, k1) of its 3x3 weights as [(k1 - k0) * C, 9], as they lie in the weight file."""
    return [(f"{record_filter['input']}/{j}", int(k0), int(k1)) for j, (k0, k1) in enumerate(record_filter["chunks"])]


def filter_shape(record_filter: dict) -> tuple[int, int, int]:
    """[alpha^2, K, C]: the transformed filter of a [K, C, 3, 3] filter record."""
    k, c = record_filter["shape"][:2]
    return (tile_of(record_filter).filter_values(), int(k), int(c))

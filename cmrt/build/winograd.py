"""Rewrite 3x3 convolutions of an ONNX graph as Winograd subgraphs, for CPUs.

Why: on a CPU the fp32 UNet is bound by multiply-adds. ONNX Runtime's direct convolution
already runs at the machine's measured GEMM rate, so the only fp32 speed left is doing fewer
multiplications. Winograd's minimal filtering F(m x m, 3x3) computes an m x m output tile of a
3x3 convolution from an (m+2) x (m+2) input tile: F(4x4) with 36 multiplies per (input,
output) channel pair instead of 144, F(2x2) with 16 instead of 36, at the price of cheap
linear transforms before and after.

The rewritten subgraph is made of standard ops only (Conv, Reshape, Transpose, MatMul,
DepthToSpace, Add), so ONNX Runtime runs it with its own kernels (a = m + 2):

    V = Conv(x as [N*C, 1, H, W], B-basis, a x a, stride m)   input transform, one tile per output tile
    M = U @ V                                                 a^2 batched GEMMs [K,C] x [C,tiles]
    Y = DepthToSpace(A-basis @ M) + bias                      output transform and tile interleave

Which tile where (`f4_min_spatial`): maps at least that size get F(4x4); smaller rewritten
maps get F(2x2). On a small map the GEMMs have few tiles and stream the transformed filters
from memory, so F(2x2)'s 16 values per filter run about as fast as F(4x4)'s 36 while holding
under half the bytes; on a large map the multiplies dominate and F(4x4) wins
(benchmarks/winograd_min_spatial.py measures both).

With `filters="input"` (what `cmrt build` uses) each U the graph does not make itself is a graph
input that the build computes once and stores (cmrt/engine/winograd_filters.py); `per_call_tiles`
(by default every tile, `BuildOptions.winograd_per_call`) has the graph make U from the 3x3
weights just before its GEMMs instead, so that U is never held whole. With `filters="fold"` U
stays in the graph as MatMuls over the weight initializer, which ONNX Runtime folds when it
creates the session: a self-contained graph, but several times slower to open. Convolutions
with a large V run in bands of rows (`row_bands`).

Where it does not pay, the Conv is left alone: strided, grouped, dilated or non-3x3
convolutions, those with a handful of channels (the RGB ends), odd spatial sizes, and small
maps (below `min_spatial`, where the GEMMs have too few tiles to beat the direct kernel). The transforms are exact in exact arithmetic; in
fp32 the rewritten UNet stays within the export tolerance of PyTorch, which the build checks
like any other graph.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..engine.winograd import DEFAULT_BAND_MIB, DEFAULT_F4_MIN_SPATIAL, DEFAULT_MIN_SPATIAL, F2, F4, KERNEL, TILES, WinogradTile, per_call_inputs

logger = logging.getLogger(__name__)

# A Conv with fewer input or output channels than this (the UNet's RGB convs at either end) has
# GEMMs too thin to repay the transforms: on ImageNet-64 both measured slower rewritten.
MIN_CHANNELS = 8
# A filter transformed per call is made and multiplied in parts of output channels whose U takes at
# most this much, so that each part comes back from the cache to its GEMM and the arena never
# holds a large one (benchmarks/winograd_filters_per_call.py measured 8 MiB against whole and 32).
PER_CALL_CHUNK_BYTES = 8 << 20


def per_call_chunks(k: int, c: int, tile: WinogradTile, tiles: int, chunk_bytes: int = PER_CALL_CHUNK_BYTES) -> list[list[int]]:
    """[k0, k1) output-channel parts of a per-call filter [K, C, 3, 3] whose GEMM has `tiles` tiles.

    Only a GEMM with fewer tiles than input channels is split: its product ([alpha^2, K, tiles]
    per image), which joining the parts copies, is then smaller than the U the split keeps in
    cache; on a large map the copy costs more than it saves, and the GEMMs run thinner.
    """
    per_k = tile.filter_values() * c * 4
    n = max(1, min(k, -(-k * per_k // chunk_bytes))) if chunk_bytes and tiles < c else 1
    bounds = [i * k // n for i in range(n + 1)]
    return [[a, b] for a, b in zip(bounds[:-1], bounds[1:])]


# A convolution whose input tiles V (C * alpha^2 * tiles floats per image) exceed this is made in
# bands of rows, each band's V, products and output made before the next's: on LSUN-256's
# 256x256 maps V is 2.25x the input (F(4x4)) and is held twice while it is put tile-position-major,
# which made those convolutions the graph's memory peak. The bands cost a copy of the input rows
# (with a one-row halo) and one of the output (the join); maps of ImageNet-64 size stay whole.
ROW_BAND_V_BYTES = DEFAULT_BAND_MIB << 20


def row_bands(c: int, tile: WinogradTile, th: int, tw: int, band_bytes: int = ROW_BAND_V_BYTES) -> list[tuple[int, int]]:
    """The output rows [r0, r1) of each band of a convolution with th x tw tiles and C input
    channels: the fewest bands (a power of two dividing th) whose V stays within `band_bytes`
    per image; one band, the whole map, when it already does or `band_bytes` is 0."""
    v = c * tile.alpha * tile.alpha * th * tw * 4
    n = 1
    while band_bytes and v > n * band_bytes and th % (2 * n) == 0:
        n *= 2
    rows = th // n * tile.m
    return [(i * rows, (i + 1) * rows) for i in range(n)]


def band_suffix(b: int, bands: int) -> str:
    """What names band b's tensors among `bands`: nothing when the map is whole."""
    return f"/band{b}" if bands > 1 else ""


@dataclass
class RewriteReport:
    rewritten: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # conv name -> why it stayed a direct Conv
    tiles: dict[str, int] = field(default_factory=dict)  # rewritten conv name -> m of its F(m x m, 3x3)
    # fp32 bytes the transformed filters add in memory beyond the 3x3 weights they replace
    added_filter_bytes: int = 0
    # filters="input": [{"input": graph input for U, "weight": 3x3 initializer name, "shape": [K, C, 3, 3], "tile": m}],
    # and "chunks" for a filter transformed per call (its graph inputs: engine/winograd.py's per_call_inputs)
    runtime_filters: list[dict] = field(default_factory=list)
    row_bands: dict[str, int] = field(default_factory=dict)  # rewritten conv name -> its bands of rows, where more than one

    def to_dict(self) -> dict:
        reasons: dict[str, int] = {}
        for why in self.kept.values():
            reasons[why] = reasons.get(why, 0) + 1
        per_tile = {TILES[m].name: list(self.tiles.values()).count(m) for m in sorted(set(self.tiles.values()), reverse=True)}
        return {
            "algorithm": "winograd " + " + ".join(per_tile) if per_tile else "winograd",
            "rewritten": len(self.rewritten),
            "rewritten_per_tile": per_tile,
            "kept": len(self.kept),
            "kept_because": reasons,
            "added_filter_bytes": self.added_filter_bytes,
            **({"in_row_bands": len(self.row_bands)} if self.row_bands else {}),
        }


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def conv_input_shapes(model) -> dict[str, tuple]:
    """Static [C, H, W] of every Conv input, from ONNX Runtime's symbolic shape inference.

    onnx's own shape inference loses spatial sizes in UNet graphs (reshapes whose shapes are
    computed at run time); the symbolic one follows them. The batch axis stays symbolic.
    """
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    infos = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    shapes = {}
    for node in inferred.graph.node:
        if node.op_type != "Conv" or node.input[0] not in infos:
            continue
        dims = infos[node.input[0]].type.tensor_type.shape.dim
        shapes[node.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims[1:])
    return shapes


def _tile_or_why_not(node, weight, shape, min_spatial: int, f4_min_spatial: int) -> WinogradTile | str:
    """The tile a Conv is rewritten with, or why it stays a direct Conv."""
    if weight is None:
        return "weight is not an initializer"
    if list(weight.dims[2:]) != [KERNEL, KERNEL]:
        return "not 3x3"
    a = _attrs(node)
    if a.get("group", 1) != 1:
        return "grouped"
    if min(weight.dims[:2]) < MIN_CHANNELS:
        return f"fewer than {MIN_CHANNELS} channels"
    if list(a.get("strides", [1, 1])) != [1, 1] or list(a.get("dilations", [1, 1])) != [1, 1]:
        return "strided or dilated"
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or list(a.get("pads", [0] * 4)) != [1, 1, 1, 1]:
        return "padding is not 1"
    if shape is None or len(shape) != 3 or None in shape:
        return "input size unknown"
    _, h, w = shape
    if min(h, w) < min_spatial:
        return f"smaller than {min_spatial}x{min_spatial}"
    if min(h, w) >= f4_min_spatial and not h % F4.m and not w % F4.m:
        return F4
    if h % F2.m or w % F2.m:
        return f"size not divisible by {F2.m}"
    return F2


FILTER_MODES = ("fold", "input")


def rewrite_winograd(
    model,
    min_spatial: int = DEFAULT_MIN_SPATIAL,
    input_shapes: dict[str, tuple] | None = None,
    filters: str = "fold",
    f4_min_spatial: int = DEFAULT_F4_MIN_SPATIAL,
    per_call_tiles: tuple[int, ...] = (),
    chunk_bytes: int = PER_CALL_CHUNK_BYTES,
    band_bytes: int = ROW_BAND_V_BYTES,
):
    """Replace eligible Convs in `model` (an onnx ModelProto, changed in place) and report which.

    Only node wiring and small new initializers change; existing initializers are referenced,
    never read. So `model` may be loaded without its external data when `input_shapes`
    (from `conv_input_shapes` on the loaded model, which does read small constants) is given.

    `filters`: "fold" computes U = G W G^T in the graph (ONNX Runtime folds it when it opens
    the session); "input" makes each U a graph input named in `report.runtime_filters`, for
    the caller to compute from the 3x3 weights (the tile's `transform_filters`) and feed, and
    drops the 3x3 weights the graph no longer uses.

    `min_spatial`: the smallest map rewritten; `f4_min_spatial`: the smallest map rewritten with
    F(4x4) tiles (smaller rewritten maps get F(2x2); set it to `min_spatial` for F(4x4) throughout).

    `per_call_tiles` (with filters="input"): the tiles whose filters the graph transforms at every
    call instead of taking U: it takes the 3x3 weights as they lie ([K*C, 9] rows, in parts of
    output channels, `per_call_chunks`) and computes each part of U just before its GEMM. U then
    lives in ONNX Runtime's arena only while its GEMM runs: the graph holds the 3x3 weights, not
    the 4x (F(4x4)) or 1.8x (F(2x2)) larger U, and pays the transform's multiply-adds per call.

    `band_bytes`: a convolution whose V exceeds it per image is made in bands of rows
    (`row_bands`; 0: never).
    """
    from onnx import TensorProto, helper, numpy_helper

    for what, size in (("min_spatial", min_spatial), ("f4_min_spatial", f4_min_spatial)):
        if isinstance(size, bool) or not isinstance(size, int) or size < F4.m:
            raise ValueError(f"{what} must be an integer >= {F4.m}, got {size!r}")
    if filters not in FILTER_MODES:
        raise ValueError(f"filters must be one of {FILTER_MODES}, got {filters!r}")
    if any(m not in TILES for m in per_call_tiles) or (per_call_tiles and filters != "input"):
        raise ValueError(f"per_call_tiles must name tiles of {sorted(TILES)}, with filters='input'; got {per_call_tiles!r}")
    graph = model.graph
    shapes = conv_input_shapes(model) if input_shapes is None else input_shapes
    inits = {t.name: t for t in graph.initializer}
    report = RewriteReport()
    shared: dict[str, str] = {}

    def const(name: str, value: np.ndarray, dtype=np.float32) -> str:
        if name not in shared:
            graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
            shared[name] = name
        return name

    new_nodes = []
    for i, node in enumerate(graph.node):
        name = node.name or f"Conv_{i}"
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
            new_nodes.append(node)
            continue
        weight = inits.get(node.input[1])
        tile = _tile_or_why_not(node, weight, shapes.get(node.name), min_spatial, f4_min_spatial)
        if isinstance(tile, str):
            report.kept[name] = tile
            new_nodes.append(node)
            continue
        m, a = tile.m, tile.alpha
        k, c = int(weight.dims[0]), int(weight.dims[1])
        _, h, w = shapes[node.name]
        th, tw = h // m, w // m
        p = f"{name}/winograd"
        basis_in = const(f"cmrt_winograd/F{m}/B", tile.input_basis())
        basis_out = const(f"cmrt_winograd/F{m}/A", tile.output_basis())

        def shape_const(suffix: str, dims: list[int]) -> str:
            return const(f"{p}/{suffix}", dims, np.int64)

        x, out = node.input[0], node.output[0]
        per_call = m in per_call_tiles
        bands = row_bands(c, tile, th, tw, band_bytes)
        # U, as the parts of output channels its GEMMs take: [(U's part, k0, k1)]
        nodes, u_parts = [], [(f"{p}/U", 0, k)]
        if per_call:
            rec = {"input": f"{p}/U", "weight": node.input[1], "shape": [k, c, KERNEL, KERNEL], "tile": m,
                   "chunks": per_call_chunks(k, c, tile, th * tw, chunk_bytes)}
            report.runtime_filters.append(rec)
            basis = const(f"cmrt_winograd/F{m}/G", tile.filter_basis_matrix())
            # The parts depend only on graph inputs, so a topological order may run their transforms
            # anywhere before their GEMMs, and ONNX Runtime's runs most of them at the start (more so
            # from its saved optimized graph), where every U made early stays in the arena until its
            # GEMM. Each part's weights therefore pass through a Reshape whose shape is [rows, 9]
            # plus zeros taken from V's shape (the first band's): a few integer ops, after which no
            # order can make U before V, that is before the convolution's input is ready.
            v_first = f"{p}/V" + band_suffix(0, len(bands))
            after_v = [
                helper.make_node("Shape", [v_first], [f"{p}/V_shape"]),
                helper.make_node("Slice", [f"{p}/V_shape", const("cmrt_winograd/int0", [0], np.int64),
                                           const("cmrt_winograd/int2", [2], np.int64)], [f"{p}/V_dims"]),
                helper.make_node("Mul", [f"{p}/V_dims", const("cmrt_winograd/int0", [0], np.int64)], [f"{p}/after_V"]),
            ]
            u_made, u_parts = [], []  # per part, the nodes that make it (the first part's also make the zeros)
            for j, (part, k0, k1) in enumerate(per_call_inputs(rec)):
                rows = (k1 - k0) * c
                graph.input.append(helper.make_tensor_value_info(part, TensorProto.FLOAT, [rows, KERNEL * KERNEL]))
                # U's part = kron(G, G) @ its weights as [9, (k1-k0)*C]; ONNX Runtime folds the Transpose into the MatMul
                u_made.append((after_v if j == 0 else []) + [
                    helper.make_node("Add", [shape_const(f"w_shape/{j}", [rows, KERNEL * KERNEL]), f"{p}/after_V"], [f"{p}/w_shape_after_V/{j}"]),
                    helper.make_node("Reshape", [part, f"{p}/w_shape_after_V/{j}"], [f"{p}/W/{j}"]),
                    helper.make_node("Transpose", [f"{p}/W/{j}"], [f"{p}/W_t/{j}"], perm=[1, 0]),
                    helper.make_node("MatMul", [basis, f"{p}/W_t/{j}"], [f"{p}/U_flat/{j}"]),
                    helper.make_node("Reshape", [f"{p}/U_flat/{j}", shape_const(f"u_shape/{j}", [a * a, k1 - k0, c])], [f"{p}/U_part/{j}"]),
                ])
                u_parts.append((f"{p}/U_part/{j}", k0, k1))
        elif filters == "input":
            graph.input.append(helper.make_tensor_value_info(f"{p}/U", TensorProto.FLOAT, [a * a, k, c]))
            report.runtime_filters.append({"input": f"{p}/U", "weight": node.input[1], "shape": [k, c, KERNEL, KERNEL], "tile": m})
        else:
            nodes = [
                # U = G W G^T as [a^2, K, C]: constant, folded by ONNX Runtime at session creation. One
                # [a^2, 9] x [9, K*C] GEMM (per-filter products fold far slower); transposing the 9-wide
                # weights rather than the a^2-wide result.
                helper.make_node("Reshape", [node.input[1], shape_const("w_shape", [k * c, KERNEL * KERNEL])], [f"{p}/W_flat"]),
                helper.make_node("Transpose", [f"{p}/W_flat"], [f"{p}/W_t"], perm=[1, 0]),
                helper.make_node("MatMul", [const(f"cmrt_winograd/F{m}/G", tile.filter_basis_matrix()), f"{p}/W_t"], [f"{p}/U_flat"]),
                helper.make_node("Reshape", [f"{p}/U_flat", shape_const("u_shape", [a * a, k, c])], [f"{p}/U"]),
            ]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        y = out if bias is None else f"{p}/Y"
        band_outputs = []
        for b, (r0, r1) in enumerate(bands):
            sfx = band_suffix(b, len(bands))
            tb = (r1 - r0) // m  # tile rows of this band
            x_band, top, bottom = x, 1, 1
            if len(bands) > 1:
                # rows [r0 - 1, r1 + 1) of the input, the zero padding only at the map's edges: the
                # band's tiles are exactly the whole map's tiles of rows [r0, r1)
                i0, i1 = max(r0 - 1, 0), min(r1 + 1, h)
                top, bottom = 1 - (r0 - i0), 1 - (i1 - r1)
                x_band = f"{p}/X{sfx}"
                nodes.append(helper.make_node("Slice", [x, shape_const(f"x_rows{sfx}", [i0]), shape_const(f"x_rows_end{sfx}", [i1]),
                                                        const("cmrt_winograd/int2", [2], np.int64)], [x_band]))
            rows_in = (r1 - r0) + 2 - top - bottom
            v = f"{p}/V{sfx}"
            nodes += [
                # V: every a x a tile (stride m, zero padding 1) through the a^2 input-transform filters,
                # then tile-position-major: [N, a^2, C, tiles]. Each channel goes through the same filters,
                # so the channels are folded into the batch and one 1-in, a^2-out Conv does them all
                # (a group=C Conv measured slower, and a separable 6x1 + 1x6 pair no faster).
                helper.make_node("Reshape", [x_band, shape_const(f"x_shape{sfx}", [-1, 1, rows_in, w])], [f"{p}/X_1{sfx}"]),
                helper.make_node("Conv", [f"{p}/X_1{sfx}", basis_in], [f"{p}/V_nchw{sfx}"], kernel_shape=[a, a],
                                 strides=[m, m], pads=[top, 1, bottom, 1]),
                helper.make_node("Reshape", [f"{p}/V_nchw{sfx}", shape_const(f"v_shape{sfx}", [-1, c, a * a, tb * tw])], [f"{p}/V_c{sfx}"]),
                helper.make_node("Transpose", [f"{p}/V_c{sfx}"], [v], perm=[0, 2, 1, 3]),
            ]
            # M: a^2 GEMMs [K, C] x [C, tiles], per part of U's output channels; the parts' products
            # side by side along K ([N, a^2, K, tiles]). (A group-36 1x1 Conv measured slower and folds slower.)
            products = []
            for j, (u, _, _) in enumerate(u_parts):
                if b == 0 and per_call:  # each part of U made just before its first GEMM, then reused by the other bands
                    nodes += u_made[j]
                products.append(f"{p}/M{sfx}" if len(u_parts) == 1 else f"{p}/M{sfx}/{j}")
                nodes.append(helper.make_node("MatMul", [u, v], [products[-1]]))
            if len(u_parts) > 1:
                nodes.append(helper.make_node("Concat", products, [f"{p}/M{sfx}"], axis=2))
            y_band = y if len(bands) == 1 else f"{p}/Y{sfx}"
            nodes += [
                # Y: the output transform as one [m^2, a^2] GEMM; DCR DepthToSpace puts each m x m tile in place.
                helper.make_node("Reshape", [f"{p}/M{sfx}", shape_const(f"m_shape{sfx}", [0, a * a, k * tb * tw])], [f"{p}/M_flat{sfx}"]),
                helper.make_node("MatMul", [basis_out, f"{p}/M_flat{sfx}"], [f"{p}/Y_flat{sfx}"]),
                helper.make_node("Reshape", [f"{p}/Y_flat{sfx}", shape_const(f"y_shape{sfx}", [0, m * m * k, tb, tw])], [f"{p}/Y_dcr{sfx}"]),
                helper.make_node("DepthToSpace", [f"{p}/Y_dcr{sfx}"], [y_band], blocksize=m, mode="DCR"),
            ]
            band_outputs.append(y_band)
        if len(bands) > 1:  # the bands' rows in order
            nodes.append(helper.make_node("Concat", band_outputs, [y], axis=2))
            report.row_bands[name] = len(bands)
        if bias is not None:
            nodes.append(helper.make_node("Reshape", [bias, shape_const("bias_shape", [1, k, 1, 1])], [f"{p}/bias"]))
            nodes.append(helper.make_node("Add", [y, f"{p}/bias"], [out]))
        for j, n in enumerate(nodes):
            n.name = f"{p}/{n.op_type}_{j}"
        new_nodes.extend(nodes)
        report.rewritten.append(name)
        report.tiles[name] = m
        if not per_call:
            report.added_filter_bytes += (tile.filter_values() - KERNEL * KERNEL) * k * c * 4
    graph.ClearField("node")
    graph.node.extend(new_nodes)
    if filters == "input":  # the 3x3 weights only the rewritten Convs read are no longer part of this graph
        used = {name for n in graph.node for name in n.input}
        dropped = {f["weight"] for f in report.runtime_filters} - used
        kept_inits = [t for t in graph.initializer if t.name not in dropped]
        graph.ClearField("initializer")
        graph.initializer.extend(kept_inits)
    logger.info(
        "winograd: %d of %d Convs rewritten (%s kept)",
        len(report.rewritten),
        len(report.rewritten) + len(report.kept),
        report.to_dict()["kept_because"] or "none",
    )
    return report

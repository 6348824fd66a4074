"""Winograd F(4x4,3x3) and F(2x2,3x3): the math, the ONNX rewrite, and the CPU graph a build keeps or drops."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from cmrt.build import winograd as wg  # noqa: E402
from cmrt.engine.winograd import F2, F4, TILES  # noqa: E402


def direct_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """3x3, stride 1, zero padding 1, float64: the definition the rewrite must reproduce."""
    n, c, h, wd = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    y = np.zeros((n, w.shape[0], h, wd))
    for i in range(3):
        for j in range(3):
            y += np.einsum("nchw,kc->nkhw", xp[:, :, i : i + h, j : j + wd], w[:, :, i, j].astype(np.float64))
    return y if b is None else y + b.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("tile", [F4, F2], ids=lambda t: t.name)
def test_transform_matrices_compute_a_convolution_exactly(tile):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 8, 12))
    w = rng.standard_normal((7, 5, 3, 3))
    b = rng.standard_normal(7)
    np.testing.assert_allclose(tile.conv_reference(x, w, b), direct_conv(x, w, b), rtol=0, atol=1e-11)


@pytest.mark.parametrize("tile, alpha", [(F4, 6), (F2, 4)], ids=lambda t: getattr(t, "name", t))
def test_basis_shapes_match_the_subgraph_contract(tile, alpha):
    m = tile.m
    assert tile.alpha == alpha and tile.filter_values() == alpha * alpha
    assert tile.input_basis().shape == (alpha * alpha, 1, alpha, alpha)
    assert tile.filter_basis_matrix().shape == (alpha * alpha, 9)
    assert tile.output_basis().shape == (m * m, alpha * alpha)
    # one filter, through the flat basis, equals G w G^T
    w = np.arange(9.0).reshape(3, 3)
    np.testing.assert_allclose((tile.filter_basis_matrix() @ w.reshape(9)).reshape(alpha, alpha), tile.G @ w @ tile.G.T, atol=1e-12)
    assert tile.transform_filters(np.ones((2, 3, 3, 3))).shape == (alpha * alpha, 2, 3)
    with pytest.raises(ValueError, match=r"\[K, C, 3, 3\]"):
        tile.transform_filters(np.ones((2, 3, 5, 5)))


def test_a_filter_record_names_its_tile_and_one_that_names_none_is_4x4():
    """Folders built before F(2x2) tiles record none: their filters are F(4x4)'s 36 values."""
    from cmrt.engine.winograd import filter_shape, tile_of

    rec = {"input": "u", "shape": [8, 5, 3, 3]}
    assert tile_of(rec) is F4 and filter_shape(rec) == (36, 8, 5)
    assert tile_of({**rec, "tile": 2}) is F2 and filter_shape({**rec, "tile": 2}) == (16, 8, 5)


def conv_model(convs, c_in: int, size: int) -> onnx.ModelProto:
    """A chain of Convs with a dynamic batch axis. convs: (out_channels, kernel, attrs, bias?)."""
    rng = np.random.default_rng(1)
    nodes, inits = [], []
    x, c = "x", c_in
    for i, (k, kernel, attrs, bias) in enumerate(convs):
        w = (rng.standard_normal((k, c // attrs.get("group", 1), kernel, kernel)) / np.sqrt(c * kernel * kernel)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        ins = [x, f"w{i}"]
        if bias:
            inits.append(numpy_helper.from_array(rng.standard_normal(k).astype(np.float32), f"b{i}"))
            ins.append(f"b{i}")
        nodes.append(helper.make_node("Conv", ins, [f"y{i}"], name=f"conv{i}", kernel_shape=[kernel, kernel], **attrs))
        x, c = f"y{i}", k
    graph = helper.make_graph(
        nodes, "convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", c_in, size, size])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", c, "h", "w"])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto, x: np.ndarray, feeds: dict | None = None) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x, **(feeds or {})})[0]


PAD1 = {"pads": [1, 1, 1, 1]}


def filter_feeds(report, weights: dict) -> dict:
    """What the runtime feeds a graph rewritten with filters="input": each stored U computed from
    its 3x3 weights, and each per-call part's weights as [Kc*C, 9] rows."""
    from cmrt.engine.winograd import per_call_inputs

    feeds = {}
    for f in report.runtime_filters:
        w = weights[f["weight"]]
        if "chunks" in f:
            rows = w.reshape(-1, 9)
            feeds.update({name: rows[k0 * w.shape[1]:k1 * w.shape[1]] for name, k0, k1 in per_call_inputs(f)})
        else:
            feeds[f["input"]] = TILES[f["tile"]].transform_filters(w)
    return feeds


@pytest.mark.parametrize("f4_min_spatial, tile", [(16, F4), (32, F2)], ids=["F4", "F2"])
def test_rewrite_matches_direct_convolution_at_any_batch(f4_min_spatial, tile):
    model = conv_model([(24, 3, PAD1, True), (16, 3, PAD1, False)], c_in=8, size=16)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    report = wg.rewrite_winograd(rewritten, f4_min_spatial=f4_min_spatial)
    assert report.rewritten == ["conv0", "conv1"] and not report.kept
    assert report.tiles == {"conv0": tile.m, "conv1": tile.m}
    assert report.to_dict()["rewritten_per_tile"] == {tile.name: 2}
    assert report.added_filter_bytes == (tile.filter_values() - 9) * 4 * (24 * 8 + 16 * 24)
    assert not any(n.op_type == "Conv" and n.name in ("conv0", "conv1") for n in rewritten.graph.node)
    onnx.checker.check_model(rewritten)
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 8, 16, 16)).astype(np.float32)
        want, got = run(model, x), run(rewritten, x)
        assert got.shape == want.shape == (batch, 16, 16, 16)
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_large_maps_get_4x4_tiles_and_small_ones_2x2():
    """The default thresholds: 16x16 and 8x8-divisible maps below 32x32 get F(2x2); 32x32 and up
    F(4x4), unless the size does not divide by 4 (then F(2x2)); below 16x16 no rewrite."""
    model = conv_model([(8, 3, PAD1, True)], c_in=8, size=32)
    sizes = {"big": (8, 32, 32), "mid": (8, 16, 16), "odd4": (8, 34, 34), "tiny": (8, 8, 8)}
    chain = conv_model([(8, 3, PAD1, True)] * 4, c_in=8, size=32)
    for node, name in zip(chain.graph.node, sizes):
        node.name = name
    report = wg.rewrite_winograd(chain, input_shapes=sizes)
    assert report.tiles == {"big": 4, "mid": 2, "odd4": 2}
    assert report.kept == {"tiny": "smaller than 16x16"}
    assert report.to_dict()["algorithm"] == "winograd F(4x4,3x3) + F(2x2,3x3)"
    assert wg.rewrite_winograd(model, f4_min_spatial=64).tiles == {"conv0": 2}


def test_filters_as_inputs_match_the_folded_graph_and_drop_the_3x3_weights():
    """The runtime computes U itself (numpy) and feeds it; the graph then holds no 3x3 weights."""
    model = conv_model([(24, 3, PAD1, True), (16, 3, PAD1, False)], c_in=8, size=16)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    as_inputs = onnx.ModelProto()
    as_inputs.CopyFrom(model)
    report = wg.rewrite_winograd(as_inputs, filters="input")
    assert [f["weight"] for f in report.runtime_filters] == ["w0", "w1"]
    assert not {"w0", "w1"} & {t.name for t in as_inputs.graph.initializer}
    assert [f["tile"] for f in report.runtime_filters] == [2, 2]  # 16x16 maps
    feeds = filter_feeds(report, weights)
    x = np.random.default_rng(5).standard_normal((2, 8, 16, 16)).astype(np.float32)
    got, want = run(as_inputs, x, feeds), run(model, x)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    with pytest.raises(ValueError, match="filters must be one of"):
        wg.rewrite_winograd(model, filters="bake")


@pytest.mark.parametrize("chunk_bytes", [0, 4096], ids=["whole", "parts"])
def test_filters_transformed_per_call_match_the_direct_convolution(chunk_bytes):
    """Per-call filters: the graph takes each part of the 3x3 weights as [Kc*C, 9] rows and makes U
    itself; with a small `chunk_bytes` a GEMM with fewer tiles than input channels runs in parts."""
    # conv0: a 16x16 map with F(4x4): 16 tiles, 40 input channels, so it may split; conv1 (strided) stays
    # a Conv; conv2: an 8x8 map with F(2x2), stored (its tile is not per call)
    strided = {"pads": [1, 1, 1, 1], "strides": [2, 2]}
    model = conv_model([(24, 3, PAD1, True), (24, 3, strided, False), (16, 3, PAD1, False)], c_in=40, size=16)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    per_call = onnx.ModelProto()
    per_call.CopyFrom(model)
    report = wg.rewrite_winograd(per_call, filters="input", min_spatial=8, f4_min_spatial=16,
                                 per_call_tiles=(4,), chunk_bytes=chunk_bytes)
    first, second = report.runtime_filters
    assert first["tile"] == 4 and second["tile"] == 2 and "chunks" not in second
    # U of conv0: 36 * 40 * 4 = 5760 bytes per output channel, so parts of at most 4096 bytes hold one channel each
    assert first["chunks"] == ([[0, 24]] if not chunk_bytes else [[k, k + 1] for k in range(24)])
    assert report.tiles == {"conv0": 4, "conv2": 2}
    assert report.added_filter_bytes == (16 - 9) * 4 * 16 * 24  # only the stored filter adds memory
    concats = [n for n in per_call.graph.node if n.op_type == "Concat" and n.name.startswith("conv0/")]
    assert len(concats) == (1 if chunk_bytes else 0)
    onnx.checker.check_model(per_call)
    feeds = filter_feeds(report, weights)
    x = np.random.default_rng(6).standard_normal((2, 40, 16, 16)).astype(np.float32)
    got, want = run(per_call, x, feeds), run(model, x)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    with pytest.raises(ValueError, match="per_call_tiles"):
        wg.rewrite_winograd(model, filters="fold", per_call_tiles=(4,))
    with pytest.raises(ValueError, match="per_call_tiles"):
        wg.rewrite_winograd(model, filters="input", per_call_tiles=(3,))


def test_per_call_transforms_cannot_run_before_their_convolution_s_input():
    """Every part of U is made after its convolution's V in any topological order, so ONNX
    Runtime cannot make the transforms early and hold their U in the arena until the GEMMs."""
    model = conv_model([(24, 3, PAD1, True), (24, 3, PAD1, False), (16, 3, PAD1, False)], c_in=40, size=16)
    report = wg.rewrite_winograd(model, filters="input", f4_min_spatial=16, per_call_tiles=(4,), chunk_bytes=4096)
    producer = {o: n for n in model.graph.node for o in n.output}

    def ancestors(name: str) -> set[str]:
        seen, todo = set(), [name]
        while todo:
            node = producer.get(todo.pop())
            if node is not None and node.name not in seen:
                seen.add(node.name)
                todo.extend(node.input)
        return seen

    transforms = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[0] == "cmrt_winograd/F4/G"]
    assert len(transforms) == sum(len(f["chunks"]) for f in report.runtime_filters) > 3 * 2  # in parts
    for n in transforms:
        conv = n.name.split("/")[0]
        assert producer[f"{conv}/winograd/V"].name in ancestors(n.output[0]), n.name


@pytest.mark.parametrize("per_call", [(), (4, 2)], ids=["stored", "per-call"])
@pytest.mark.parametrize("f4_min_spatial, tile", [(16, F4), (32, F2)], ids=["F4", "F2"])
def test_a_convolution_made_in_bands_of_rows_matches_the_direct_one(f4_min_spatial, tile, per_call):
    """Bands of rows, each with its one-row halo and the zero padding only at the map's edges,
    give the whole map's convolution at any batch, with stored or per-call filters."""
    model = conv_model([(24, 3, PAD1, True), (16, 3, PAD1, False)], c_in=8, size=16)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    banded = onnx.ModelProto()
    banded.CopyFrom(model)
    v_bytes = 8 * tile.alpha ** 2 * (16 // tile.m) ** 2 * 4  # conv0's V per image
    report = wg.rewrite_winograd(banded, filters="input", f4_min_spatial=f4_min_spatial, per_call_tiles=per_call,
                                 band_bytes=v_bytes // 4)
    assert report.row_bands["conv0"] == 4 and report.to_dict()["in_row_bands"] == len(report.row_bands)
    onnx.checker.check_model(banded)
    feeds = filter_feeds(report, weights)
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 8, 16, 16)).astype(np.float32)
        want, got = run(model, x), run(banded, x, feeds)
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_row_bands_are_the_fewest_that_keep_v_within_the_bound():
    v = 8 * 36 * 8 * 8 * 4  # C=8, F(4x4), 8x8 tiles: a 32x32 map
    assert wg.row_bands(8, F4, 8, 8, band_bytes=v) == [(0, 32)]
    assert wg.row_bands(8, F4, 8, 8, band_bytes=0) == [(0, 32)]
    assert wg.row_bands(8, F4, 8, 8, band_bytes=v // 2) == [(0, 16), (16, 32)]
    assert wg.row_bands(8, F4, 8, 8, band_bytes=v // 3) == [(0, 8), (8, 16), (16, 24), (24, 32)]
    assert len(wg.row_bands(8, F4, 8, 8, band_bytes=1)) == 8  # at most one tile row per band
    assert wg.row_bands(8, F2, 3, 8, band_bytes=1) == [(0, 6)]  # 3 tile rows: no power of two divides them


def test_per_call_parts_split_only_gemms_with_fewer_tiles_than_channels():
    assert wg.per_call_chunks(10, 4, F4, tiles=1, chunk_bytes=0) == [[0, 10]]
    assert wg.per_call_chunks(10, 4, F4, tiles=1, chunk_bytes=576 * 3) == [[0, 2], [2, 5], [5, 7], [7, 10]]  # 576 bytes of U per channel
    assert wg.per_call_chunks(10, 4, F4, tiles=4, chunk_bytes=1) == [[0, 10]]  # as many tiles as channels: whole


@pytest.mark.parametrize(
    "conv, size, min_spatial, reason",
    [
        ((8, 1, {}, True), 16, 16, "not 3x3"),
        ((8, 3, {"pads": [1, 1, 1, 1], "strides": [2, 2]}, True), 16, 16, "strided or dilated"),
        ((8, 3, {"pads": [1, 1, 1, 1], "group": 2}, True), 16, 16, "grouped"),
        ((8, 3, {"pads": [0, 0, 0, 0]}, True), 16, 16, "padding is not 1"),
        ((8, 3, PAD1, True), 17, 16, "size not divisible by 2"),
        ((3, 3, PAD1, True), 16, 16, "fewer than 8 channels"),
        ((8, 3, PAD1, True), 8, 16, "smaller than 16x16"),
    ],
)
def test_convs_the_rewrite_does_not_apply_to_are_kept_with_the_reason(conv, size, min_spatial, reason):
    model = conv_model([conv], c_in=8, size=size)
    report = wg.rewrite_winograd(model, min_spatial=min_spatial)
    assert report.kept == {"conv0": reason} and not report.rewritten
    assert [n.op_type for n in model.graph.node] == ["Conv"]


@pytest.mark.parametrize("kw", [{"min_spatial": 2}, {"f4_min_spatial": 3}, {"f4_min_spatial": True}, {"min_spatial": 16.0}])
def test_min_spatial_is_validated(kw):
    with pytest.raises(ValueError, match="min_spatial must be an integer >= 4"):
        wg.rewrite_winograd(conv_model([(8, 3, PAD1, True)], 8, 16), **kw)


def test_rewrite_works_on_a_graph_loaded_without_its_weights(tmp_path):
    """The build rewrites the graph file only; the new graph reads the original weight file."""
    model = conv_model([(16, 3, PAD1, True)], c_in=16, size=16)
    onnx.save_model(model, tmp_path / "plain.onnx", save_as_external_data=True, location="plain.onnx.data", size_threshold=0)
    shapes = wg.conv_input_shapes(onnx.load(str(tmp_path / "plain.onnx")))
    graph_only = onnx.load(str(tmp_path / "plain.onnx"), load_external_data=False)
    wg.rewrite_winograd(graph_only, input_shapes=shapes)
    (tmp_path / "wino.onnx").write_bytes(graph_only.SerializeToString())
    w0 = next(t for t in onnx.load(str(tmp_path / "wino.onnx"), load_external_data=False).graph.initializer if t.name == "w0")
    assert w0.data_location == TensorProto.EXTERNAL and not w0.raw_data  # a reference into plain.onnx.data, not a copy
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 16)).astype(np.float32)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    want = ort.InferenceSession(str(tmp_path / "plain.onnx"), so).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(tmp_path / "wino.onnx"), so).run(None, {"x": x})[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


# ---- the build's CPU graph --------------------------------------------------------------

@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """A 32x32 class-conditional model whose top-level convs the rewrite applies to."""
    pytest.importorskip("torch")
    from tests.models import save_small_model

    root = tmp_path_factory.mktemp("winograd")
    return save_small_model(root / "model", conditional=True, shift="scale_shift", sample_size=32), root


def build(wide_model, mode: str, per_call: str | None = None):
    """The wide model's folder built with `--winograd MODE` (and `--winograd-per-call`, default the build's)."""
    from cmrt.build.folder import build_engine_folder
    from cmrt.engine.options import BuildOptions

    folder, root = wide_model
    extra = {} if per_call is None else {"winograd_per_call": per_call}
    return build_engine_folder(str(folder), out=root / f"engine-{mode}-{per_call or 'default'}",
                               options=BuildOptions(precisions=("fp32",), max_batch=4, winograd=mode, **extra))


def test_always_keeps_a_validated_winograd_graph_that_shares_the_weights(wide_model):
    from cmrt.engine.manifest import read_manifest

    m = read_manifest(build(wide_model, "always"))
    rec = m.winograd
    assert rec["used"] and rec["rewrite"]["rewritten"] > 0
    assert rec["validation"]["max_abs_error"] <= 1e-4
    assert rec["file"] in m.data["files"] and m.data["onnx"]["fp32"]["external_data"] in m.data["files"]
    assert (m.folder / rec["file"]).stat().st_size < 1_000_000  # graph only: no second copy of the weights
    assert m.cpu_graph("fp32")[0] == m.folder / rec["file"]
    assert m.cpu_graph("fp32", winograd=False)[0] == m.onnx_path("fp32")
    # each CPU graph has its own measured batch per call (cmrt/build/cpu_batching.py)
    assert rec["batching"]["graph"] == rec["file"] and m.onnx_entry("fp32")["batching"]["graph"] == m.onnx_path("fp32").name
    assert m.batch_chunk(m.folder / rec["file"]) == rec["batching"]["chunk"]


def test_a_weight_file_that_does_not_match_the_manifest_is_refused(wide_model, tmp_path):
    import shutil

    from cmrt.engine.manifest import EngineFolderError, read_manifest
    from cmrt.engine.winograd_filters import filters_from_weight_file

    engine = tmp_path / "engine"
    shutil.copytree(build(wide_model, "always"), engine)
    rec = dict(read_manifest(engine).winograd)
    rec["filters"] = [dict(rec["filters"][0], offset=10**9)]
    with pytest.raises(EngineFolderError, match="does not fit the weight file"):
        filters_from_weight_file(engine, rec)


def test_winograd_and_plain_graphs_give_the_same_images(wide_model):
    import cmrt

    engine = build(wide_model, "always")
    kw = dict(batch_size=3, class_labels=[0, 4, 9], num_inference_steps=2, seed=11, output_type="np")
    wino = cmrt.load(engine, backend="onnxruntime", device="cpu", winograd=True)
    plain = cmrt.load(engine, backend="onnxruntime", device="cpu", winograd=False)
    assert wino.backend.session is not plain.backend.session
    a, b = wino(**kw).images, plain(**kw).images
    assert np.abs(a - b).max() <= 1e-4  # the fp32 bar on images in [0, 1]


def test_the_winograd_graph_has_its_own_step_graph(wide_model):
    """step_graph=True on a Winograd folder runs the Winograd graph's step graph: the Winograd
    numpy path's images, bit for bit; winograd=False picks the plain graph's step graph."""
    import cmrt
    from cmrt.engine.manifest import read_manifest
    from cmrt.engine.step_graph import step_graph

    engine = build(wide_model, "always")
    m = read_manifest(engine)
    rec = m.winograd["step"]
    assert rec["file"] == "unet.fp32.winograd.step.onnx" and rec["from"] == m.winograd["file"] and rec["file"] in m.files
    assert rec["validation"]["max_abs_error"] <= rec["validation"]["tolerance"]
    assert (m.folder / rec["file"]).stat().st_size < 1_000_000  # graph only, like the Winograd graph
    assert step_graph(m, "fp32", None)[0] == m.folder / rec["file"]
    assert step_graph(m, "fp32")[0] == m.folder / m.onnx_entry("fp32")["step"]["file"]
    kw = dict(batch_size=2, class_labels=[0, 9], num_inference_steps=2, seed=12, output_type="np")
    for winograd in (None, False):
        numpy_path = cmrt.load(engine, device="cpu", winograd=winograd)
        graph_path = cmrt.load(engine, device="cpu", winograd=winograd, step_graph=True)
        assert graph_path.step_graph and bool(graph_path.backend.extra_inputs) == (winograd is None)
        np.testing.assert_array_equal(graph_path(**kw).images, numpy_path(**kw).images)


def test_never_builds_no_winograd_graph_and_asking_for_one_says_how_to_get_it(wide_model):
    import cmrt
    from cmrt.engine.manifest import EngineFolderError, read_manifest

    engine = build(wide_model, "never")
    m = read_manifest(engine)
    assert m.winograd is None and not [f for f in m.files if "winograd" in f]
    with pytest.raises(EngineFolderError, match="--winograd always"):
        cmrt.load(engine, backend="onnxruntime", device="cpu", winograd=True)
    with pytest.raises(TypeError, match="winograd"):
        m.cpu_graph("fp32", winograd="yes")


def test_auto_records_the_timing_behind_its_choice(wide_model):
    from cmrt.engine.manifest import read_manifest

    m = read_manifest(build(wide_model, "auto"))
    rec = m.winograd
    t = rec["timing"]
    assert t["plain_ms"] > 0 and t["winograd_ms"] > 0 and min(t["runs"]) >= 3
    assert rec["used"] == (t["winograd_ms"] < (1 - t["min_gain"]) * t["plain_ms"])
    assert (m.folder / rec["file"]).exists() == rec["used"] == (rec["file"] in m.data["files"])


def test_auto_leaves_out_a_graph_too_big_for_the_machine(wide_model, monkeypatch, tmp_path):
    from cmrt.build import cpu_graph
    from cmrt.build.folder import build_engine_folder
    from cmrt.engine.options import BuildOptions
    from cmrt.engine.manifest import read_manifest

    monkeypatch.setattr(cpu_graph, "machine_memory_bytes", lambda: 1000)  # a 1 kB machine
    folder, _ = wide_model
    # stored filters: what adds memory (filters made per call add none)
    m = read_manifest(build_engine_folder(str(folder), out=tmp_path / "e", options=BuildOptions(precisions=("fp32",), winograd_per_call="none")))
    assert not m.winograd["used"] and "more memory" in m.winograd["reason"]
    assert m.winograd["file"] not in m.data["files"] and not (m.folder / m.winograd["file"]).exists()


def test_bad_winograd_mode_is_refused():
    from cmrt.engine.options import BuildOptions

    with pytest.raises(ValueError, match="winograd must be one of"):
        BuildOptions(winograd="sometimes")


@pytest.mark.parametrize("kw, error", [
    ({"winograd_min_size": 2}, ValueError), ({"winograd_f4_min_size": 1 << 20}, ValueError),
    ({"winograd_min_size": 16.0}, TypeError), ({"winograd_f4_min_size": True}, TypeError),
    ({"winograd_band_mib": -1}, ValueError), ({"winograd_band_mib": 1.5}, TypeError),
])
def test_bad_winograd_sizes_are_refused(kw, error):
    from cmrt.engine.options import BuildOptions

    with pytest.raises(error, match=next(iter(kw))):
        BuildOptions(**kw)


def test_the_band_bound_is_in_the_build_key_only_when_it_is_not_the_default():
    from cmrt.engine.options import BuildOptions
    from cmrt.engine.winograd import DEFAULT_BAND_MIB

    assert "winograd_band_mib" not in BuildOptions().to_dict() and BuildOptions().winograd_band_mib == DEFAULT_BAND_MIB
    assert BuildOptions(winograd_band_mib=0).to_dict()["winograd_band_mib"] == 0


def test_the_map_size_thresholds_are_build_options_recorded_in_the_manifest(wide_model, tmp_path):
    """--winograd-f4-min-size 64 on a 32x32 model: every rewritten map gets F(2x2) tiles, fewer
    filter bytes than the default build's, and the folder says what it was built with."""
    from cmrt.build.folder import build_engine_folder
    from cmrt.engine.manifest import read_manifest
    from cmrt.engine.options import BuildOptions

    folder, _ = wide_model
    lean = read_manifest(build_engine_folder(str(folder), out=tmp_path / "lean", options=BuildOptions(
        precisions=("fp32",), max_batch=4, winograd="always", winograd_f4_min_size=64, winograd_per_call="none")))
    default = read_manifest(build(wide_model, "always", "none"))  # stored filters, whose bytes the thresholds change
    assert {f["tile"] for f in lean.winograd["filters"]} == {2}
    assert {f["tile"] for f in default.winograd["filters"]} == {4, 2}
    assert lean.winograd["rewrite"]["rewritten"] == default.winograd["rewrite"]["rewritten"]
    assert lean.winograd["rewrite"]["added_filter_bytes"] < default.winograd["rewrite"]["added_filter_bytes"]
    assert lean.data["build_options"]["winograd_f4_min_size"] == 64 and lean.data["build_key"] != default.data["build_key"]
    assert lean.winograd["validation"]["max_abs_error"] <= 1e-4


@pytest.mark.parametrize("per_call", ["f4", "all"])
def test_filters_transformed_per_call_give_the_stored_filters_images(wide_model, tmp_path, per_call):
    """--winograd-per-call: the chosen tiles' filters are not stored; the graph reads their 3x3
    weights from the weight file and makes U at each call. The same images as the stored filters
    (and its own step graph's), a smaller filters file, and a build key of its own."""
    import cmrt
    from cmrt.build.folder import build_engine_folder
    from cmrt.engine.manifest import read_manifest
    from cmrt.engine.options import BuildOptions
    from cmrt.engine.winograd import PER_CALL_CHOICES

    folder, _ = wide_model
    engine = build_engine_folder(str(folder), out=tmp_path / "per-call", options=BuildOptions(
        precisions=("fp32",), max_batch=4, winograd="always", winograd_per_call=per_call))
    stored_engine = build(wide_model, "always", "none")
    m, stored = read_manifest(engine), read_manifest(stored_engine)
    tiles = PER_CALL_CHOICES[per_call]
    assert {f["tile"] for f in m.winograd["filters"] if "chunks" in f} == set(tiles)
    assert all(("chunks" in f) == (f["tile"] in tiles) for f in m.winograd["filters"])
    assert m.data["files"][m.winograd["filters_file"]]["bytes"] < stored.data["files"][stored.winograd["filters_file"]]["bytes"]
    assert m.data["build_options"]["winograd_per_call"] == per_call and m.data["build_key"] != stored.data["build_key"]
    assert "winograd_per_call" not in stored.data["build_options"]  # "none" recorded as folders from before the option record it
    assert m.winograd["validation"]["max_abs_error"] <= 1e-4
    kw = dict(batch_size=2, class_labels=[1, 7], num_inference_steps=2, seed=3, output_type="np")
    want = cmrt.load(stored_engine, backend="onnxruntime", device="cpu", winograd=True)(**kw).images
    numpy_loop = cmrt.load(engine, backend="onnxruntime", device="cpu", winograd=True)
    assert np.abs(numpy_loop(**kw).images - want).max() <= 1e-4
    step = cmrt.load(engine, backend="onnxruntime", device="cpu", winograd=True, step_graph=True)
    assert np.abs(step(**kw).images - want).max() <= 1e-4


def test_a_bad_per_call_choice_is_refused():
    from cmrt.engine.options import BuildOptions

    with pytest.raises(ValueError, match="winograd_per_call must be one of"):
        BuildOptions(winograd_per_call="f2")

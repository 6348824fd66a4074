"""benchmarks/winograd_filters_per_call.py: the per-call transforms give the stored filters' outputs,
and the script leaves nothing beside the folder."""
import pytest

from benchmarks import winograd_filters_per_call


@pytest.fixture(scope="module")
def winograd_engine(small_models, tmp_path_factory):
    from cmrt.build.folder import build_engine_folder
    from cmrt.engine.options import BuildOptions

    folder, _ = small_models["cond"]
    out = tmp_path_factory.mktemp("per-call") / "engine"
    return build_engine_folder(str(folder), out=out, options=BuildOptions(precisions=("fp32",), max_batch=4, winograd="always",
                                                                                  winograd_per_call="none"))


@pytest.mark.parametrize("options", [[], ["--no-arena"], ["--chunk-mib", "0.01"], ["--chunk-mib", "0.01", "--rows"]])
def test_every_mode_matches_the_stored_filters(winograd_engine, options, capsys):
    before = sorted(p.name for p in winograd_engine.parent.iterdir())
    assert winograd_filters_per_call.main([str(winograd_engine), "--batch", "2", "--runs", "1"] + options) == 0
    rows = {r.split()[0]: r.split() for r in capsys.readouterr().out.splitlines()[2:]}
    assert sorted(rows) == sorted(winograd_filters_per_call.MODES)
    assert rows["stored"][2] == "1.000"
    for mode in ("kron", "kron-f4"):
        assert float(rows[mode][4]) <= 1e-4  # the same convolution, transformed elsewhere
        assert float(rows[mode][3]) > 0
    assert sorted(p.name for p in winograd_engine.parent.iterdir()) == before  # its scratch folder is gone


def test_chunks_cover_every_output_channel_once():
    f = {"shape": [10, 4, 3, 3], "tile": 4, "tiles": 1}  # U: 36 * 4 * 4 = 576 bytes per output channel
    assert winograd_filters_per_call._chunks(f, 0) == [(0, 10)]
    assert winograd_filters_per_call._chunks(f, 576 * 3) == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert winograd_filters_per_call._chunks(f, 1) == [(i, i + 1) for i in range(10)]
    assert winograd_filters_per_call._chunks({**f, "tiles": 4}, 1) == [(0, 10)]  # as many tiles as channels: whole


def test_a_folder_without_winograd_filters_is_refused(small_models):
    # the small models' builds drop their Winograd graph (tests/conftest.py)
    with pytest.raises(SystemExit, match="no Winograd CPU graph"):
        winograd_filters_per_call.main([str(small_models["cond"][1])])


def test_a_chunked_graph_splits_the_gemms_with_few_tiles(winograd_engine, tmp_path):
    import onnx

    rec = winograd_filters_per_call._winograd_record(winograd_engine)
    split = [f for f in rec["filters"] if len(winograd_filters_per_call._chunks(f, 1024)) > 1]
    assert split and all(f["tiles"] < f["shape"][1] for f in split)
    path = winograd_filters_per_call._per_call_graph(winograd_engine, rec, "kron", tmp_path, 1024, rows=False)
    graph = onnx.load(str(path), load_external_data=False).graph
    assert sum(n.op_type == "Concat" and n.name.endswith("/per_call/Concat") for n in graph.node) == len(split)

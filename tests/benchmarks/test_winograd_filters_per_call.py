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
    return build_engine_folder(str(folder), out=out, options=BuildOptions(precisions=("fp32",), max_batch=4, winograd="always"))


@pytest.mark.parametrize("options", [[], ["--no-arena"], ["--chunk-mib", "0.01"]])
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
    f = {"shape": [10, 4, 3, 3], "tile": 4}  # U: 36 * 4 * 4 = 576 bytes per output channel
    assert winograd_filters_per_call._chunks(f, 0) == [(0, 10)]
    assert winograd_filters_per_call._chunks(f, 576 * 3) == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert winograd_filters_per_call._chunks(f, 1) == [(i, i + 1) for i in range(10)]


def test_a_folder_without_winograd_filters_is_refused(small_models):
    # the small models' builds drop their Winograd graph (tests/conftest.py)
    with pytest.raises(SystemExit, match="no Winograd CPU graph"):
        winograd_filters_per_call.main([str(small_models["cond"][1])])

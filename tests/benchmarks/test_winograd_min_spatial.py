"""benchmarks/winograd_min_spatial.py: each variant's graph is rewritten, stored and timed."""
from benchmarks import winograd_min_spatial


def test_each_variant_reports_its_tiles_filters_and_times(small_models, capsys):
    folder = str(small_models["cond"][1])
    assert winograd_min_spatial.main([folder, "--variants", "8", "16", "8/16", "--runs", "1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    rows = [r for r in rows if r[0] != "folder"]  # the folder's own graph, where the build kept one
    assert [r[0] for r in rows] == ["8/8", "16/16", "8/16"]
    tiles = {r[0]: (int(r[1].split(":")[1]), int(r[2].split(":")[1])) for r in rows}
    assert tiles["8/8"][0] > tiles["16/16"][0] > 0 and tiles["8/8"][1] == tiles["16/16"][1] == 0  # F(4x4) throughout
    # 8/16: the same Convs as 8/8, the 8x8 maps with F(2x2) tiles, so fewer filter bytes
    assert sum(tiles["8/16"]) == tiles["8/8"][0] and tiles["8/16"][1] > 0
    mib = {r[0]: float(r[3]) for r in rows}
    assert mib["8/16"] < mib["8/8"]
    assert rows[0][5] == "(1.000x)"  # the first variant is the reference


def test_a_variant_that_is_not_two_sizes_is_refused(capsys):
    import pytest

    for bad in ("16/32/64", "x", "0/16"):
        with pytest.raises(SystemExit):
            winograd_min_spatial.main(["unused", "--variants", bad])
        assert "a variant is MIN/F4 or MIN" in capsys.readouterr().err

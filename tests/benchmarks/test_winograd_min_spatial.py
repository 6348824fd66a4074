"""benchmarks/winograd_min_spatial.py: each size's graph is rewritten, stored and timed."""
from benchmarks import winograd_min_spatial


def test_each_size_reports_its_rewrite_filters_and_times(small_models, capsys):
    assert winograd_min_spatial.main([str(small_models["cond"][1]), "--sizes", "8", "16", "--runs", "1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [r[0] for r in rows] == ["8", "16"]
    rewritten = {r[0]: int(r[1]) for r in rows}
    assert rewritten["8"] > rewritten["16"] > 0  # a smaller threshold rewrites the 8x8 maps too
    assert rows[0][4] == "(1.000x)"  # the first size is the reference

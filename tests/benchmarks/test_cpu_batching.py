"""benchmarks/cpu_batching.py: both settings run, in their own processes and alternated, with the same images."""
import re

import pytest

from benchmarks import cpu_batching


def test_both_settings_report_each_call_and_agree(small_models, capsys):
    assert cpu_batching.main([str(small_models["cond"][1]), "--batch", "3", "--chunk", "2", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"(none|2) +\d", line)]
    assert len(rows) == 2 and all(len(re.findall(r"\d+ \(\d+\)", r)) == 3 for r in rows)
    diff = float(re.search(r"max abs diff (\S+)", out).group(1))
    assert diff <= 1e-5


def test_settings_that_split_nothing_are_refused():
    with pytest.raises(SystemExit):
        cpu_batching.main(["folder", "--batch", "4", "--chunk", "4"])

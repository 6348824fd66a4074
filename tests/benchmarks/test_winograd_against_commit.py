"""benchmarks/winograd_against_commit.py: an earlier commit's Winograd graph, built by that commit's
code in a worktree, timed against the folder's; here HEAD against a folder built by this tree."""
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks import winograd_against_commit

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def winograd_engine(small_models, tmp_path_factory):
    from cmrt.build.folder import build_engine_folder
    from cmrt.engine.options import BuildOptions

    folder, _ = small_models["cond"]
    out = tmp_path_factory.mktemp("against") / "engine"
    return build_engine_folder(str(folder), out=out, options=BuildOptions(precisions=("fp32",), max_batch=4, winograd="always"))


def test_head_against_a_folder_of_this_tree(winograd_engine, capsys):
    if shutil.which("git") is None or subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("needs the project's git repository")
    assert winograd_against_commit.main(["HEAD", str(winograd_engine), "--runs", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("filters: ")
    for line, batch in zip(out[1:], (1, 4)):
        assert line.startswith(f"batch {batch}: ") and "x); max abs output difference" in line
        assert float(line.rsplit(" ", 1)[1]) <= 1e-4  # the same rewrite, or one within the fp32 bar
    listed = subprocess.run(["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True).stdout
    assert "cmrt-against-" not in listed  # its worktree is gone


def test_a_folder_without_a_winograd_graph_is_refused(small_models, capsys):
    with pytest.raises(SystemExit):
        winograd_against_commit.main(["HEAD", str(small_models["cond"][1])])
    assert "has no Winograd CPU graph" in capsys.readouterr().err

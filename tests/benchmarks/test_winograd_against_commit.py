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


def _needs_commit(commit: str) -> None:
    if shutil.which("git") is None or subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"],
                                                     capture_output=True).returncode:
        pytest.skip(f"needs the project's git repository with commit {commit}")


# The last commit before the build/runtime split (cmrt/build): its rewrite lived in cmrt/export and
# its load computed the filters; the commit the cold-start work (#16) started from.
BEFORE_THE_SPLIT = "517715d"


@pytest.mark.parametrize("commit, extra", [("HEAD", []), (BEFORE_THE_SPLIT, ["--as-loaded"])], ids=["head", "before-the-split"])
def test_an_earlier_commit_against_a_folder_of_this_tree(winograd_engine, capsys, commit, extra):
    _needs_commit(commit)
    assert winograd_against_commit.main([commit, str(winograd_engine), "--runs", "1", *extra]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("filters: ")
    from cmrt.engine.manifest import read_manifest

    manifest = read_manifest(winograd_engine)
    chunk = manifest.batch_chunk(winograd_engine / manifest.winograd["file"]) if extra else None
    assert out[0].endswith(f"images per call: {chunk or 'the whole batch'}")
    for line, batch in zip(out[1:], (1, 4)):
        assert line.startswith(f"batch {batch}: ") and "x); max abs output difference" in line
        assert float(line.rsplit(" ", 1)[1]) <= 1e-4  # the same rewrite, or one within the fp32 bar
    listed = subprocess.run(["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True).stdout
    assert "cmrt-against-" not in listed  # its worktree is gone


def test_a_folder_without_a_winograd_graph_is_refused(small_models, capsys):
    with pytest.raises(SystemExit):
        winograd_against_commit.main(["HEAD", str(small_models["cond"][1])])
    assert "has no Winograd CPU graph" in capsys.readouterr().err

"""The CLI: `python -m cmrt` works, errors are one line with a non-zero exit."""
import json
import subprocess
import sys

import pytest

from cmrt.cli import main


def test_python_m_cmrt_help():
    r = subprocess.run([sys.executable, "-m", "cmrt", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "build" in r.stdout and "generate" in r.stdout


def test_info(small_models, capsys):
    engine = small_models["cond"][1]
    assert main(["info", str(engine)]) == 0
    out = capsys.readouterr().out
    assert "10 classes" in out and "verified" in out
    assert "  cpu batching  " in out and "ms at 1" in out
    assert main(["info", str(engine), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unet"]["sample_size"] == 16


def test_generate_with_labels(small_models, tmp_path, capsys):
    out = tmp_path / "g.png"
    engine = small_models["cond"][1]
    assert main(["generate", str(engine), "--batch", "3", "--steps", "2", "--class-labels", "1,2,3", "--out", str(out)]) == 0
    assert out.is_file() and "3 images" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["generate", "{engine}", "--timesteps", "0,17"], "descending"),
    (["generate", "{engine}", "--batch", "99"], "outside"),
    (["generate", "no_such_model"], "unknown model"),
    (["info", "/nonexistent/folder"], "does not exist"),
])
def test_errors_are_one_line(small_models, capsys, argv, match):
    argv = [a.format(engine=small_models["cond"][1]) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_steps_and_timesteps_are_exclusive(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "x", "--steps", "2", "--timesteps", "17,0"])
    assert "not allowed with" in capsys.readouterr().err


def test_generate_rng_torch_matches_api(small_models, tmp_path):
    import numpy as np
    from PIL import Image

    import cmrt
    from cmrt.runtime.postprocess import make_grid

    engine = small_models["cond"][1]
    out = tmp_path / "g.png"
    assert main(["generate", str(engine), "--batch", "2", "--timesteps", "22,0", "--seed", "3", "--rng", "torch",
                 "--out", str(out)]) == 0
    images = cmrt.load(engine)(batch_size=2, timesteps=[22, 0], seed=3, rng="torch", output_type="np").images
    np.testing.assert_array_equal(np.asarray(Image.open(out)), make_grid(images))

"""Every expected failure of a command is one line on stderr and exit code 2, never a traceback:
bad counts and sizes, pictures too large to allocate, a full disk, a file-size limit, a
permission, a damaged checkpoint."""
import errno
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmrt.cli import main

ROOT = Path(__file__).resolve().parents[2]


def is_progress(line: str) -> bool:
    """`cmrt build`'s progress bar (tqdm, on stderr), which is not an error message."""
    return "%|" in line and "stage" in line


def one_line_error(capsys, argv, *fragments):
    """Run `cmrt argv`; it must exit 2 with exactly one stderr line holding every fragment."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip() and not is_progress(line)]
    assert len(lines) == 1, err
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def engine(small_models):
    return str(small_models["cond"][1])


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    return path


# --- counts and sizes -------------------------------------------------------------------------
@pytest.mark.parametrize("argv,fragment", [
    (["generate", "{engine}", "--cols", "0"], "argument --cols: must be an integer >= 1, got '0'"),
    (["generate", "{engine}", "--batch", "0"], "argument --batch: must be an integer >= 1, got '0'"),
    (["generate", "{engine}", "--steps", "0"], "argument --steps: must be an integer >= 1"),
    (["edit", "superres", "{engine}", "--image", "{png}", "--patch-size", "0"], "argument --patch-size: must be an integer >= 1"),
    (["edit", "inpaint", "{engine}", "--image", "{png}", "--mask", "{png}", "--scale", "0"], "argument --scale: must be"),
    (["edit", "colorize", "{engine}", "--image", "{png}", "--batch", "0"], "argument --batch: must be"),
    (["triton-repo", "{engine}", "--out", "{tmp}/repo", "--max-batch", "0"], "argument --max-batch: must be an integer >= 1"),
    (["serve", "{engine}", "--max-batch", "0"], "argument --max-batch: must be an integer >= 1"),
    (["generate", "{engine}", "--cols", "1e9"], "argument --cols: expected an integer >= 1, got '1e9'"),
])
def test_counts_below_one_are_errors_not_defaults(capsys, engine, png, tmp_path, argv, fragment):
    argv = [a.format(engine=engine, png=png, tmp=tmp_path) for a in argv]
    one_line_error(capsys, argv, fragment)
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("argv,fragments", [
    (["generate", "{engine}", "--cols", "1000000000", "--out", "{tmp}/g.png"], ("over cmrt's limit", "use fewer columns")),
    (["edit", "inpaint", "{engine}", "--image", "{png}", "--mask", "{png}", "--scale", "100000", "--out", "{tmp}/g.png"],
     ("over cmrt's limit", "use a smaller --scale than 100000")),
])
def test_huge_pictures_are_refused_before_allocating(capsys, engine, png, tmp_path, argv, fragments):
    argv = [a.format(engine=engine, png=png, tmp=tmp_path) for a in argv]
    one_line_error(capsys, argv, *fragments)
    assert not (tmp_path / "g.png").exists()


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    from tests.runtime.test_input_limits import write_blank_png

    return write_blank_png(tmp_path_factory.mktemp("huge") / "huge.png", 9000, 9000)


@pytest.mark.parametrize("method", ["superres", "inpaint"])
@pytest.mark.parametrize("resize", [True, False], ids=["resize", "no-resize"])
def test_a_huge_png_is_refused_from_its_header(capsys, engine, tmp_path, monkeypatch, huge, method, resize):
    def no_decode(self, *a, **k):
        raise AssertionError("the image was decoded before its size was checked")

    monkeypatch.setattr(Image.Image, "load", no_decode)
    argv = ["edit", method, engine, "--image", str(huge), "--out", str(tmp_path / "g.png")]
    argv += ["--mask", str(huge)] if method == "inpaint" else []
    argv += [] if resize else ["--no-resize"]
    one_line_error(capsys, argv, f"--image {huge} is 9000x9000 pixels", "up to 4096")


def test_a_patch_size_that_does_not_divide_the_model(capsys, engine, png):
    one_line_error(capsys, ["edit", "superres", engine, "--image", str(png), "--patch-size", "32"],
                   "patch_size must be a positive divisor of the model's image size 16, got 32")


def test_a_file_that_is_not_an_image(capsys, engine, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    one_line_error(capsys, ["edit", "colorize", engine, "--image", str(bad)], f"--image {bad}", "cannot identify image file")


# --- the file system ----------------------------------------------------------------------------
def test_a_full_disk_is_one_line(capsys, engine, tmp_path, monkeypatch):
    import cmrt.cli.images

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(cmrt.cli.images, "write_bytes_atomic", full)
    out = tmp_path / "g.png"
    one_line_error(capsys, ["generate", engine, "--out", str(out)], "No space left on device", str(out), "free some space")


def test_an_output_path_without_permission_is_one_line(capsys, engine, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # root ignores the mode: have the file system answer as it would
        import tempfile

        def denied(*a, dir=None, **k):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))

        monkeypatch.setattr(tempfile, "mkstemp", denied)
    one_line_error(capsys, ["generate", engine, "--out", str(locked / "g.png")], "Permission denied", "check the permissions")


def test_an_output_path_under_a_file_is_one_line(capsys, engine, png):
    one_line_error(capsys, ["generate", engine, "--out", str(png / "g.png")], "File exists", str(png))


def test_a_damaged_safetensors_file_is_one_line(capsys, small_models, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(small_models["cond"][0], folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64)
    one_line_error(capsys, ["build", str(folder), "--out", str(tmp_path / "engine"), "--backend", "onnxruntime"],
                   "cannot load the UNet weights", "damaged or incomplete")


def test_an_absurd_config_is_one_line(capsys, small_models, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(small_models["cond"][0], folder)
    cfg = folder / "unet" / "config.json"
    cfg.write_text(cfg.read_text().replace('"layers_per_block": 1', '"layers_per_block": 1000000'))
    one_line_error(capsys, ["build", str(folder), "--out", str(tmp_path / "engine")], "layers_per_block must be an integer")


def test_a_file_size_limit_during_build_is_one_line(small_models, tmp_path):
    """A real RLIMIT_FSIZE on a real build, in its own process (the limit would also stop pytest's
    own writes): the ONNX file cannot be written (EFBIG; Python ignores SIGXFSZ)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    out = tmp_path / "engine"
    r = subprocess.run(
        [sys.executable, "-m", "cmrt", "-q", "build", str(small_models["cond"][0]), "--out", str(out),
         "--precision", "fp32", "--backend", "onnxruntime", "--winograd", "never"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, preexec_fn=limit,
    )
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert r.returncode == 2, r.stderr
    assert len(errors) == 1 and errors[0].startswith("cmrt build: error:"), r.stderr
    assert "File too large" in errors[0] and "ulimit -f" in errors[0], r.stderr
    assert not out.exists()

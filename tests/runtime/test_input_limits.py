"""Inputs whose size or shape the run time must check before it allocates or guesses:
masks with an RGB axis, images larger than any model needs (checked from PIL's header),
grids, thread pools, batch sizes, and torch-compatible seeds."""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import cmrt
from cmrt.runtime import images, postprocess
from cmrt.runtime.backends import onnxruntime_backend
from cmrt.runtime.images import load_images, load_masks
from cmrt.runtime.noise import make_noise_source
from cmrt.runtime.postprocess import make_grid
from cmrt.runtime.torch_rng import TorchCPUGenerator


def max_threads() -> int:
    """The limits are read where they are declared, inside each test, so that a cmrt without one fails that test alone."""
    return onnxruntime_backend.max_threads()


def write_blank_png(path, width, height):
    """A valid grayscale PNG of any size, written row by row: a 9000 x 9000 one is about 80 KB."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + one byte per pixel
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
        f.write(chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def pipe(small_models):
    return cmrt.load(small_models["cond"][1])


# --- masks ------------------------------------------------------------------------------------
def test_an_rgb_boolean_mask_is_one_mask():
    m = np.zeros((16, 16), bool)
    m[2:9, 3:7] = True
    rgb = np.repeat(m[:, :, None], 3, axis=-1)  # [H, W, 3]: was read as 16 masks of 16 x 3
    out = load_masks(rgb, size=16)
    assert out.shape == (1, 16, 16)
    np.testing.assert_array_equal(out[0], m)
    assert load_masks(np.stack([rgb, rgb]), size=16).shape == (2, 16, 16)  # [B, H, W, 3]


def test_an_rgb_mask_with_differing_channels_is_refused():
    rgb = np.zeros((16, 16, 3), bool)
    rgb[..., 0] = True
    with pytest.raises(ValueError, match=r"mask has shape \(16, 16, 3\) with channels that differ.*mask\[\.\.\., 0\]"):
        load_masks(rgb, size=16)


def test_inpaint_with_an_rgb_mask_keeps_the_unmasked_pixels(pipe):
    image = np.random.default_rng(0).random((16, 16, 3)).astype(np.float32)
    m = np.zeros((16, 16), bool)
    m[4:12, 4:12] = True
    out = pipe.inpaint(image, np.repeat(m[:, :, None], 3, axis=-1), seed=0, output_type="np").images
    assert out.shape == (1, 16, 16, 3)
    np.testing.assert_allclose(out[0][~m], image[~m], atol=1e-6)


# --- image sizes --------------------------------------------------------------------------------
def test_a_huge_png_is_refused_from_its_header(tmp_path, monkeypatch):
    """A 9000 x 9000 PNG of about 80 KB decodes to 81 MB (0.97 GB as float32 RGB): refused before decoding."""
    path = write_blank_png(tmp_path / "huge.png", 9000, 9000)
    assert path.stat().st_size < 200_000

    def no_decode(self, *a, **k):
        raise AssertionError("the image was decoded before its size was checked")

    monkeypatch.setattr(Image.Image, "load", no_decode)
    for resize in (True, False):
        with pytest.raises(ValueError, match=rf"image is 9000x9000 pixels; cmrt takes images up to {images.MAX_IMAGE_SIDE}"):
            load_images(Image.open(path), size=16, resize=resize)
    with pytest.raises(ValueError, match="mask is 9000x9000"):
        load_masks(Image.open(path), size=16)


def test_a_huge_array_is_refused_before_it_is_copied():
    side = images.MAX_IMAGE_SIDE
    big = np.zeros((1, side + 1, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=f"image is 8x{side + 1} pixels"):
        load_images(big, size=16)
    with pytest.raises(ValueError, match="mask is"):
        load_masks(np.zeros((8, side + 1), bool), size=16)


def test_the_largest_image_side_is_accepted(tmp_path):
    side = images.MAX_IMAGE_SIDE
    path = write_blank_png(tmp_path / "edge.png", side, 4)
    assert load_images(Image.open(path), size=None).shape == (1, 4, side, 3)


# --- grids ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cols,exc,match", [
    (0, ValueError, "cols must be an integer >= 1"),
    (-2, ValueError, "cols must be an integer >= 1"),
    (10**9, ValueError, "over cmrt's limit"),
    (2.5, ValueError, "cols must be an integer"),
])
def test_grid_columns_are_checked_before_allocating(cols, exc, match):
    with pytest.raises(exc, match=match):
        make_grid(np.zeros((4, 16, 16, 3), np.float32), cols=cols)


def test_grid_defaults_and_limits():
    assert make_grid(np.zeros((4, 16, 16, 3), np.float32)).shape == (38, 38, 3)  # None: square
    assert make_grid(np.zeros((4, 16, 16, 3), np.float32), cols=4).shape == (20, 74, 3)
    side = int(postprocess.MAX_PICTURE_PIXELS ** 0.5)
    with pytest.raises(ValueError, match="over cmrt's limit"):
        make_grid(np.broadcast_to(np.float32(0), (1, side, side, 1)))  # with its padding, just over the limit


# --- threads, batch size, seeds -------------------------------------------------------------------
@pytest.mark.parametrize("threads", [10**6, "4 per core + 1", 0, -1, True, 2.0])
def test_threads_are_bounded(small_models, threads):
    if threads == "4 per core + 1":
        threads = max_threads() + 1
    with pytest.raises(ValueError) as e:  # threads=10**6 segfaulted in ONNX Runtime
        cmrt.load(small_models["cond"][1], threads=threads)
    assert f"threads must be an integer in 1..{max_threads()}" in str(e.value)


def test_threads_within_the_bound_load(small_models):
    assert cmrt.load(small_models["cond"][1], threads=max_threads()).backend.threads == max_threads()


def test_openvino_threads_are_bounded(small_models):
    pytest.importorskip("openvino")
    with pytest.raises(ValueError, match="threads must be an integer in"):
        cmrt.load(small_models["cond"][1], backend="openvino", device="cpu", threads=10**6)


@pytest.mark.parametrize("batch", [0, -3])
def test_batch_size_below_one_says_so(pipe, batch):
    with pytest.raises(ValueError, match=f"batch_size must be >= 1, got {batch}") as e:
        pipe(batch_size=batch)
    assert "--max-batch" not in str(e.value)


@pytest.mark.parametrize("seed", [2**64, 2**64 + 5, 2**80])
def test_torch_seeds_beyond_64_bits_are_a_value_error(pipe, seed):
    with pytest.raises(ValueError, match="seed for rng='torch' must be below 2\\*\\*64"):
        pipe(seed=seed, rng="torch")
    with pytest.raises(ValueError, match="below 2\\*\\*64"):
        pipe(batch_size=2, seed=[1, seed], rng="torch")


def test_the_largest_torch_seed_and_big_numpy_seeds_work(pipe):
    assert pipe(seed=2**64 - 1, rng="torch", output_type="np").images.shape == (1, 16, 16, 3)
    assert pipe(seed=2**80, output_type="np").images.shape == (1, 16, 16, 3)  # numpy takes any size


def test_torch_cpu_generator_takes_torch_manual_seeds_range():
    """torch.manual_seed takes [-2**63, 2**64) and raises ValueError outside it (torch 2.13)."""
    torch = pytest.importorskip("torch")
    for seed in (2**64 - 1, -(2**63), -1, 0):
        assert TorchCPUGenerator(seed).initial_seed() == torch.Generator().manual_seed(seed).initial_seed()
    for seed in (2**64, -(2**63) - 1):
        with pytest.raises(ValueError):
            torch.Generator().manual_seed(seed)
        with pytest.raises(ValueError, match="like torch.manual_seed"):
            TorchCPUGenerator(seed)


def test_noise_source_seed_messages():
    with pytest.raises(ValueError, match="seed must be >= 0"):
        make_noise_source(-1, None, "torch", 1)

"""Fast tests of the independent digits quality check (benchmarks.quality.digits).

They need numpy and scikit-learn only (no torch, no trained weights).
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("sklearn")

from benchmarks.quality import digits as q  # noqa: E402


def test_split_is_fixed_disjoint_and_complete():
    train, heldout = q.digits_split()
    assert len(train) == 1438 and len(heldout) == 359
    assert len(np.intersect1d(train, heldout)) == 0
    assert np.array_equal(np.union1d(train, heldout), np.arange(1797))
    train2, heldout2 = q.digits_split()
    assert np.array_equal(train, train2) and np.array_equal(heldout, heldout2)
    _, labels = q.load_digits_split("heldout")
    assert np.bincount(labels, minlength=10).min() >= 25  # every class is represented


def test_classifier_is_accurate_on_real_digits_it_never_saw():
    rep = q.classifier_report()
    assert rep["n_heldout"] == 359 and rep["n_train_split"] == 1438
    assert rep["cv_accuracy_heldout"] >= 0.94
    assert rep["accuracy_on_train_split"] >= 0.95
    assert rep["accuracy_on_train_split_bilinear_roundtrip"] >= 0.93


@pytest.mark.parametrize("size, mode", [(16, "nearest"), (32, "nearest"), (16, "bilinear")])
def test_real_digits_through_model_space_score_high(size, mode):
    images8, labels = q.load_digits_split("train")
    images = q.digits_to_images(images8, size, mode=mode)
    assert images.shape == (len(labels), size, size, 3)
    assert images.dtype == np.float32 and images.min() >= 0.0 and images.max() <= 1.0
    s = q.score_samples(images, labels)
    assert s["n"] == len(labels)
    assert s["agreement"] >= 0.93
    assert s["class_spread"] >= 0.98
    assert s["max_class_fraction"] <= 0.15
    if mode == "nearest":  # area averaging recovers the 8x8 digits exactly
        assert s["agreement"] == pytest.approx(q.classifier_report()["accuracy_on_train_split"])
        assert 33.0 <= s["diversity"] <= 39.0
    else:
        assert 20.0 <= s["diversity"] <= 33.0


def test_nearest_roundtrip_is_exact():
    images8, _ = q.load_digits_split("heldout")
    feats = q.images_to_digit_features(q.digits_to_images(images8[:20], 16))
    np.testing.assert_allclose(feats, images8[:20].reshape(20, 64), atol=1e-4)


def test_random_noise_scores_low():
    rng = np.random.default_rng(0)
    labels = np.arange(500) % 10
    s = q.score_samples(rng.random((500, 16, 16, 3)), labels)
    assert s["agreement"] <= 0.3
    s = q.score_samples(rng.random((500, 32, 32, 3)), rng.integers(0, 10, 500))
    assert s["agreement"] <= 0.3


def test_collapsed_generator_shows_in_spread_and_diversity():
    images8, labels = q.load_digits_split("train")
    one = q.digits_to_images(images8[labels == 3][:1], 16)
    images = np.repeat(one, 200, axis=0)
    requested = np.arange(200) % 10
    s = q.score_samples(images, requested)
    assert s["agreement"] == pytest.approx(0.1)
    assert s["max_class_fraction"] == 1.0 and s["class_spread"] == pytest.approx(0.0, abs=1e-9)
    assert s["diversity"] == pytest.approx(0.0, abs=1e-6)


def test_input_validation():
    with pytest.raises(ValueError):
        q.score_samples(np.zeros((4, 16, 16, 3)), [0, 1, 2])
    with pytest.raises(ValueError):
        q.score_samples(np.zeros((4, 3, 16, 16)), [0, 1, 2, 3])  # channels-first
    with pytest.raises(ValueError):
        q.score_samples(np.full((2, 16, 16, 3), np.nan), [0, 1])
    # grayscale (B, H, W) is accepted too
    assert q.score_samples(np.zeros((2, 16, 16)), [0, 1])["n"] == 2


def test_quality_package_does_not_import_torch_or_sklearn():
    code = textwrap.dedent(
        """
        import sys
        import cmrt
        before = set(sys.modules)
        import benchmarks.quality, benchmarks.quality.digits
        new = set(sys.modules) - before
        bad = [m for m in ("torch", "sklearn", "numpy") if m in new]
        assert not bad, bad
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)

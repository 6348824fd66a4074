"""Independent quality check for the bundled handwritten-digits consistency model.

The bundled model (``cmrt/models/digits``) is trained on scikit-learn's 8x8
handwritten digits (``sklearn.datasets.load_digits``, 1,797 images, 10 classes).
This module owns the one fixed train / held-out split of that data set:

* the generator is trained on the *train* part only (``scripts/train_digits.py``
  imports :func:`digits_split` from here), and
* the classifier used to judge generated images is trained on the *held-out*
  part only, so it is independent of the generator's training data.

Generated images are judged by :func:`score_samples`, the single entry point
used by ``scripts/digits_quality.py`` and by anything else that wants to score
samples (e.g. cmrt's own runtime): images are converted to grayscale,
downsampled to 8x8 by area averaging, scaled to the data set's 0..16 range and
classified by an RBF SVC.

Importing this module needs neither numpy, torch nor scikit-learn; numpy and
scikit-learn are imported lazily inside the functions.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Dict, Sequence, Tuple

#: Seed of the permutation that defines the fixed split. Do not change: the
#: bundled model was trained on the "train" part of exactly this split.
DIGITS_SPLIT_SEED = 0
#: Fraction of the 1,797 digits held out from generator training (the last 20%
#: of the seeded permutation, i.e. 359 images).
DIGITS_HOLDOUT_FRACTION = 0.2

#: Fixed SVC hyper-parameters (the classic scikit-learn digits settings); they
#: were not tuned on generated samples.
_SVC_GAMMA = 0.001
_SVC_C = 10.0

#: Mean within-class pairwise distance (8x8 features, 0..16) of the real digits.
REAL_DIGITS_DIVERSITY = 36.1


def digits_split(seed: int = DIGITS_SPLIT_SEED, holdout_fraction: float = DIGITS_HOLDOUT_FRACTION):
    """Return ``(train_indices, heldout_indices)`` into ``load_digits()``.

    The split is a seeded permutation of all 1,797 indices; the last
    ``holdout_fraction`` of it is held out. Both index arrays are sorted.
    """
    import numpy as np
    from sklearn.datasets import load_digits

    n = len(load_digits().target)
    perm = np.random.default_rng(seed).permutation(n)
    n_heldout = int(math.floor(holdout_fraction * n))
    train = np.sort(perm[: n - n_heldout])
    heldout = np.sort(perm[n - n_heldout :])
    return train, heldout


@functools.lru_cache(maxsize=4)
def _load_split_cached(which: str):
    import numpy as np
    from sklearn.datasets import load_digits

    if which not in ("train", "heldout", "all"):
        raise ValueError(f"which must be 'train', 'heldout' or 'all', not {which!r}")
    d = load_digits()
    images = d.images.astype(np.float64)
    labels = d.target.astype(np.int64)
    if which == "all":
        idx = np.arange(len(labels))
    else:
        train, heldout = digits_split()
        idx = train if which == "train" else heldout
    images, labels = images[idx], labels[idx]
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_digits_split(which: str = "train"):
    """Return ``(images, labels)`` of one part of the fixed split.

    ``images`` is float64 ``(n, 8, 8)`` in the data set's 0..16 range, ``labels``
    int64 ``(n,)``. ``which`` is ``"train"`` (generator training data),
    ``"heldout"`` (classifier training data) or ``"all"``.
    """
    images, labels = _load_split_cached(which)
    return images.copy(), labels.copy()


def _bilinear_matrix(n_in: int, n_out: int):
    """(n_out, n_in) matrix of 1-D bilinear interpolation, half-pixel centres.

    Matches ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False, antialias=False)`` for upscaling.
    """
    import numpy as np

    m = np.zeros((n_out, n_in))
    scale = n_in / n_out
    for o in range(n_out):
        src = max((o + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        w1 = src - i0
        m[o, i0] += 1.0 - w1
        m[o, i1] += w1
    return m


def _nearest_matrix(n_in: int, n_out: int):
    """(n_out, n_in) matrix of 1-D nearest-neighbour resampling (half-pixel centres)."""
    import numpy as np

    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        m[o, min(int(math.floor((o + 0.5) * n_in / n_out)), n_in - 1)] = 1.0
    return m


def _area_matrix(n_in: int, n_out: int):
    """(n_out, n_in) matrix of 1-D area averaging (exact for any sizes)."""
    import numpy as np

    m = np.zeros((n_out, n_in))
    scale = n_in / n_out
    for o in range(n_out):
        lo, hi = o * scale, (o + 1) * scale
        for i in range(int(math.floor(lo)), min(int(math.ceil(hi)), n_in)):
            m[o, i] = max(0.0, min(hi, i + 1) - max(lo, i))
        m[o] /= m[o].sum()
    return m


def digits_to_images(images8, size: int, mode: str = "nearest"):
    """Turn 8x8 digits (0..16) into model-space images.

    Returns float32 ``(n, size, size, 3)`` in [0, 1]: the gray digit, upscaled
    to ``size`` and replicated into 3 channels. The training script maps this
    to [-1, 1] by ``2 * x - 1``.

    ``mode="nearest"`` (what the bundled model is trained on) makes every 8x8
    pixel a uniform block when ``size`` is a multiple of 8, so the area
    averaging in :func:`score_samples` recovers the original digit exactly.
    ``mode="bilinear"`` (torch's ``align_corners=False``) gives smoother images,
    but area averaging back to 8x8 then blurs them: real digits lose about a
    third of their measured diversity (36 -> 26) and ~1 point of accuracy.
    """
    import numpy as np

    x = np.asarray(images8, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"expected (n, h, w) digits, got shape {x.shape}")
    if mode == "nearest":
        mh, mw = _nearest_matrix(x.shape[1], size), _nearest_matrix(x.shape[2], size)
    elif mode == "bilinear":
        mh, mw = _bilinear_matrix(x.shape[1], size), _bilinear_matrix(x.shape[2], size)
    else:
        raise ValueError(f"mode must be 'nearest' or 'bilinear', not {mode!r}")
    up = np.einsum("oh,nhw,pw->nop", mh, x, mw) / 16.0
    up = np.clip(up, 0.0, 1.0).astype(np.float32)
    return np.repeat(up[..., None], 3, axis=-1)


def images_to_digit_features(images):
    """Convert generated images to the classifier's 64 features.

    ``images``: ``(B, H, W, 3)`` (or ``(B, H, W, 1)`` / ``(B, H, W)``) floats in
    [0, 1]. They are averaged over channels (grayscale), downsampled to 8x8 by
    area averaging and scaled to 0..16. Returns float64 ``(B, 64)``.
    """
    import numpy as np

    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 4:
        if x.shape[-1] not in (1, 3, 4):
            raise ValueError(f"expected channels-last (B, H, W, C) images, got shape {x.shape}")
        x = x[..., :3].mean(axis=-1) if x.shape[-1] != 1 else x[..., 0]
    elif x.ndim != 3:
        raise ValueError(f"expected (B, H, W, 3) or (B, H, W) images, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("images contain NaN or inf")
    x = np.clip(x, 0.0, 1.0)
    mh = _area_matrix(x.shape[1], 8)
    mw = _area_matrix(x.shape[2], 8)
    small = np.einsum("oh,nhw,pw->nop", mh, x, mw)
    return (small * 16.0).reshape(len(x), 64)


@functools.lru_cache(maxsize=1)
def _classifier():
    from sklearn.svm import SVC

    images, labels = _load_split_cached("heldout")
    clf = SVC(gamma=_SVC_GAMMA, C=_SVC_C)
    clf.fit(images.reshape(len(images), 64), labels)
    return clf


def classifier_report(cv_folds: int = 5) -> Dict[str, Any]:
    """Accuracy of the judging classifier on real digits it was not trained on.

    * ``cv_accuracy_heldout``: ``cv_folds``-fold cross-validation within the
      held-out part (each fold's model is trained on the rest of the held-out
      part only);
    * ``accuracy_on_train_split``: the final classifier (trained on the whole
      held-out part) on the generator's training digits, which it never saw;
    * ``accuracy_on_train_split_bilinear_roundtrip``: the same digits after being turned
      into 16x16 model images (bilinear upscaling, the worst case; nearest
      upscaling round-trips exactly) and back through :func:`score_samples`'
      feature path.
    """
    return dict(_classifier_report(cv_folds))


@functools.lru_cache(maxsize=2)
def _classifier_report(cv_folds: int) -> Dict[str, Any]:
    import numpy as np
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.svm import SVC

    h_images, h_labels = _load_split_cached("heldout")
    t_images, t_labels = _load_split_cached("train")
    cv = cross_val_score(
        SVC(gamma=_SVC_GAMMA, C=_SVC_C),
        h_images.reshape(len(h_images), 64),
        h_labels,
        cv=StratifiedKFold(cv_folds, shuffle=True, random_state=0),
    )
    clf = _classifier()
    acc = float(np.mean(clf.predict(t_images.reshape(len(t_images), 64)) == t_labels))
    rt = images_to_digit_features(digits_to_images(t_images, 16, mode="bilinear"))
    acc_rt = float(np.mean(clf.predict(rt) == t_labels))
    return {
        "cv_accuracy_heldout": float(cv.mean()),
        "accuracy_on_train_split": acc,
        "accuracy_on_train_split_bilinear_roundtrip": acc_rt,
        "n_heldout": int(len(h_labels)),
        "n_train_split": int(len(t_labels)),
    }


def _within_class_diversity(features, labels) -> Tuple[float, Dict[int, float]]:
    import numpy as np

    per_class: Dict[int, float] = {}
    for k in np.unique(labels):
        z = features[labels == k]
        n = len(z)
        if n < 2:
            continue
        sq = (z * z).sum(axis=1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
        np.fill_diagonal(d2, 0.0)
        per_class[int(k)] = float(np.sqrt(d2).sum() / (n * (n - 1)))
    mean = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    return mean, per_class


def score_samples(images, requested_labels: Sequence[int]) -> Dict[str, Any]:
    """Score generated digit images.

    Parameters
    ----------
    images:
        ``(B, H, W, 3)`` float array in [0, 1] (e.g. diffusers'
        ``output_type="np"``); any H, W; channels are averaged.
    requested_labels:
        ``(B,)`` class labels the images were generated for.

    Returns
    -------
    dict with

    * ``agreement``: fraction of images the independent classifier assigns to
      the requested class;
    * ``class_spread``: normalised entropy (0..1, 1 = uniform) of the predicted
      class distribution; with random or balanced labels a healthy model is
      close to 1, a collapsed one low;
    * ``max_class_fraction``: fraction of the most frequently predicted class
      (0.1 for a perfectly even spread);
    * ``diversity``: mean pairwise Euclidean distance of the 8x8 (0..16)
      features within each requested class, averaged over classes (real
      digits: about 36);
    * ``per_class_agreement``, ``per_class_diversity``, ``predicted_histogram``, ``n``.
    """
    import numpy as np

    labels = np.asarray(requested_labels).astype(np.int64).reshape(-1)
    feats = images_to_digit_features(images)
    if len(labels) != len(feats):
        raise ValueError(f"{len(feats)} images but {len(labels)} labels")
    if len(feats) == 0:
        raise ValueError("no images to score")
    pred = _classifier().predict(feats).astype(np.int64)
    hist = np.bincount(pred, minlength=10)[:10]
    p = hist / hist.sum()
    nz = p[p > 0]
    entropy = max(0.0, float(-(nz * np.log(nz)).sum() / math.log(10)))
    div, per_class_div = _within_class_diversity(feats, labels)
    per_class_agree = {
        int(k): float(np.mean(pred[labels == k] == k)) for k in np.unique(labels)
    }
    return {
        "agreement": float(np.mean(pred == labels)),
        "class_spread": entropy,
        "max_class_fraction": float(p.max()),
        "diversity": div,
        "per_class_agreement": per_class_agree,
        "per_class_diversity": per_class_div,
        "predicted_histogram": [int(h) for h in hist],
        "n": int(len(labels)),
    }

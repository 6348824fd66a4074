"""Independent quality checks for cmrt's generated images.

Importing this package is cheap: it pulls in neither torch nor scikit-learn;
those are imported lazily by the functions that need them.
"""

from .digits import (
    DIGITS_HOLDOUT_FRACTION,
    DIGITS_SPLIT_SEED,
    classifier_report,
    digits_split,
    digits_to_images,
    images_to_digit_features,
    load_digits_split,
    score_samples,
)

__all__ = [
    "DIGITS_HOLDOUT_FRACTION",
    "DIGITS_SPLIT_SEED",
    "classifier_report",
    "digits_split",
    "digits_to_images",
    "images_to_digit_features",
    "load_digits_split",
    "score_samples",
]

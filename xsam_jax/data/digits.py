"""scikit-learn's bundled 8x8 handwritten digits (UCI optical digits test set).

1,797 images with pixel values 0..16, shipped inside scikit-learn, so no download. The
train/test split is stratified and fixed by a seed; pixels are scaled to [0, 1].

References:
    Alpaydin, Kaynak. Optical Recognition of Handwritten Digits. UCI ML Repository, 1998.
"""

from __future__ import annotations

import numpy as np

from xsam_jax.data.dataset import Dataset

NUM_CLASSES = 10
MAX_PIXEL = 16.0


def load_digits(*, seed: int = 0, test_fraction: float = 0.2, as_images: bool = False) -> Dataset:
    """A seeded, stratified train/test split of the digits.

    Args:
        seed: fixes the split and the returned dataset's shuffling/augmentation seed, >= 0.
        test_fraction: share of the examples held out, in (0, 1).
        as_images: give `(N, 8, 8, 1)` images instead of `(N, 64)` feature vectors.

    Returns:
        A `Dataset` of float32 inputs in [0, 1] and int32 labels in [0, 10).
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    if seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    digits = sklearn_digits()
    x = (digits.data / MAX_PIXEL).astype(np.float32)
    if as_images:
        x = x.reshape(-1, 8, 8, 1)
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return Dataset(
        name="digits",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=NUM_CLASSES,
        seed=seed,
    )

"""Offline datasets, host-side augmentation and a prefetching batch pipeline.

Example::

    from xsam_jax import data

    ds = data.load("cifar10", seed=0)                 # needs a prepared TFDS copy
    aug = data.Augmentation(cutout_size=16)            # crop + flip + Cutout (p = 0.5)
    for epoch in range(num_epochs):
        for batch in ds.train_batches(128, epoch=epoch, augmentation=aug):
            ...                                        # batch["x"] float32, batch["y"] int32
    x_test, y_test = ds.arrays("test")
    tuned = data.load("mnist1d").split_validation(0.1, seed=0)  # 3,600 train / 400 val
    x_val, y_val = tuned.arrays("val")                 # same normalisation as train

"mnist1d" and "digits" need no download and no network; the TFDS datasets must have been
prepared beforehand, or are prepared on the first `load(name, download=True)` (see
`DatasetNotPreparedError`).
"""

from __future__ import annotations

import os
from typing import Any

from xsam_jax.data.augment import Augmentation, cutout, random_crop, random_flip
from xsam_jax.data.cache import cache_dir
from xsam_jax.data.dataset import Dataset
from xsam_jax.data.digits import load_digits
from xsam_jax.data.mnist1d import load_mnist1d
from xsam_jax.data.pipeline import (
    Batch,
    Prefetcher,
    batch_rng,
    epoch_permutation,
    iterate_batches,
)
from xsam_jax.data.tfds import SPECS as _TFDS_SPECS
from xsam_jax.data.tfds import DatasetNotPreparedError, load_tfds


def available() -> list[str]:
    """The dataset names `load` accepts, sorted."""
    return sorted(["mnist1d", "digits", *_TFDS_SPECS])


def load(
    name: str,
    *,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    **kwargs: Any,
) -> Dataset:
    """Loads a dataset by name.

    Args:
        name: one of `available()`: "mnist1d", "digits", "cifar10", "cifar100", "svhn",
            "fashion_mnist".
        seed: the dataset's shuffling/augmentation seed; for "digits" it also fixes the
            train/test split (the other datasets have fixed standard splits).
        data_dir: "mnist1d": the cache directory (default `$XSAM_JAX_CACHE` or
            `~/.cache/xsam_jax`); TFDS datasets: the TFDS data directory; "digits":
            unused (bundled with scikit-learn).
        download: TFDS datasets: download and prepare the dataset first if it is not
            prepared yet (needs internet access and the `[tfds-prepare]` extra); ignored by
            "mnist1d" and "digits", which need no download.
        **kwargs: loader options: "mnist1d": `test_size` (more test signals from the same
            generator); "digits": `test_fraction`, `as_images`; TFDS datasets:
            `normalization` ("standard" or "train").

    Returns:
        The `Dataset`.

    Raises:
        ValueError: for an unknown `name` (the message lists the allowed names).
        DatasetNotPreparedError: for a TFDS dataset that is not prepared locally (and
            `download` is False), or that could not be downloaded and prepared.
    """
    if name == "mnist1d":
        return load_mnist1d(cache=data_dir, seed=seed, **kwargs)
    if name == "digits":
        return load_digits(seed=seed, **kwargs)
    if name in _TFDS_SPECS:
        return load_tfds(name, data_dir=data_dir, seed=seed, download=download, **kwargs)
    raise ValueError(f"name must be one of {available()}, got {name!r}")


__all__ = [
    "Augmentation",
    "Batch",
    "Dataset",
    "DatasetNotPreparedError",
    "Prefetcher",
    "available",
    "batch_rng",
    "cache_dir",
    "cutout",
    "epoch_permutation",
    "iterate_batches",
    "load",
    "load_digits",
    "load_mnist1d",
    "load_tfds",
    "random_crop",
    "random_flip",
]

"""MNIST-1D (Greydanus 2020), generated offline and cached.

The standard dataset (5,000 signals of length 40 from the paper's default arguments,
generator seed 42, first 4,000 for training and the last 1,000 for testing) is produced
by the `mnist1d` package's own generator, never downloaded: `mnist1d.data.get_dataset`
fetches a pickle from the internet, `make_dataset` builds the same arrays locally. The
arrays are cached as an .npz file because generation takes a few seconds.

A 1,000-example test set measures accuracy to about +-0.8 points (one standard error at
93 %), as coarse as the differences between optimizers. `test_size=N` appends N - 1,000
further test signals drawn by the same generator with another seed: the training set and
the standard 1,000 test signals stay exactly as they are.

References:
    Greydanus. Scaling down Deep Learning (MNIST-1D). arXiv:2011.14439, 2020.
"""

from __future__ import annotations

import importlib.metadata
import os
import random
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from xsam_jax.data.cache import cache_dir, write_npz_atomically
from xsam_jax.data.dataset import Dataset

NUM_CLASSES = 10
STANDARD_TEST_SIZE = 1000
# Seeds the extra test signals; any seed but the standard set's 42 gives fresh draws.
EXTRA_TEST_SEED = 43


def _make_dataset(**overrides: Any) -> dict[str, np.ndarray]:
    """`mnist1d.data.make_dataset` with the paper's arguments, some replaced by `overrides`."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = types.SimpleNamespace(**(get_dataset_args(as_dict=True) | overrides))
    # make_dataset reseeds Python's and NumPy's global generators; restore them so that
    # loading the data does not change the caller's random streams.
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        return make_dataset(args)
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)


def _generate() -> dict[str, np.ndarray]:
    data = _make_dataset()
    return {
        "x_train": data["x"].astype(np.float32),
        "y_train": data["y"].astype(np.int32),
        "x_test": data["x_test"].astype(np.float32),
        "y_test": data["y_test"].astype(np.int32),
    }


def _generate_extra_test(num_extra: int) -> dict[str, np.ndarray]:
    # make_dataset draws num_samples // 10 signals per class, then shuffles them: round up
    # to whole classes and keep the first num_extra (near-balanced classes). The generator
    # standardises each call's signals by their own mean and std; those of the extra and
    # the standard signals differ only by sampling error (about 0.005 standard deviations
    # in the mean and 0.3 % in the scale), far below the per-signal variation.
    num_samples = -(-num_extra // NUM_CLASSES) * NUM_CLASSES
    data = _make_dataset(seed=EXTRA_TEST_SEED, num_samples=num_samples, train_split=1.0)
    return {
        "x_test": data["x"][:num_extra].astype(np.float32),
        "y_test": data["y"][:num_extra].astype(np.int32),
    }


def _cached(path: Path, generate: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays stored at `path`, generated and written there first if absent."""
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    arrays = generate()
    write_npz_atomically(path, arrays)
    return arrays


def load_mnist1d(
    *, cache: str | os.PathLike | None = None, seed: int = 0, test_size: int | None = None
) -> Dataset:
    """The standard MNIST-1D split: 4,000 training and 1,000 test signals of length 40.

    Args:
        cache: cache directory (see `cache_dir`); the file names include the `mnist1d`
            package version, so a new generator never serves stale arrays.
        seed: the returned dataset's shuffling/augmentation seed (the data itself is
            fixed by the generator's seeds).
        test_size: None (or 1,000) for the standard 1,000 test signals; N > 1,000 keeps
            them as the first 1,000 and appends N - 1,000 signals made by the same
            generator and arguments with seed `EXTRA_TEST_SEED` instead of 42: drawn
            from the same distribution, and none a copy of a training signal. Cached
            separately per `test_size`.

    Returns:
        A `Dataset` of float32 `(N, 40)` signals, already standardised by the generator,
        and int32 labels in [0, 10).

    Raises:
        ValueError: for a `test_size` below 1,000.
    """
    if test_size is not None and test_size < STANDARD_TEST_SIZE:
        raise ValueError(
            f"test_size must be None or an integer >= {STANDARD_TEST_SIZE}, got {test_size}"
        )
    directory = cache_dir(cache)
    stem = f"mnist1d-{importlib.metadata.version('mnist1d')}"
    arrays = _cached(directory / f"{stem}.npz", _generate)
    num_extra = (test_size or STANDARD_TEST_SIZE) - STANDARD_TEST_SIZE
    if num_extra:
        extra = _cached(
            directory / f"{stem}-test{test_size}.npz", lambda: _generate_extra_test(num_extra)
        )
        for key in ("x_test", "y_test"):
            arrays[key] = np.concatenate([arrays[key], extra[key]])
    return Dataset(
        name="mnist1d",
        x_train=arrays["x_train"],
        y_train=arrays["y_train"],
        x_test=arrays["x_test"],
        y_test=arrays["y_test"],
        num_classes=NUM_CLASSES,
        seed=seed,
    )

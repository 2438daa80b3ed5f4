"""MNIST-1D (Greydanus 2020), generated offline and cached.

The standard dataset (5,000 signals of length 40 from the paper's default arguments,
generator seed 42, first 4,000 for training and the last 1,000 for testing) is produced
by the `mnist1d` package's own generator, never downloaded: `mnist1d.data.get_dataset`
fetches a pickle from the internet, `make_dataset` builds the same arrays locally. The
arrays are cached as an .npz file because generation takes a few seconds.

References:
    Greydanus. Scaling down Deep Learning (MNIST-1D). arXiv:2011.14439, 2020.
"""

from __future__ import annotations

import importlib.metadata
import os
import random

import numpy as np

from xsam_jax.data.cache import cache_dir, write_npz_atomically
from xsam_jax.data.dataset import Dataset

NUM_CLASSES = 10


def _generate() -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset reseeds Python's and NumPy's global generators; restore them so that
    # loading the data does not change the caller's random streams.
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    return {
        "x_train": data["x"].astype(np.float32),
        "y_train": data["y"].astype(np.int32),
        "x_test": data["x_test"].astype(np.float32),
        "y_test": data["y_test"].astype(np.int32),
    }


def load_mnist1d(*, cache: str | os.PathLike | None = None, seed: int = 0) -> Dataset:
    """The standard MNIST-1D split: 4,000 training and 1,000 test signals of length 40.

    Args:
        cache: cache directory (see `cache_dir`); the file name includes the `mnist1d`
            package version, so a new generator never serves stale arrays.
        seed: the returned dataset's shuffling/augmentation seed (the data itself is
            fixed by the generator's seed 42).

    Returns:
        A `Dataset` of float32 `(N, 40)` signals, already standardised by the generator,
        and int32 labels in [0, 10).
    """
    version = importlib.metadata.version("mnist1d")
    path = cache_dir(cache) / f"mnist1d-{version}.npz"
    if path.exists():
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
    else:
        arrays = _generate()
        write_npz_atomically(path, arrays)
    return Dataset(name="mnist1d", num_classes=NUM_CLASSES, seed=seed, **arrays)

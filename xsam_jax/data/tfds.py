"""Image datasets read through `tfds.data_source` (random access, no TensorFlow).

CIFAR-10/100, SVHN (cropped digits; the 531k "extra" images are not used) and
Fashion-MNIST are read from an already prepared TFDS directory into uint8 NHWC arrays.
`tfds.data_source` needs the ArrayRecord file format, and this loader never downloads:
a missing or TFRecord-only copy raises `DatasetNotPreparedError` with the command that
prepares it on a machine with internet access.

Normalisation uses the usual published per-channel statistics of each training set
(`normalization="standard"`) or recomputes them from the loaded training split
(`normalization="train"`, what the SAM reference code does).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import numpy as np

from xsam_jax.data.dataset import Dataset


@dataclass(frozen=True)
class _Spec:
    tfds_name: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


SPECS: dict[str, _Spec] = {
    "cifar10": _Spec("cifar10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": _Spec("cifar100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": _Spec("svhn_cropped", 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "fashion_mnist": _Spec("fashion_mnist", 10, (0.2860,), (0.3530,)),
}
NORMALIZATIONS = ("standard", "train")
PIXEL_SCALE = 255.0


class DatasetNotPreparedError(RuntimeError):
    """The TFDS dataset is not on this machine in a form `tfds.data_source` can read."""


def _not_prepared_message(name: str, tfds_name: str, data_dir: str | None) -> str:
    where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return (
        f"Dataset {name!r} (TFDS {tfds_name!r}) is not prepared in ArrayRecord format under "
        f"{where}, and it is never downloaded at run time. On a machine with internet "
        "access run\n"
        f'    python -c "import tensorflow_datasets as tfds; '
        f"tfds.builder('{tfds_name}').download_and_prepare(file_format='array_record')\"\n"
        f"then copy ~/tensorflow_datasets/{tfds_name} into {where} (or pass data_dir= / set "
        "TFDS_DATA_DIR to the directory that holds it)."
    )


def _read_split(source) -> tuple[np.ndarray, np.ndarray]:
    n = len(source)
    first = source[0]
    x = np.empty((n, *first["image"].shape), np.uint8)
    y = np.empty((n,), np.int32)
    for i in range(n):
        record = source[i]
        x[i] = record["image"]
        y[i] = record["label"]
    return x, y


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 images in [0, 1] units.

    Counting the 256 possible values per channel is exact and needs no float copy of the
    images (1.2 GB in float64 for CIFAR's training set).
    """
    values = np.arange(256) / PIXEL_SCALE
    mean, std = [], []
    for c in range(x.shape[-1]):
        p = np.bincount(x[..., c].ravel(), minlength=256) / (x.size // x.shape[-1])
        m = p @ values
        mean.append(m)
        std.append(np.sqrt(p @ (values - m) ** 2))
    return np.array(mean), np.array(std)


def load_tfds(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    normalization: Literal["standard", "train"] = "standard",
    seed: int = 0,
) -> Dataset:
    """Loads a prepared TFDS image dataset's train and test splits into memory.

    Args:
        name: one of "cifar10", "cifar100", "svhn", "fashion_mnist".
        data_dir: the TFDS data directory; default `$TFDS_DATA_DIR` or
            `~/tensorflow_datasets`.
        normalization: "standard" (published per-channel mean/std) or "train" (computed
            from the loaded training images).
        seed: the returned dataset's shuffling/augmentation seed.

    Returns:
        A `Dataset` of uint8 `(N, H, W, C)` images, normalised batch by batch.

    Raises:
        DatasetNotPreparedError: if the dataset is not prepared in ArrayRecord format.
    """
    if name not in SPECS:
        raise ValueError(f"name must be one of {sorted(SPECS)}, got {name!r}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    # An optional dependency (the [examples] extra), and slow to import.
    import tensorflow_datasets as tfds

    spec = SPECS[name]
    data_dir = None if data_dir is None else os.fspath(data_dir)
    try:
        train, test = tfds.data_source(
            spec.tfds_name, split=["train", "test"], data_dir=data_dir, download=False
        )
    except (RuntimeError, OSError, ValueError, AssertionError) as err:
        # Without prepared files TFDS assumes the TFRecord format and raises an unhelpful
        # NotImplementedError about random access; other missing-file cases raise OSError.
        raise DatasetNotPreparedError(
            _not_prepared_message(name, spec.tfds_name, data_dir)
        ) from err
    x_train, y_train = _read_split(train)
    x_test, y_test = _read_split(test)
    if normalization == "standard":
        mean, std = np.array(spec.mean), np.array(spec.std)
    else:
        mean, std = _channel_stats(x_train)
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=spec.num_classes,
        seed=seed,
        scale=PIXEL_SCALE,
        mean=mean,
        std=std,
    )

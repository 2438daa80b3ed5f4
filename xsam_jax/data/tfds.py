"""Image datasets read from TFDS's random-access ArrayRecord files (no TensorFlow to read).

CIFAR-10/100, SVHN (cropped digits; the 531k "extra" images are not used) and
Fashion-MNIST are read from a prepared TFDS directory into uint8 NHWC arrays. Random access
needs the ArrayRecord file format. Nothing is downloaded unless asked: a missing copy raises
`DatasetNotPreparedError`, whose message names `download=True` (`xsam-train --download`).
With it, TFDS's own builder downloads the original archives and writes the ArrayRecord
files, once; the builders read and encode through TensorFlow, so preparing (not reading)
needs the `[tfds-prepare]` extra.

The first load decodes every image (60,000 PNGs for CIFAR); the decoded arrays are then
cached as one .npz per split (see `cache_dir`), so later loads skip decoding.

Normalisation uses the usual published per-channel statistics of each training set
(`normalization="standard"`) or recomputes them from the loaded training split
(`normalization="train"`, what the SAM reference code does).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from xsam_jax.data.cache import cache_dir, write_npz_atomically
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
    """A TFDS dataset cannot be read here: it is not prepared, or preparing it failed."""


SPLITS = ("train", "test")
PREPARE_EXTRA = "pip install 'xsam-jax[tfds-prepare]'"


def _builder(spec: _Spec, data_dir: str | None) -> Any:
    # An optional dependency (the [examples] extra), and slow to import.
    import tensorflow_datasets as tfds

    return tfds.builder(spec.tfds_name, data_dir=data_dir, file_format="array_record")


def _not_prepared_message(name: str, tfds_name: str, root: os.PathLike) -> str:
    return (
        f"Dataset {name!r} (TFDS {tfds_name!r}) is not prepared in ArrayRecord format under "
        f"{root}. Pass --download (Python: download=True) to download and prepare it there "
        f"(needs internet access and {PREPARE_EXTRA}), or prepare it that way on a machine "
        f"with internet access and copy its {tfds_name}/ folder into {root} here, or point "
        "--data-dir (data_dir=) at a TFDS data directory that holds it."
    )


# What TFDS's builders need to prepare data besides TFDS itself: TensorFlow reads the
# downloads and encodes the images; TFDS 4.9 imports importlib_resources while declaring it
# for Python < 3.9 only.
PREPARE_MODULES = ("tensorflow", "importlib_resources")


def _missing_prepare_modules() -> list[str]:
    return [m for m in PREPARE_MODULES if importlib.util.find_spec(m) is None]


def _download_and_prepare(name: str, spec: _Spec, data_dir: str | None) -> None:
    """Runs TFDS's builder for the dataset unless it is already prepared.

    TFDS writes into `<root>/<name>/incomplete.<random>_<version>/` and renames that folder to
    `<root>/<name>/<version>/` only once everything is written (downloads and extracted
    archives go through temporary names too), so readers never see a partial dataset, and
    an interrupted run leaves nothing that counts as prepared.
    """
    builder = _builder(spec, data_dir)
    if builder.is_prepared():
        return
    if missing := _missing_prepare_modules():
        raise DatasetNotPreparedError(
            f"download=True (--download) prepares {name!r} with TFDS's {spec.tfds_name!r} "
            f"builder, which needs {', '.join(missing)}: {PREPARE_EXTRA}"
        )
    try:
        builder.download_and_prepare(file_format="array_record")
    except Exception as err:
        # Whatever failed deep inside TFDS (most often the network), say so in one line;
        # the traceback stays available as the cause.
        if _builder(spec, data_dir).is_prepared():
            return  # another process prepared it meanwhile, and its rename came first
        summary = (str(err).strip().splitlines() or [""])[0]
        raise DatasetNotPreparedError(
            f"could not download and prepare {name!r} (TFDS {spec.tfds_name!r}) under "
            f"{builder.data_dir_root}: {type(err).__name__}: {summary}"
        ) from err


def _prepare(name: str, spec: _Spec, data_dir: str | None) -> None:
    """`_download_and_prepare` on process 0 only when several JAX processes run.

    The others wait for it and then read what it wrote (so `data_dir` must be on a file
    system they share). They wait even when it failed, so that every process then raises
    `DatasetNotPreparedError` rather than some of them hanging at the next collective.
    """
    import jax
    from jax.experimental import multihost_utils

    several = jax.process_count() > 1
    failure = None
    if not several or jax.process_index() == 0:
        try:
            _download_and_prepare(name, spec, data_dir)
        except DatasetNotPreparedError as err:
            failure = err
    if several:
        multihost_utils.sync_global_devices(f"xsam_jax: prepare {spec.tfds_name}")
    if failure is not None:
        raise failure


def _decoded_cache_path(builder: Any, split: str) -> Path | None:
    """`<cache_dir()>/tfds-<name>-<version>-<split>-<fingerprint>.npz`.

    The fingerprint covers the split's files (path, size, modification time), so another
    copy or a re-prepared dataset gets its own entry. Returns None when the files are not
    on disk (nothing to key the cache on, e.g. under `tfds.testing.mock_data`).
    """
    try:
        files = [os.path.abspath(f) for f in builder.info.splits[split].filepaths]
        stats = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    except (KeyError, OSError):
        return None
    fingerprint = hashlib.sha256(repr(stats).encode()).hexdigest()[:16]
    return cache_dir() / f"tfds-{builder.name}-{builder.version}-{split}-{fingerprint}.npz"


def _read_decoded(path: Path, num_examples: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached `(x, y)`, or None when the file is missing, partial or not what we wrote."""
    try:
        with np.load(path) as f:
            x, y = f["x"], f["y"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    if x.dtype != np.uint8 or x.ndim != 4 or y.dtype != np.int32:
        return None
    if not len(x) == len(y) == num_examples:
        return None
    return x, y


def _split_arrays(builder: Any, split: str, source) -> tuple[np.ndarray, np.ndarray]:
    """One split's decoded images and labels, from the cache when it holds them."""
    path = _decoded_cache_path(builder, split)
    if path is not None:
        cached = _read_decoded(path, builder.info.splits[split].num_examples)
        if cached is not None:
            return cached
    x, y = _read_split(source)
    if path is not None:
        try:
            write_npz_atomically(path, {"x": x, "y": y})
        except OSError as err:  # a read-only or full cache only costs the next load time
            warnings.warn(
                f"could not cache the decoded {split} split at {path}: {err}", stacklevel=3
            )
    return x, y


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
    download: bool = False,
) -> Dataset:
    """Loads a TFDS image dataset's train and test splits into memory.

    Args:
        name: one of "cifar10", "cifar100", "svhn", "fashion_mnist".
        data_dir: the TFDS data directory; default `$TFDS_DATA_DIR` or
            `~/tensorflow_datasets`.
        normalization: "standard" (published per-channel mean/std) or "train" (computed
            from the loaded training images).
        seed: the returned dataset's shuffling/augmentation seed.
        download: download and prepare the dataset in `data_dir` first if it is not
            prepared there (needs internet access and the `[tfds-prepare]` extra). With
            several JAX processes only process 0 does it and the others wait for it.

    Returns:
        A `Dataset` of uint8 `(N, H, W, C)` images, normalised batch by batch.

    Raises:
        DatasetNotPreparedError: if the dataset is not prepared in ArrayRecord format and
            `download` is False, or if downloading or preparing it failed.
    """
    if name not in SPECS:
        raise ValueError(f"name must be one of {sorted(SPECS)}, got {name!r}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    spec = SPECS[name]
    data_dir = None if data_dir is None else os.fspath(data_dir)
    if download:
        _prepare(name, spec, data_dir)
    builder = _builder(spec, data_dir)
    try:
        sources = builder.as_data_source(split=list(SPLITS))
    except (KeyError, RuntimeError, OSError, ValueError, AssertionError) as err:
        # A missing dataset surfaces as a KeyError on its empty split list, a TFRecord-only
        # copy as a NotImplementedError about random access, missing files as OSError.
        raise DatasetNotPreparedError(
            _not_prepared_message(name, spec.tfds_name, builder.data_dir_root)
        ) from err
    (x_train, y_train), (x_test, y_test) = (
        _split_arrays(builder, split, source) for split, source in zip(SPLITS, sources, strict=True)
    )
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

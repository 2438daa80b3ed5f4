"""MNIST-1D (generated offline, cached), scikit-learn digits, TFDS image datasets (mocked)."""

import collections
import os
import random

import mnist1d.data
import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits as sklearn_digits
from tfds_fakes import TinyCifar10, tiny_images

from xsam_jax import data
from xsam_jax.data import mnist1d as mnist1d_module
from xsam_jax.data import tfds as tfds_module


def refuse_downloads(mp):
    # MNIST-1D's downloading entry point must never be used.
    def refuse(*args, **kwargs):
        raise AssertionError("mnist1d.data.get_dataset downloads; it must not be called")

    mp.setattr(mnist1d.data, "get_dataset", refuse)


@pytest.fixture(scope="module")
def mnist1d_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        refuse_downloads(mp)
        data.load("mnist1d", data_dir=path)
    return path


def test_mnist1d_standard_split(mnist1d_cache):
    ds = data.load("mnist1d", data_dir=mnist1d_cache)
    assert ds.x_train.shape == (4000, 40) and ds.x_test.shape == (1000, 40)
    assert ds.y_train.shape == (4000,) and ds.y_test.shape == (1000,)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.num_classes == 10 and ds.input_shape == (40,)
    assert set(np.unique(ds.y_train)) == set(range(10))
    # The generator standardises the whole set (train and test together).
    x = np.concatenate([ds.x_train, ds.x_test])
    assert abs(x.mean()) < 1e-3 and abs(x.std() - 1) < 1e-3


def test_mnist1d_second_call_is_served_from_cache(mnist1d_cache, monkeypatch):
    first = data.load("mnist1d", data_dir=mnist1d_cache)
    files = list(mnist1d_cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert files[0].stat().st_mode & 0o777 == 0o666 & ~umask  # not tempfile's 0600

    def refuse():
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(mnist1d_module, "_generate", refuse)
    second = data.load("mnist1d", data_dir=mnist1d_cache)
    np.testing.assert_array_equal(first.x_train, second.x_train)
    np.testing.assert_array_equal(first.y_test, second.y_test)


def test_mnist1d_generation_is_deterministic_and_leaves_global_rng_alone(
    mnist1d_cache, tmp_path, monkeypatch
):
    refuse_downloads(monkeypatch)
    monkeypatch.setenv("XSAM_JAX_CACHE", str(tmp_path))
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    fresh = data.load_mnist1d()  # cache dir from the environment variable
    np_after = np.random.get_state()  # noqa: NPY002
    assert np.array_equal(np_state[1], np_after[1]) and np_state[2:] == np_after[2:]
    assert random.getstate() == py_state
    assert len(list(tmp_path.glob("mnist1d-*.npz"))) == 1

    cached = data.load("mnist1d", data_dir=mnist1d_cache)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(fresh, name), getattr(cached, name))


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("XSAM_JAX_CACHE", str(tmp_path / "env"))
    assert data.cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data.cache_dir() == tmp_path / "env"
    monkeypatch.delenv("XSAM_JAX_CACHE")
    assert str(data.cache_dir()).endswith(".cache/xsam_jax")
    assert "~" not in str(data.cache_dir())


def test_digits_split_sizes_range_and_stratification():
    ds = data.load("digits")
    assert ds.x_train.shape == (1437, 64) and ds.x_test.shape == (360, 64)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.num_classes == 10
    x = np.concatenate([ds.x_train, ds.x_test])
    assert x.min() == 0.0 and x.max() == 1.0
    # The two splits together are exactly the bundled set (as a multiset of examples).
    raw = sklearn_digits()
    ours = collections.Counter(
        (row.tobytes(), int(label))
        for row, label in zip(x * 16, np.concatenate([ds.y_train, ds.y_test]), strict=True)
    )
    reference = collections.Counter(
        (row.astype(np.float32).tobytes(), int(label))
        for row, label in zip(raw.data, raw.target, strict=True)
    )
    assert ours == reference
    # Stratified: every class keeps its share (to within one example) in the test split.
    share = np.bincount(ds.y_test, minlength=10) / np.bincount(raw.target, minlength=10)
    assert np.all(np.abs(share - 0.2) < 0.03)


def test_digits_split_is_a_function_of_the_seed():
    a, b, c = data.load("digits", seed=1), data.load("digits", seed=1), data.load("digits", seed=2)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_train, c.y_train)
    assert a.seed == 1


def test_digits_as_images_and_bad_arguments():
    ds = data.load("digits", as_images=True, test_fraction=0.5)
    assert ds.x_train.shape[1:] == (8, 8, 1) and len(ds.y_test) in (898, 899)
    with pytest.raises(ValueError, match="test_fraction"):
        data.load("digits", test_fraction=1.0)
    with pytest.raises(ValueError, match="seed"):
        data.load("digits", seed=-1)


CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465])
CIFAR10_STD = np.array([0.2470, 0.2435, 0.2616])


def test_cifar10_from_mocked_tfds():
    with tfds.testing.mock_data(num_examples=24):
        ds = data.load("cifar10")
        reference = tfds.data_source("cifar10", split="train")
        images = np.stack([reference[i]["image"] for i in range(24)])
        labels = np.array([reference[i]["label"] for i in range(24)])
    assert ds.x_train.shape == (24, 32, 32, 3) and ds.x_train.dtype == np.uint8
    assert ds.y_train.dtype == np.int32 and ds.num_classes == 10
    assert ds.input_shape == (32, 32, 3)
    np.testing.assert_array_equal(ds.x_train, images)
    np.testing.assert_array_equal(ds.y_train, labels)

    x, y = ds.arrays("train")
    assert x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_allclose(x, (images / 255.0 - CIFAR10_MEAN) / CIFAR10_STD, atol=1e-5)
    batch = next(iter(ds.test_batches(8, prefetch=0)))
    expected = (ds.x_test[:8] / 255.0 - CIFAR10_MEAN) / CIFAR10_STD
    np.testing.assert_allclose(batch["x"], expected, atol=1e-5)


def test_train_normalization_standardises_the_training_split():
    with tfds.testing.mock_data(num_examples=24):
        ds = data.load("cifar100", normalization="train")
    assert ds.num_classes == 100
    pixels = ds.x_train.reshape(-1, 3).astype(np.float64) / 255.0
    np.testing.assert_allclose(ds.mean, pixels.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(ds.std, pixels.std(axis=0), rtol=1e-6)
    x, _ = ds.arrays("train")
    np.testing.assert_allclose(x.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=(0, 1, 2)), 1.0, atol=1e-4)


@pytest.mark.parametrize(("name", "shape"), [("svhn", (32, 32, 3)), ("fashion_mnist", (28, 28, 1))])
def test_other_tfds_datasets(name, shape):
    with tfds.testing.mock_data(num_examples=6):
        ds = data.load(name)
    assert ds.input_shape == shape and ds.num_classes == 10
    assert next(iter(ds.test_batches(4, prefetch=0)))["x"].shape == (4, *shape)


def test_missing_tfds_dataset_gives_a_clear_error(tmp_path):
    with pytest.raises(data.DatasetNotPreparedError) as info:
        data.load("cifar10", data_dir=tmp_path)
    message = str(info.value)
    assert "'cifar10'" in message and str(tmp_path) in message
    assert "download=True" in message and "[tfds-prepare]" in message
    assert info.value.__cause__ is not None


def test_unknown_names_and_options():
    with pytest.raises(ValueError, match="cifar10") as info:
        data.load("imagenet")
    assert all(name in str(info.value) for name in data.available())
    assert data.available() == sorted(
        ["cifar10", "cifar100", "digits", "fashion_mnist", "mnist1d", "svhn"]
    )
    with pytest.raises(ValueError, match="normalization"):
        data.load("cifar10", normalization="imagenet")


def test_cifar10_from_a_real_array_record_directory(tmp_path):
    TinyCifar10(data_dir=tmp_path, file_format="array_record").download_and_prepare()
    ds = data.load("cifar10", data_dir=tmp_path)
    assert ds.x_train.shape == (7, 32, 32, 3) and ds.x_test.shape == (3, 32, 32, 3)
    for x, y, n in ((ds.x_train, ds.y_train, 7), (ds.x_test, ds.y_test, 3)):
        # Examples come back in the builder's shuffled order; the label is the index.
        assert sorted(y.tolist()) == list(range(n))
        np.testing.assert_array_equal(x, tiny_images(n)[y])


def test_without_data_dir_the_cli_names_download_and_data_dir(tmp_path, monkeypatch, capsys):
    # A fresh machine: TFDS's default data dir (~/tensorflow_datasets, or $TFDS_DATA_DIR read
    # when TFDS is imported) is empty, and the user gives no --data-dir.
    from tensorflow_datasets.core import constants

    from xsam_jax import cli

    monkeypatch.setattr(constants, "DATA_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as info:
        cli.main(["--dataset", "cifar10", "--epochs", "1", "--no-progress"])
    assert info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("xsam-train: error: Dataset 'cifar10'") and "\n" not in message
    assert "--download" in message and "--data-dir" in message and str(tmp_path) in message
    assert list(tmp_path.iterdir()) == []  # looking did not create anything


def decoded_cache_files(cache):
    return sorted(p.name for p in cache.iterdir())


def test_second_load_reads_the_decoded_cache(tmp_path, isolated_cache, monkeypatch):
    TinyCifar10(data_dir=tmp_path, file_format="array_record").download_and_prepare()
    first = data.load("cifar10", data_dir=tmp_path)
    names = decoded_cache_files(isolated_cache)
    assert len(names) == 2 and all(n.endswith(".npz") for n in names)  # no temporary left
    assert names[0].startswith("tfds-cifar10-3.0.2-test-")
    assert names[1].startswith("tfds-cifar10-3.0.2-train-")

    def refuse(source):
        raise AssertionError("decoded the images again although they are cached")

    monkeypatch.setattr(tfds_module, "_read_split", refuse)
    second = data.load("cifar10", data_dir=tmp_path)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(second, name), getattr(first, name))
        assert getattr(second, name).dtype == getattr(first, name).dtype


def test_a_corrupted_or_partial_decoded_cache_is_rewritten(tmp_path, isolated_cache, monkeypatch):
    TinyCifar10(data_dir=tmp_path, file_format="array_record").download_and_prepare()
    first = data.load("cifar10", data_dir=tmp_path)
    test_file, train_file = sorted(isolated_cache.iterdir())
    train_file.write_bytes(train_file.read_bytes()[: train_file.stat().st_size // 2])
    test_file.write_bytes(b"not an npz file")

    decoded = []
    read_split = tfds_module._read_split

    def counting(source):
        decoded.append(len(source))
        return read_split(source)

    monkeypatch.setattr(tfds_module, "_read_split", counting)
    second = data.load("cifar10", data_dir=tmp_path)
    assert sorted(decoded) == [3, 7]  # both splits decoded again
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(second, name), getattr(first, name))
    for file, x in ((train_file, first.x_train), (test_file, first.x_test)):
        with np.load(file) as rewritten:
            np.testing.assert_array_equal(rewritten["x"], x)


def test_mocked_tfds_data_is_never_cached(isolated_cache):
    # Mocked data has no files to key a cache entry on; caching it would serve stale
    # examples to a later mock with another size.
    with tfds.testing.mock_data(num_examples=5):
        data.load("cifar10")
    assert list(isolated_cache.iterdir()) == []

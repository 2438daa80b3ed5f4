"""load_mnist1d(test_size=N): the standard split kept exactly, N - 1,000 fresh test signals."""

import importlib.metadata
import random

import mnist1d.data
import numpy as np
import pytest

from xsam_jax import data
from xsam_jax.data import mnist1d as mnist1d_module

TEST_SIZE = 3000


def refuse(*args, **kwargs):
    raise AssertionError("must not be called")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mnist1d.data, "get_dataset", refuse)  # it downloads
        data.load("mnist1d", data_dir=path, test_size=TEST_SIZE)
    return path


@pytest.fixture(scope="module")
def standard():
    # The package's own standard split, generated here rather than read from the cache.
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        return mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)


@pytest.fixture(scope="module")
def large(cache):
    return data.load("mnist1d", data_dir=cache, test_size=TEST_SIZE)


def stem():
    return f"mnist1d-{importlib.metadata.version('mnist1d')}"


def test_shapes_and_labels(large):
    assert large.x_train.shape == (4000, 40) and large.y_train.shape == (4000,)
    assert large.x_test.shape == (TEST_SIZE, 40) and large.y_test.shape == (TEST_SIZE,)
    assert large.x_test.dtype == np.float32 and large.y_test.dtype == np.int32
    counts = np.bincount(large.y_test[1000:], minlength=10)
    assert counts.sum() == 2000 and counts.min() >= 150 and counts.max() <= 250


def test_standard_examples_unchanged(cache, standard, large):
    np.testing.assert_array_equal(large.x_train, standard["x"].astype(np.float32))
    np.testing.assert_array_equal(large.y_train, standard["y"])
    np.testing.assert_array_equal(large.x_test[:1000], standard["x_test"].astype(np.float32))
    np.testing.assert_array_equal(large.y_test[:1000], standard["y_test"])
    for test_size in (None, 1000):
        plain = data.load_mnist1d(cache=cache, test_size=test_size)
        np.testing.assert_array_equal(plain.x_test, large.x_test[:1000])
        np.testing.assert_array_equal(plain.y_test, large.y_test[:1000])


def nearest_distances(a, b, *, exclude_self=False):
    """Euclidean distance from each row of a to its nearest row of b."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    squared = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
    if exclude_self:
        np.fill_diagonal(squared, np.inf)
    return np.sqrt(np.maximum(squared.min(axis=1), 0.0))


def test_extra_signals_are_new(large):
    # Not even near-copies: the generator standardises every call anew, so a signal drawn
    # twice (e.g. by reusing seed 42) reappears rescaled, at distance ~0.03 instead of
    # equal. Independent signals are never closer than ~2.2 (standard test to train).
    extra = large.x_test[1000:]
    standard = np.concatenate([large.x_train, large.x_test[:1000]])
    assert nearest_distances(extra, standard).min() > 1.0
    assert nearest_distances(extra, extra, exclude_self=True).min() > 1.0


def mean_squared_z(x_train, y_train, x, y):
    """Mean over classes and positions of the squared two-sample z of the class means."""
    squares = []
    for label in range(10):
        a, b = x_train[y_train == label], x[y == label]
        stderr = np.sqrt(a.var(axis=0, ddof=1) / len(a) + b.var(axis=0, ddof=1) / len(b))
        squares.append(((a.mean(axis=0) - b.mean(axis=0)) / stderr) ** 2)
    return float(np.mean(squares))


def test_extra_signals_follow_the_training_distribution(large):
    # Under the same distribution each squared z is about chi-squared(1), mean 1: the
    # standard test signals give 0.98 and the extra ones 1.09; labels shifted by one
    # class give 31, unstandardised signals (x 0.155) 20, an offset of 0.1 gives 2.7.
    # A 10 % scale error barely moves it (1.17) but fails the standard deviation check.
    extra_x, extra_y = large.x_test[1000:], large.y_test[1000:]
    assert abs(extra_x.mean()) < 0.05 and abs(extra_x.std() - 1) < 0.05
    train = (large.x_train, large.y_train)
    assert mean_squared_z(*train, large.x_test[:1000], large.y_test[:1000]) < 1.5
    assert mean_squared_z(*train, extra_x, extra_y) < 1.5


def test_cache_is_keyed_by_test_size(cache, large, monkeypatch):
    assert (cache / f"{stem()}-test{TEST_SIZE}.npz").is_file()
    monkeypatch.setattr(mnist1d_module, "_generate", refuse)
    monkeypatch.setattr(mnist1d_module, "_generate_extra_test", refuse)
    again = data.load("mnist1d", data_dir=cache, test_size=TEST_SIZE)
    np.testing.assert_array_equal(again.x_test, large.x_test)
    with pytest.raises(AssertionError, match="must not be called"):
        data.load("mnist1d", data_dir=cache, test_size=TEST_SIZE + 10)


def test_generation_is_deterministic_and_leaves_global_rng_alone(cache, large, tmp_path):
    # A fresh cache regenerates only the extra signals (the standard file is copied over).
    (tmp_path / f"{stem()}.npz").write_bytes((cache / f"{stem()}.npz").read_bytes())
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    fresh = data.load_mnist1d(cache=tmp_path, test_size=TEST_SIZE)
    np_after = np.random.get_state()  # noqa: NPY002
    assert np.array_equal(np_state[1], np_after[1]) and random.getstate() == py_state
    np.testing.assert_array_equal(fresh.x_test, large.x_test)
    np.testing.assert_array_equal(fresh.y_test, large.y_test)


def test_a_different_size_draws_its_own_extra_signals(cache, large):
    other = data.load("mnist1d", data_dir=cache, test_size=1005)
    assert other.x_test.shape == (1005, 40)
    np.testing.assert_array_equal(other.x_test[:1000], large.x_test[:1000])
    assert nearest_distances(other.x_test[1000:], large.x_train).min() > 1.0


@pytest.mark.parametrize("test_size", [999, 0, -3])
def test_bad_test_size(test_size, tmp_path):
    with pytest.raises(
        ValueError, match=f"test_size must be None or an integer >= 1000, got {test_size}"
    ):
        data.load("mnist1d", data_dir=tmp_path, test_size=test_size)

"""download=True: TFDS's real builders prepare fake downloads in the original archive formats.

The tests that run a real builder need the [tfds-prepare] extra (TensorFlow); the others
check the download logic around it (once, process 0 only, clear errors) without it.
"""

import collections
import importlib.util

import jax
import numpy as np
import pytest
import requests
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils
from tensorflow_datasets.core.download import downloader
from tensorflow_datasets.image_classification import mnist as tfds_mnist
from tfds_fakes import (
    TinyCifar10,
    cifar10_download,
    cifar100_download,
    fashion_mnist_download,
    serve_downloads,
    svhn_download,
    tiny_images,
)

from xsam_jax import cli, data, experiment
from xsam_jax.data import tfds as tfds_module

needs_prepare_extra = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("tensorflow", "importlib_resources")),
    reason="TFDS's builders need the [tfds-prepare] extra (tensorflow, importlib_resources)",
)


def pairs(x, y):
    """The (image bytes, label) multiset: TFDS stores the examples in a shuffled order."""
    return collections.Counter(
        (image.tobytes(), int(label)) for image, label in zip(x, y, strict=True)
    )


@needs_prepare_extra
def test_a_fake_cifar10_download_is_prepared_and_trained_on(tmp_path, monkeypatch):
    (tmp_path / "downloads").mkdir()
    written = cifar10_download(tmp_path / "downloads", num_train=20, num_test=10)
    serve_downloads(monkeypatch, tmp_path / "downloads")
    config = experiment.TrainConfig(
        optimizer="sam",
        dataset="cifar10",
        model="mlp",
        epochs=1,
        batch_size=20,
        data_dir=str(tmp_path / "tfds"),
        download=True,
    )
    result = experiment.run(config, out=tmp_path / "run", progress=False)

    assert (tmp_path / "tfds" / "cifar10" / "3.0.2" / "dataset_info.json").exists()
    ds = data.load("cifar10", data_dir=tmp_path / "tfds")
    assert pairs(ds.x_train, ds.y_train) == pairs(*written["train"])
    assert pairs(ds.x_test, ds.y_test) == pairs(*written["test"])

    [epoch] = result["history"]
    assert np.isfinite(epoch["train_loss"]) and np.isfinite(epoch["test_loss"])
    _, trained = experiment.load_run(tmp_path / "run")
    # Same seed: the parameters before the step.
    initial = experiment.train._Run(config).state.params
    changed = jax.tree.map(
        lambda a, b: not np.array_equal(a, b), jax.device_get(initial), trained.state.params
    )
    assert all(jax.tree.leaves(changed))


@needs_prepare_extra
@pytest.mark.parametrize(
    ("name", "write", "shape"),
    [
        ("cifar100", cifar100_download, (32, 32, 3)),
        ("svhn", svhn_download, (32, 32, 3)),
        ("fashion_mnist", fashion_mnist_download, (28, 28, 1)),
    ],
)
def test_the_other_builders_prepare_their_original_formats(
    tmp_path, monkeypatch, name, write, shape
):
    (tmp_path / "downloads").mkdir()
    written = write(tmp_path / "downloads")
    serve_downloads(monkeypatch, tmp_path / "downloads")
    # The Fashion-MNIST builder reads a fixed number of images from the IDX files.
    monkeypatch.setattr(tfds_mnist, "_TRAIN_EXAMPLES", len(written["train"][1]))
    monkeypatch.setattr(tfds_mnist, "_TEST_EXAMPLES", len(written["test"][1]))

    ds = data.load(name, data_dir=tmp_path / "tfds", download=True)
    assert ds.input_shape == shape
    assert pairs(ds.x_train, ds.y_train) == pairs(*written["train"])
    assert pairs(ds.x_test, ds.y_test) == pairs(*written["test"])


@needs_prepare_extra
def test_a_network_failure_ends_in_one_line_and_prepares_nothing(tmp_path, monkeypatch, capsys):
    def offline(self, url, destination_path, verify=True):
        raise requests.exceptions.ConnectionError(
            f"HTTPSConnectionPool: Max retries exceeded with url: {url}\n(Caused by a DNS failure)"
        )

    monkeypatch.setattr(downloader._Downloader, "_sync_download", offline)
    argv = ["--dataset", "cifar10", "--download", "--data-dir", str(tmp_path), "--no-progress"]
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("xsam-train: error: could not download and prepare 'cifar10'")
    assert "ConnectionError: HTTPSConnectionPool: Max retries exceeded" in message
    assert "DNS" not in message  # only the first line of the cause
    # TFDS removed its temporary folder: nothing counts as prepared.
    assert list((tmp_path / "cifar10").iterdir()) == []


def test_download_without_the_extra_names_it(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorflow" else find_spec(name, *a),
    )
    with pytest.raises(
        data.DatasetNotPreparedError,
        match=r"needs tensorflow\b.*: pip install 'xsam-jax\[tfds-prepare\]'$",
    ):
        data.load("cifar10", data_dir=tmp_path, download=True)


def refuse_to_prepare(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{self.name}: download_and_prepare called")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", refuse)


def test_download_skips_a_prepared_dataset(tmp_path, monkeypatch):
    TinyCifar10(data_dir=tmp_path, file_format="array_record").download_and_prepare()
    refuse_to_prepare(monkeypatch)
    ds = data.load("cifar10", data_dir=tmp_path, download=True)
    assert sorted(ds.y_train.tolist()) == list(range(7))


def pretend_processes(monkeypatch, index, events, on_sync=lambda: None):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: index)

    def sync(name):
        events.append("sync")
        on_sync()

    monkeypatch.setattr(multihost_utils, "sync_global_devices", sync)


def test_only_process_0_prepares_and_the_others_wait(tmp_path, monkeypatch):
    # Process 1: process 0 writes the dataset while process 1 waits at the barrier.
    events = []
    prepare_tiny = TinyCifar10.download_and_prepare
    pretend_processes(
        monkeypatch,
        1,
        events,
        on_sync=lambda: prepare_tiny(TinyCifar10(data_dir=tmp_path, file_format="array_record")),
    )
    refuse_to_prepare(monkeypatch)
    ds = data.load("cifar10", data_dir=tmp_path, download=True)
    assert events == ["sync"]
    np.testing.assert_array_equal(ds.x_test, tiny_images(3)[ds.y_test])


def test_process_0_prepares_before_the_barrier(tmp_path, monkeypatch):
    events = []
    prepare_tiny = TinyCifar10.download_and_prepare
    pretend_processes(monkeypatch, 0, events)
    monkeypatch.setattr(tfds_module, "_missing_prepare_modules", lambda: [])

    def prepare(self, *, file_format):
        assert file_format == "array_record"
        events.append("prepare")
        prepare_tiny(TinyCifar10(data_dir=self.data_dir_root, file_format=file_format))

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", prepare)
    ds = data.load("cifar10", data_dir=tmp_path, download=True)
    assert events == ["prepare", "sync"]
    assert len(ds.y_train) == 7


def test_a_failure_on_process_0_still_releases_the_others(tmp_path, monkeypatch):
    events = []
    pretend_processes(monkeypatch, 0, events)
    monkeypatch.setattr(tfds_module, "_missing_prepare_modules", lambda: [])

    def fail(self, **kwargs):
        events.append("prepare")
        raise OSError("disk quota exceeded")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail)
    with pytest.raises(data.DatasetNotPreparedError, match="OSError: disk quota exceeded"):
        data.load("cifar10", data_dir=tmp_path, download=True)
    assert events == ["prepare", "sync"]

"""Tiny stand-ins for TFDS data, written offline by the tests.

`TinyCifar10` writes a prepared 'cifar10' ArrayRecord directory directly; the `*_download`
functions write the files that the real TFDS builders download, in their original formats,
and `serve_downloads` makes TFDS's download manager take them from a local folder.
"""

import gzip
import io
import os
import posixpath
import tarfile
import urllib.parse

import numpy as np
import PIL.Image
import scipy.io
import tensorflow_datasets as tfds
from etils import epath

# The pairs each fake download holds, per split: uint8 NHWC images and their integer labels.
Splits = dict[str, tuple[np.ndarray, np.ndarray]]


def png_bytes(image):
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def tiny_images(n):
    return np.random.default_rng(n).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


class TinyCifar10(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A few random images written offline as a real 'cifar10' ArrayRecord directory.

    The images are PNG-encoded with PIL and handed to TFDS as bytes, because TFDS's own
    encoder needs TensorFlow; reading goes through the registered cifar10 builder, as
    with the real dataset.
    """

    name = "cifar10"
    VERSION = tfds.core.Version("3.0.2")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "id": tfds.features.Text(),
                    "image": tfds.features.Image(shape=(32, 32, 3)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(7), "test": self._generate_examples(3)}

    def _generate_examples(self, n):
        for i, image in enumerate(tiny_images(n)):
            yield str(i), {"id": str(i), "image": png_bytes(image), "label": i}


def _random_split(rng, n, shape, num_classes) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, num_classes, n)


def _add_to_tar(tar, name, payload: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def _cifar_records(images, *label_columns) -> bytes:
    # The binary version: per image its label byte(s), then 1024 red, green, blue bytes.
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    labels = np.stack(label_columns, axis=1).astype(np.uint8)
    return np.concatenate([labels, planes], axis=1).tobytes()


def cifar10_download(folder, num_train=20, num_test=10) -> Splits:
    """cifar-10-binary.tar.gz: five training batches and one test batch."""
    rng = np.random.default_rng(10)
    splits = {
        s: _random_split(rng, n, (32, 32, 3), 10)
        for s, n in [("train", num_train), ("test", num_test)]
    }
    with tarfile.open(os.path.join(folder, "cifar-10-binary.tar.gz"), "w:gz") as tar:
        _add_to_tar(
            tar,
            "cifar-10-batches-bin/batches.meta.txt",
            "\n".join(f"class{i}" for i in range(10)).encode(),
        )
        for i, part in enumerate(np.array_split(np.arange(num_train), 5)):
            x, y = splits["train"]
            _add_to_tar(
                tar,
                f"cifar-10-batches-bin/data_batch_{i + 1}.bin",
                _cifar_records(x[part], y[part]),
            )
        _add_to_tar(tar, "cifar-10-batches-bin/test_batch.bin", _cifar_records(*splits["test"]))
    return splits


def cifar100_download(folder, num_train=12, num_test=6) -> Splits:
    """cifar-100-binary.tar.gz: a coarse (20) and a fine (100) label byte per image."""
    rng = np.random.default_rng(100)
    splits = {
        s: _random_split(rng, n, (32, 32, 3), 100)
        for s, n in [("train", num_train), ("test", num_test)]
    }
    with tarfile.open(os.path.join(folder, "cifar-100-binary.tar.gz"), "w:gz") as tar:
        for file, count in [("coarse_label_names.txt", 20), ("fine_label_names.txt", 100)]:
            _add_to_tar(
                tar, f"cifar-100-binary/{file}", "\n".join(f"c{i}" for i in range(count)).encode()
            )
        for split, file in [("train", "train.bin"), ("test", "test.bin")]:
            x, fine = splits[split]
            _add_to_tar(tar, f"cifar-100-binary/{file}", _cifar_records(x, fine // 5, fine))
    return splits


def svhn_download(folder, num_train=12, num_test=6, num_extra=2) -> Splits:
    """train/test/extra_32x32.mat: X is (32, 32, 3, N), y is (N, 1) with 10 for the digit 0."""
    rng = np.random.default_rng(7)
    splits = {}
    for split, n in [("train", num_train), ("test", num_test), ("extra", num_extra)]:
        x, digits = _random_split(rng, n, (32, 32, 3), 10)
        y = np.where(digits == 0, 10, digits).reshape(-1, 1).astype(np.uint8)
        scipy.io.savemat(
            os.path.join(folder, f"{split}_32x32.mat"), {"X": np.moveaxis(x, 0, -1), "y": y}
        )
        splits[split] = x, digits
    return splits


def fashion_mnist_download(folder, num_train=12, num_test=6) -> Splits:
    """The four gzipped IDX files: a big-endian header, then raw uint8 images or labels."""
    rng = np.random.default_rng(28)
    splits = {
        s: _random_split(rng, n, (28, 28, 1), 10)
        for s, n in [("train", num_train), ("test", num_test)]
    }
    for split, prefix in [("train", "train"), ("test", "t10k")]:
        x, y = splits[split]
        image_header = np.array([2051, len(x), 28, 28], ">i4").tobytes()
        label_header = np.array([2049, len(y)], ">i4").tobytes()
        with gzip.open(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), "wb") as f:
            f.write(image_header + x.tobytes())
        with gzip.open(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), "wb") as f:
            f.write(label_header + y.astype(np.uint8).tobytes())
    return splits


def serve_downloads(monkeypatch, folder):
    """TFDS's download manager returns `folder/<file name of the URL>` instead of fetching.

    Extraction, the builders' parsing and the writer stay TFDS's own.
    """

    def local(url):
        return epath.Path(folder) / posixpath.basename(urllib.parse.urlparse(str(url)).path)

    def download(self, url_or_urls):
        if isinstance(url_or_urls, dict):
            return {key: local(url) for key, url in url_or_urls.items()}
        return local(url_or_urls)

    def download_and_extract(self, url_or_urls):
        return self.extract(download(self, url_or_urls))

    monkeypatch.setattr(tfds.download.DownloadManager, "download", download)
    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", download_and_extract)

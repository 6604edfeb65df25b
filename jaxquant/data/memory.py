"""Small image sets held in memory as NumPy arrays (digits, MNIST, Fashion-MNIST, CIFAR-10/100)
and gathered per step; their augmentation runs on device (`jaxquant.data.preprocess`)."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import zlib
from typing import Iterator

import numpy as np

from jaxquant.data.sources import NORMALIZATION, NUM_CLASSES, _open_source, default_data_dir


@dataclasses.dataclass
class ArrayDataset:
    """A dataset held in memory: uint8 (or float in [0, 1]) NHWC images and int32 labels."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train_images.shape[1:])

    @property
    def train_size(self) -> int:
        return len(self.train_labels)

    @property
    def test_size(self) -> int:
        return len(self.test_labels)

    def train_examples(
        self, indices: np.ndarray, seed: int = 0, step: int = 0, offset: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """The training examples at ``indices``, unaugmented (augmentation runs on device, in
        the step); ``seed``, ``step`` and ``offset`` are for the streaming datasets' host-side
        one."""
        return self.train_images[indices], self.train_labels[indices]

    def test_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The test set in order, ``batch_size`` at a time (the last batch may be shorter)."""
        return array_batches(self.test_images, self.test_labels, batch_size)


def array_batches(
    images: np.ndarray, labels: np.ndarray, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(images, labels)`` in order, ``batch_size`` at a time (the last batch may be shorter)."""
    for start in range(0, len(labels), batch_size):
        yield images[start : start + batch_size], labels[start : start + batch_size]


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> ArrayDataset:
    """scikit-learn's bundled 8x8 ``digits`` (1,797 images), a fixed stratified split."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    digits = sk_digits()
    images = (digits.images[..., None] / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    mean, std = NORMALIZATION["digits"]
    return ArrayDataset("digits", x_train, y_train, x_test, y_test, 10, mean, std)


def _read_split(source) -> tuple[np.ndarray, np.ndarray]:
    try:
        items = source.__getitems__(list(range(len(source))))  # one batched read
    except TypeError:  # sources without a batched read (tfds's mock_data)
        items = [source[i] for i in range(len(source))]
    images = np.stack([item["image"] for item in items]).astype(np.uint8)
    labels = np.asarray([item["label"] for item in items], np.int32)
    return images, labels


def load_tfds_in_memory(
    name: str, data_dir: str | None = None, cache_dir: str | None = None
) -> ArrayDataset:
    """Read a prepared tfds dataset's train and test splits into memory (no TensorFlow needed:
    array_record through ``tfds.data_source``). The arrays are cached as ``.npz`` in
    ``cache_dir`` (default ``~/.cache/jaxquant``) so later runs load in a second."""
    data_dir = default_data_dir(data_dir)
    source = {split: _open_source(name, data_dir, split) for split in ("train", "test")}
    cache_dir = pathlib.Path(cache_dir or pathlib.Path.home() / ".cache" / "jaxquant")
    # One cache file per (dataset, data_dir, split sizes): a rebuilt dataset gets a new file.
    identity = f"{pathlib.Path(data_dir).resolve()}|{len(source['train'])}|{len(source['test'])}"
    cache = cache_dir / f"{name}-{zlib.crc32(identity.encode()):08x}.npz"
    if cache.exists():
        arrays = dict(np.load(cache))
    else:
        arrays = {}
        for split in ("train", "test"):
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = _read_split(source[split])
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(
            f".{os.getpid()}.tmp.npz"
        )  # parallel writers (pytest -n) never share a file
        np.savez(tmp, **arrays)
        tmp.replace(cache)
    mean, std = NORMALIZATION[name]
    return ArrayDataset(
        name,
        arrays["train_images"],
        arrays["train_labels"],
        arrays["test_images"],
        arrays["test_labels"],
        NUM_CLASSES[name],
        mean,
        std,
    )

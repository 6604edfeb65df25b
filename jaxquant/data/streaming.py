"""Streaming: read by index from array_record, decoded and augmented on the host.

ImageNet (`StreamingDataset`): examples are read by index from the prepared array_record files,
decoded and augmented in a thread pool (RandomResizedCrop + flip for training, resize + centre
crop for evaluation), so a batch is a function of (seed, step) as for the in-memory sets and a
resumed run sees the same batches."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
from typing import Any, Iterator

import numpy as np

from jaxquant.data.sources import (
    NORMALIZATION,
    NUM_CLASSES,
    STREAM_SPLITS,
    STREAMING,
    _open_source,
    default_data_dir,
)
from jaxquant.errors import ConfigError


def random_resized_crop_box(
    rng: np.random.Generator, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of torchvision's ``RandomResizedCrop``: up to ten draws of an area
    fraction uniform in ``scale`` and an aspect ratio log-uniform in ``ratio``, the first that fits
    the image; otherwise the central crop at the aspect ratio clamped to ``ratio``."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, -1) if image.shape[-1] == 1 else image


def train_transform(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """RandomResizedCrop(``size``, scale 0.08-1, ratio 3/4-4/3, bilinear) + horizontal flip with
    probability 1/2: ImageNet training augmentation, on uint8 HWC."""
    from PIL import Image

    image = _rgb(image)
    top, left, h, w = random_resized_crop_box(rng, image.shape[0], image.shape[1])
    out = np.asarray(
        Image.fromarray(image).resize(
            (size, size), Image.BILINEAR, box=(left, top, left + w, top + h)
        )
    )
    return out[:, ::-1] if rng.random() < 0.5 else out


def eval_transform(image: np.ndarray, size: int) -> np.ndarray:
    """Resize the short side to ``size * 256 / 224`` (bilinear) and centre-crop ``size``: the
    standard ImageNet evaluation (256 -> 224), on uint8 HWC."""
    from PIL import Image

    image = _rgb(image)
    height, width = image.shape[:2]
    short = int(round(size * 256 / 224))
    scale = short / min(height, width)
    new_h, new_w = (short, int(width * scale)) if height <= width else (int(height * scale), short)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    top, left = int(round((new_h - size) / 2)), int(round((new_w - size) / 2))
    return resized[top : top + size, left : left + size]


@dataclasses.dataclass
class StreamingDataset:
    """A tfds image dataset too large for memory, read by index from its array_record files
    (``tfds.data_source``, no TensorFlow needed) and transformed on the host by ``workers``
    threads (PIL releases the GIL while it resizes). The augmentation of the example at position
    ``p`` of step ``t``'s global batch draws from ``(seed, t, p)``, so batches are a pure function
    of (seed, step), as `batch_indices` makes the order: a resumed run sees what it would have."""

    name: str
    train_source: Any
    test_source: Any
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int = 224
    workers: int = 8
    _pool: Any = dataclasses.field(default=None, init=False, repr=False)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return (self.image_size, self.image_size, 3)

    @property
    def train_size(self) -> int:
        return len(self.train_source)

    @property
    def test_size(self) -> int:
        return len(self.test_source)

    def _map(self, fn, *iterables) -> list:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self.workers, thread_name_prefix=f"{self.name}-decode"
            )
        return list(self._pool.map(fn, *iterables))

    def train_examples(
        self, indices: np.ndarray, seed: int = 0, step: int = 0, offset: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Training examples at ``indices``, augmented; ``offset`` is the position of the first
        one in the global batch (a host's share of a multi-host batch)."""

        def one(position, index):
            item = self.train_source[int(index)]
            rng = np.random.default_rng([seed, step, offset + position])
            return train_transform(item["image"], rng, self.image_size), int(item["label"])

        examples = self._map(one, range(len(indices)), indices)
        return np.stack([e[0] for e in examples]), np.asarray([e[1] for e in examples], np.int32)

    def _test_batch(self, start: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        def one(index):
            item = self.test_source[index]
            return eval_transform(item["image"], self.image_size), int(item["label"])

        examples = self._map(one, range(start, min(start + batch_size, self.test_size)))
        return np.stack([e[0] for e in examples]), np.asarray([e[1] for e in examples], np.int32)

    def test_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The evaluation split in order, resized and centre-cropped; the next batch is decoded
        while the caller works on this one."""
        starts = list(range(0, self.test_size, batch_size))
        with concurrent.futures.ThreadPoolExecutor(1) as ahead:
            pending = ahead.submit(self._test_batch, starts[0], batch_size) if starts else None
            for i in range(len(starts)):
                batch = pending.result()
                if i + 1 < len(starts):
                    pending = ahead.submit(self._test_batch, starts[i + 1], batch_size)
                yield batch


def load_streaming(
    name: str, data_dir: str | None = None, image_size: int = 224, workers: int = 8
) -> StreamingDataset:
    """A `StreamingDataset` over a prepared tfds dataset's training and evaluation splits."""
    if name not in STREAM_SPLITS:
        raise ConfigError(f"{name!r} does not stream; streaming datasets: {STREAMING}")
    if int(image_size) < 8:
        raise ConfigError(f"image_size must be at least 8, got {image_size}")
    if int(workers) < 1:
        raise ConfigError(f"data_workers must be at least 1, got {workers}")
    data_dir = default_data_dir(data_dir)
    train_split, test_split = STREAM_SPLITS[name]
    mean, std = NORMALIZATION[name]
    return StreamingDataset(
        name,
        _open_source(name, data_dir, train_split),
        _open_source(name, data_dir, test_split),
        NUM_CLASSES[name],
        mean,
        std,
        int(image_size),
        int(workers),
    )

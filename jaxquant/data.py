"""Datasets: tensorflow-datasets sources, in-memory small sets, on-device augmentation.

Small image sets (digits, MNIST, Fashion-MNIST, CIFAR-10/100) are held in memory as NumPy
arrays and gathered per step; random crop + flip and normalisation run on device inside the
jitted step (`make_preprocess`). scikit-learn's bundled ``digits`` is the embedded default that
needs no download. ImageNet streams (`StreamingDataset`): examples are read by index from the
prepared array_record files, decoded and augmented on the host in a thread pool
(RandomResizedCrop + flip for training, resize + centre crop for evaluation), so a batch is a
function of (seed, step) as for the in-memory sets and a resumed run sees the same batches. Both
kinds answer `train_examples(indices, seed, step)` and `test_batches(batch_size)`, which is all the
fit loop, evaluation and PTQ use. `imagenet_batches` is the same pipeline in ``tf.data`` (the ``tf``
extra) for users who feed their own loop.

The project's machines are offline: a tfds dataset must be prepared beforehand in ``data_dir``
(``TFDS_DATA_DIR``); otherwise `DatasetNotFoundError` says how.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import pathlib
import zlib
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.errors import ConfigError, DatasetNotFoundError

IN_MEMORY = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100")
STREAMING = ("imagenet2012",)
STREAM_SPLITS = {"imagenet2012": ("train", "validation")}  # (training, evaluation) split

# Per-channel mean and std of the training images, in [0, 1] units.
NORMALIZATION = {
    "digits": ((0.3032,), (0.3826,)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
NUM_CLASSES = {"digits": 10, "mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100,
               "imagenet2012": 1000}
BUILD_HINT = {name: f"python ../shared/data/prepare_tfds.py DATA_DIR {name}" for name in ("mnist", "fashion_mnist", "cifar10")}
BUILD_HINT["imagenet2012"] = ("tfds build imagenet2012 --data_dir DATA_DIR --manual_dir <folder with ILSVRC2012_img_*.tar> "
                              "--file_format array_record")


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

    def train_examples(self, indices: np.ndarray, seed: int = 0, step: int = 0, offset: int = 0
                       ) -> tuple[np.ndarray, np.ndarray]:
        """The training examples at ``indices``, unaugmented (augmentation runs on device, in
        the step); ``seed``, ``step`` and ``offset`` are for the streaming datasets' host-side one."""
        return self.train_images[indices], self.train_labels[indices]

    def test_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The test set in order, ``batch_size`` at a time (the last batch may be shorter)."""
        return array_batches(self.test_images, self.test_labels, batch_size)


def array_batches(images: np.ndarray, labels: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(images, labels)`` in order, ``batch_size`` at a time (the last batch may be shorter)."""
    for start in range(0, len(labels), batch_size):
        yield images[start:start + batch_size], labels[start:start + batch_size]


def default_data_dir(data_dir: str | None = None) -> str:
    """``data_dir`` if given, else ``$TFDS_DATA_DIR``, else tfds's default (~/tensorflow_datasets)."""
    return data_dir or os.environ.get("TFDS_DATA_DIR") or str(pathlib.Path.home() / "tensorflow_datasets")


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> ArrayDataset:
    """scikit-learn's bundled 8x8 ``digits`` (1,797 images), a fixed stratified split."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split
    digits = sk_digits()
    images = (digits.images[..., None] / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(images, labels, test_size=test_fraction,
                                                        random_state=seed, stratify=labels)
    mean, std = NORMALIZATION["digits"]
    return ArrayDataset("digits", x_train, y_train, x_test, y_test, 10, mean, std)


def _not_prepared(name: str, data_dir: str) -> DatasetNotFoundError:
    hint = BUILD_HINT.get(name, f"prepare it with tfds on a machine with internet and copy it to {data_dir}")
    return DatasetNotFoundError(
        f"dataset {name!r} is not prepared in {data_dir} and this machine cannot download it; "
        f"build it ({hint.replace('DATA_DIR', data_dir)}) or set --config.data_dir / TFDS_DATA_DIR "
        "to a folder that has it")


def _open_source(name: str, data_dir: str, split: str):
    """``tfds.data_source`` of one split without any download attempt; a clear error when missing."""
    import tensorflow_datasets as tfds
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises several types here
        if not tfds.builder(name, data_dir=data_dir).is_prepared():
            raise _not_prepared(name, data_dir) from e
        hint = BUILD_HINT.get(name, "prepare_tfds.py builds it so").replace("DATA_DIR", data_dir)
        raise DatasetNotFoundError(
            f"dataset {name!r} in {data_dir} cannot be read by index ({str(e).splitlines()[0]}); "
            f"rebuild it in the array_record format ({hint})") from e


def _read_split(source) -> tuple[np.ndarray, np.ndarray]:
    try:
        items = source.__getitems__(list(range(len(source))))  # one batched read
    except TypeError:  # sources without a batched read (tfds's mock_data)
        items = [source[i] for i in range(len(source))]
    images = np.stack([item["image"] for item in items]).astype(np.uint8)
    labels = np.asarray([item["label"] for item in items], np.int32)
    return images, labels


def load_tfds_in_memory(name: str, data_dir: str | None = None, cache_dir: str | None = None) -> ArrayDataset:
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
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")  # parallel writers (pytest -n) never share a file
        np.savez(tmp, **arrays)
        tmp.replace(cache)
    mean, std = NORMALIZATION[name]
    return ArrayDataset(name, arrays["train_images"], arrays["train_labels"], arrays["test_images"],
                        arrays["test_labels"], NUM_CLASSES[name], mean, std)


def load_dataset(name: str, data_dir: str | None = None, cache_dir: str | None = None, image_size: int = 224,
                 workers: int = 8) -> "ArrayDataset | StreamingDataset":
    """A dataset by tfds name: in memory (``digits`` is scikit-learn's, always available), or
    streamed from disk for ``imagenet2012`` (at ``image_size`` squares, ``workers`` host threads)."""
    if name == "digits":
        return load_digits()
    if name in STREAMING:
        return load_streaming(name, data_dir, image_size, workers)
    if name not in IN_MEMORY:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {IN_MEMORY + STREAMING}")
    return load_tfds_in_memory(name, data_dir, cache_dir)


def load_config_dataset(config) -> "ArrayDataset | StreamingDataset":
    """The dataset a run ``config`` names, with its ``data_dir``, ``image_size`` and ``data_workers``."""
    return load_dataset(config.dataset, config.data_dir or None, image_size=config.image_size,
                        workers=config.data_workers)


# ----------------------------------------------------------------------------------------------
# Order of examples: a pure function of (seed, step), so a resumed run sees the same batches.

def batch_indices(seed: int, step: int, num_examples: int, batch_size: int) -> np.ndarray:
    """Indices of the examples in training step ``step``: each epoch is a fresh permutation
    drawn from ``(seed, epoch)``; the incomplete last batch of an epoch is dropped."""
    steps_per_epoch = num_examples // batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size {batch_size} is larger than the {num_examples} training examples; "
                          "lower --config.batch_size")
    epoch, index = divmod(step, steps_per_epoch)
    permutation = np.random.default_rng([seed, epoch]).permutation(num_examples)
    return permutation[index * batch_size:(index + 1) * batch_size]


# ----------------------------------------------------------------------------------------------
# On-device preprocessing.

def random_crop(images: jax.Array, key: jax.Array, padding: int) -> jax.Array:
    """Zero-pad by ``padding`` and crop back at a random offset per example (torchvision's
    ``RandomCrop(size, padding)``)."""
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)
    return jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c)))(padded, offsets)


def random_flip(images: jax.Array, key: jax.Array) -> jax.Array:
    """Horizontal flip of each example with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1], images)


AUGMENTATIONS = ("none", "crop", "crop_flip")


def make_preprocess(mean, std, augment: str = "none", crop_padding: int = 4) -> Callable:
    """``preprocess(images, train, key)``: to float in [0, 1] (from uint8), augment when
    training (``crop``: random crop; ``crop_flip``: crop and horizontal flip), normalise."""
    if augment not in AUGMENTATIONS:
        raise ConfigError(f"unknown augment {augment!r}; choose one of {AUGMENTATIONS}")
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)

    def preprocess(images, train: bool, key):
        x = images.astype(jnp.float32)
        if images.dtype == jnp.uint8:
            x = x / 255.0
        if train and augment != "none":
            crop_key, flip_key = jax.random.split(key)
            x = random_crop(x, crop_key, crop_padding)
            if augment == "crop_flip":
                x = random_flip(x, flip_key)
        return (x - mean) / std

    return preprocess


# ----------------------------------------------------------------------------------------------
# Streaming: read by index from array_record, decoded and augmented on the host.

def random_resized_crop_box(rng: np.random.Generator, height: int, width: int, scale=(0.08, 1.0),
                            ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
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
    out = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h)))
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
    return resized[top:top + size, left:left + size]


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
            self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix=f"{self.name}-decode")
        return list(self._pool.map(fn, *iterables))

    def train_examples(self, indices: np.ndarray, seed: int = 0, step: int = 0, offset: int = 0
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


def load_streaming(name: str, data_dir: str | None = None, image_size: int = 224, workers: int = 8
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
    return StreamingDataset(name, _open_source(name, data_dir, train_split), _open_source(name, data_dir, test_split),
                            NUM_CLASSES[name], mean, std, int(image_size), int(workers))


# ----------------------------------------------------------------------------------------------
# ImageNet in tf.data (the `tf` extra), for users who feed their own loop.

def imagenet_batches(split: str, batch_size: int, data_dir: str | None = None, image_size: int = 224,
                     train: bool = True, seed: int = 0, name: str = "imagenet2012"
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches of ``(uint8 images, int32 labels)`` streamed from a tfds image dataset (default
    ``imagenet2012``): RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3) + flip when training;
    resize the short side to ``image_size*256/224`` and centre-crop for evaluation. Training
    batches repeat forever; evaluation stops after one pass (last batch kept)."""
    import tensorflow_datasets as tfds
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ConfigError(f"streaming {name} needs TensorFlow: pip install 'jaxquant[tf]'") from e
    data_dir = default_data_dir(data_dir)
    try:
        ds = tfds.load(name, split=split, data_dir=data_dir, download=False, shuffle_files=train,
                       read_config=tfds.ReadConfig(shuffle_seed=seed))
    except Exception as e:  # tfds raises several types for a missing dataset
        raise _not_prepared(name, data_dir) from e

    def decode(example):
        image = example["image"]
        if train:
            begin, size, _ = tf.image.sample_distorted_bounding_box(
                tf.shape(image), tf.zeros([0, 0, 4], tf.float32), min_object_covered=0.0,
                area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3), use_image_if_no_bounding_boxes=True,
                seed=seed)
            image = tf.image.resize(tf.slice(image, begin, size), (image_size, image_size))
            image = tf.image.random_flip_left_right(image, seed=seed)
        else:
            shape = tf.cast(tf.shape(image)[:2], tf.float32)
            scale = (image_size * 256 / 224) / tf.reduce_min(shape)
            image = tf.image.resize(image, tf.cast(tf.round(shape * scale), tf.int32))
            image = tf.image.resize_with_crop_or_pad(image, image_size, image_size)
        return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8), example["label"]

    if train:
        ds = ds.repeat().shuffle(10_000, seed=seed)
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size, drop_remainder=train)
    for images, labels in ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
        yield images, labels.astype(np.int32)

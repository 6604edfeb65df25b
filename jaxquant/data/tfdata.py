"""ImageNet in tf.data (the `tf` extra), for users who feed their own loop."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from jaxquant.data.sources import _not_prepared, default_data_dir
from jaxquant.errors import ConfigError


def imagenet_batches(
    split: str,
    batch_size: int,
    data_dir: str | None = None,
    image_size: int = 224,
    train: bool = True,
    seed: int = 0,
    name: str = "imagenet2012",
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
        ds = tfds.load(
            name,
            split=split,
            data_dir=data_dir,
            download=False,
            shuffle_files=train,
            read_config=tfds.ReadConfig(shuffle_seed=seed),
        )
    except Exception as e:  # tfds raises several types for a missing dataset
        raise _not_prepared(name, data_dir) from e

    def decode(example):
        image = example["image"]
        if train:
            begin, size, _ = tf.image.sample_distorted_bounding_box(
                tf.shape(image),
                tf.zeros([0, 0, 4], tf.float32),
                min_object_covered=0.0,
                area_range=(0.08, 1.0),
                aspect_ratio_range=(3 / 4, 4 / 3),
                use_image_if_no_bounding_boxes=True,
                seed=seed,
            )
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

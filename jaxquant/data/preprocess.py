"""On-device preprocessing: to float, random crop + flip when training, normalisation; runs
inside the jitted step."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxquant.errors import ConfigError


def random_crop(images: jax.Array, key: jax.Array, padding: int) -> jax.Array:
    """Zero-pad by ``padding`` and crop back at a random offset per example (torchvision's
    ``RandomCrop(size, padding)``)."""
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)
    return jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c)))(
        padded, offsets
    )


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

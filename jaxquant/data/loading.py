"""A dataset by name: in memory, or streamed from disk."""

from __future__ import annotations

from jaxquant.data.memory import ArrayDataset, load_digits, load_tfds_in_memory
from jaxquant.data.sources import IN_MEMORY, STREAMING
from jaxquant.data.streaming import StreamingDataset, load_streaming
from jaxquant.errors import ConfigError


def load_dataset(
    name: str,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    image_size: int = 224,
    workers: int = 8,
) -> "ArrayDataset | StreamingDataset":
    """A dataset by tfds name: in memory (``digits`` is scikit-learn's, always available), or
    streamed from disk for ``imagenet2012`` (at ``image_size`` squares, ``workers`` host
    threads)."""
    if name == "digits":
        return load_digits()
    if name in STREAMING:
        return load_streaming(name, data_dir, image_size, workers)
    if name not in IN_MEMORY:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {IN_MEMORY + STREAMING}")
    return load_tfds_in_memory(name, data_dir, cache_dir)


def load_config_dataset(config) -> "ArrayDataset | StreamingDataset":
    """The dataset a run ``config`` names, with its ``data_dir``, ``image_size`` and
    ``data_workers``."""
    return load_dataset(
        config.dataset,
        config.data_dir or None,
        image_size=config.image_size,
        workers=config.data_workers,
    )

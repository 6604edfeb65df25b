"""Order of examples: a pure function of (seed, step), so a resumed run sees the same batches."""

from __future__ import annotations

import numpy as np

from jaxquant.errors import ConfigError


def batch_indices(seed: int, step: int, num_examples: int, batch_size: int) -> np.ndarray:
    """Indices of the examples in training step ``step``: each epoch is a fresh permutation
    drawn from ``(seed, epoch)``; the incomplete last batch of an epoch is dropped."""
    steps_per_epoch = num_examples // batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"batch_size {batch_size} is larger than the {num_examples} training examples; "
            "lower --config.batch_size"
        )
    epoch, index = divmod(step, steps_per_epoch)
    permutation = np.random.default_rng([seed, epoch]).permutation(num_examples)
    return permutation[index * batch_size : (index + 1) * batch_size]

"""BatchNorm statistics re-estimated from training batches: for bit-widths a run did not train
(Vertical Layering's untrained rows) and for a model just put at a lower bit-width (fine-tuning
from a full-precision run, whose statistics describe the FP activations)."""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def recalibrate_batch_norm(
    model: nn.Module,
    variables,
    batches: Iterable[jax.Array],
    precisions: Sequence[int],
    preprocess: Callable | None = None,
):
    """Re-estimate BatchNorm running statistics of the precision indices ``precisions`` by
    training-mode forwards over ``batches`` (images; ``preprocess(images, False, None)`` first).
    Each batch moves the running averages with the layers' momentum; other rows stay as they are.
    """
    precisions = tuple(int(p) for p in precisions)

    @jax.jit
    def update(stats, images):
        x = images if preprocess is None else preprocess(images, False, None)
        for p in precisions:
            _, new = model.apply(
                {"params": variables["params"], "batch_stats": stats},
                x,
                p,
                train=True,
                mutable=["batch_stats"],
            )
            stats = new["batch_stats"]
        return stats

    stats = variables["batch_stats"]
    for images in batches:
        stats = update(stats, jnp.asarray(images))
    return {**variables, "batch_stats": stats}

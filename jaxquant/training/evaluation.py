"""Test accuracy: per bit-width of a trainer's state, or of one model's predict function, over
arrays or a dataset's test batches."""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.data import array_batches
from jaxquant.errors import ConfigError, NonFiniteError
from jaxquant.training.step import MultiPrecisionTrainer, TrainState


def check_finite(tree, what: str) -> None:
    """Raise `NonFiniteError` (one line naming the leaf) if a floating-point leaf of ``tree``
    holds NaN or infinity: accuracies computed from it would look like results. Checked on the
    host, outside jit (no compile; each leaf is copied off the device once)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        value = np.asarray(leaf)
        if jnp.issubdtype(value.dtype, jnp.inexact) and not np.isfinite(value).all():
            raise NonFiniteError(
                f"{what}{jax.tree_util.keystr(path)} holds NaN or infinity (training diverged?); "
                "evaluate a checkpoint from before it diverged, or retrain with a lower learning "
                "rate"
            )


def evaluate(
    trainer: MultiPrecisionTrainer,
    state: TrainState,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int = 500,
    counts_fn: Callable | None = None,
) -> dict[int, float]:
    """Test accuracy per bit-width, ``{bits: accuracy}``, over the whole set (the last batch is
    padded and masked, so every example counts once)."""
    return evaluate_batches(
        trainer, state, array_batches(images, labels, batch_size), batch_size, counts_fn
    )


def evaluate_batches(
    trainer: MultiPrecisionTrainer,
    state: TrainState,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    batch_size: int = 500,
    counts_fn: Callable | None = None,
) -> dict[int, float]:
    """`evaluate` over ``(images, labels)`` batches of at most ``batch_size`` (a dataset's
    ``test_batches``): each is padded to ``batch_size`` and masked, so one compiled function
    serves all and every example counts once."""
    check_finite(state.params, "the state's params")
    check_finite(state.batch_stats, "the state's batch_stats")
    counts_fn = counts_fn or jax.jit(trainer.correct_counts)
    total = np.zeros(trainer.num_precisions, np.int64)
    n = 0
    for batch_images, batch_labels in batches:
        size = len(batch_labels)
        pad = batch_size - size
        if pad:
            batch_images = np.concatenate([batch_images, np.repeat(batch_images[-1:], pad, 0)])
            batch_labels = np.concatenate([batch_labels, np.repeat(batch_labels[-1:], pad, 0)])
        mask = np.arange(batch_size) < size
        total += np.asarray(
            counts_fn(state.params, state.batch_stats, batch_images, batch_labels, mask)
        )
        n += size
    if n == 0:
        raise ConfigError("the test set is empty")
    return {b: float(c) / n for b, c in zip(trainer.bits, total)}


def evaluate_dataset(
    trainer: MultiPrecisionTrainer,
    state: TrainState,
    dataset,
    batch_size: int = 500,
    counts_fn: Callable | None = None,
) -> dict[int, float]:
    """`evaluate` on ``dataset``'s test split, in memory or streamed."""
    return evaluate_batches(trainer, state, dataset.test_batches(batch_size), batch_size, counts_fn)


def accuracy(
    predict: Callable[[np.ndarray], jax.Array],
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int = 1000,
) -> float:
    """Share of ``labels`` that ``argmax(predict(images), -1)`` gets right, predicting batch by
    batch (for one model outside a trainer, e.g. `jaxquant.load_vertical`'s)."""
    return batches_accuracy(predict, array_batches(images, labels, batch_size))


def batches_accuracy(
    predict: Callable[[np.ndarray], jax.Array], batches: Iterable[tuple[np.ndarray, np.ndarray]]
) -> float:
    """`accuracy` over ``(images, labels)`` batches (a dataset's ``test_batches``)."""
    correct = total = 0
    for images, labels in batches:
        predictions = np.asarray(predict(images))
        check_finite(
            predictions, f"predict's output for examples {total}..{total + len(labels) - 1}"
        )
        correct += int(np.sum(np.argmax(predictions, -1) == labels))
        total += len(labels)
    if total == 0:
        raise ConfigError("the test set is empty")
    return correct / total

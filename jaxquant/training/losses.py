"""The per-precision losses and how they are combined: cross-entropy and in-place distillation
(``none``, ``largest`` as MBQuant, ``recursive`` as Any-Precision)."""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxquant.errors import ConfigError

DISTILLATION_MODES = ("none", "largest", "recursive")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy against integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def soft_cross_entropy(logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
    """``mean_i -sum_c softmax(T_i)_c log_softmax(z_i)_c`` with the teacher under stop_gradient
    (temperature 1, as MBQuant's and Any-Precision's code)."""
    target = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits))
    return -(target * jax.nn.log_softmax(logits)).sum(-1).mean()


def multi_precision_loss(
    logits: jax.Array,
    labels: jax.Array,
    bits: Sequence[int],
    distillation: str = "none",
    loss_weights: Sequence[float] | None = None,
    task_loss: Callable[[jax.Array, jax.Array], jax.Array] = cross_entropy,
) -> tuple[jax.Array, jax.Array]:
    """Combine the per-precision losses of ``logits`` (shape ``(P, N, classes)``).

    - ``none``: ``L_b = CE_b``.
    - ``largest`` (MBQuant): the largest bit-width is the teacher, ``L_max = CE``; every other
      ``L_b = 0.5 softCE(z_b, T) + 0.5 CE_b``.
    - ``recursive`` (Any-Precision): ``L_max = CE``; each lower bit-width learns from the next
      higher one, ``L_b = softCE(z_b, z_next)``.

    ``task_loss(logits, labels)`` replaces CE as the hard loss (default: CE against integer
    labels); distillation stays the softmax cross-entropy between precisions' logits.
    Returns ``(sum_b lambda_b L_b, per-precision losses)``; lambda defaults to 1 (the papers sum).
    """
    if distillation not in DISTILLATION_MODES:
        raise ConfigError(
            f"unknown distillation {distillation!r}; choose one of {DISTILLATION_MODES}"
        )
    order = np.argsort(np.asarray(bits))[::-1]  # precision indices, largest bit-width first
    teacher = int(order[0])
    losses = [None] * len(bits)
    losses[teacher] = task_loss(logits[teacher], labels)
    for rank, p in enumerate(order[1:], start=1):
        p = int(p)
        hard = task_loss(logits[p], labels)
        if distillation == "none":
            losses[p] = hard
        elif distillation == "largest":
            losses[p] = 0.5 * soft_cross_entropy(logits[p], logits[teacher]) + 0.5 * hard
        else:
            losses[p] = soft_cross_entropy(logits[p], logits[int(order[rank - 1])])
    per_precision = jnp.stack(losses)
    weights = (
        jnp.ones(len(bits)) if loss_weights is None else jnp.asarray(loss_weights, jnp.float32)
    )
    return jnp.sum(weights * per_precision), per_precision

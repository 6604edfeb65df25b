"""The multi-precision training step: every sub-network of a batch in one jitted function.

``precision_mode='vmap'`` (default) runs the P precisions with ``jax.vmap`` over the precision
index; ``'unroll'`` runs them as an unrolled loop inside the same jit (the fair comparison, and
the way to skip work a precision does not need). The per-precision losses are combined inside
the step, so in-place distillation from the largest bit-width costs no extra forward, and one
optimizer update follows.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxquant.errors import ConfigError, PrecisionError
from jaxquant.layers.conv import Lowering, lowering
from jaxquant.layers.quant import check_precision
from jaxquant.training.losses import DISTILLATION_MODES, cross_entropy, multi_precision_loss

PRECISION_MODES = ("vmap", "unroll")


@flax.struct.dataclass
class TrainState:
    """Everything a step changes; a pytree that orbax saves as is."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def _merge_batch_stats(old, stacked):
    """Merge the batch statistics the P vmapped precisions produced: ``old + sum_p (new_p - old)``.

    Each precision writes only its own row of a `PrecisionBatchNorm`, so this is exactly the
    per-row update; a statistic shared by all precisions receives every precision's update.
    """
    return jax.tree_util.tree_map(lambda o, s: o + jnp.sum(s - o[None], axis=0), old, stacked)


def _accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-precision top-1 accuracy of ``logits`` (P, N, C) against integer labels (N,) or
    one-hot/soft labels (N, C); zeros for labels of another kind (a custom ``loss_fn``'s)."""
    if labels.shape == logits.shape[1:]:
        labels = jnp.argmax(labels, -1)
    if labels.shape != logits.shape[1:-1]:
        return jnp.zeros(logits.shape[0], jnp.float32)
    return jnp.mean(jnp.argmax(logits, -1) == labels[None], axis=1)


@dataclasses.dataclass
class MultiPrecisionTrainer:
    """Builds the jitted train and eval steps for a model built for ``bits``.

    ``preprocess(images, train, key)`` turns a raw batch into model inputs on device (for
    example normalisation and random crop + flip); it runs inside the jitted step.
    """

    model: nn.Module
    bits: tuple[int, ...]
    optimizer: optax.GradientTransformation
    distillation: str = "none"
    precision_mode: str = "vmap"
    loss_weights: tuple[float, ...] | None = None
    preprocess: Callable | None = None
    init_from_batches: Callable | None = None
    """``(trainer, state, batches, key) -> state``: a method's data-dependent init, run by `fit`
    once on a fresh run with one training batch per precision (MBQuant's intervals)."""
    regularizer: Callable | None = None
    """``(params, precision) -> scalar``: a weight regulariser of the sub-network at precision
    index ``precision`` (traced under vmap), e.g. Bin Regularization (`jaxquant.methods.binreg`).
    The loss adds ``regularizer_weight(step) * sum_p regularizer(params, p)``."""
    regularizer_weight: Callable | None = None
    """``step -> scalar``: the regulariser's weight at optimizer step ``step`` (traced), e.g. BR's
    lambda times its schedule; None: 1."""
    task_weight: Callable | None = None
    """``step -> scalar``: the task loss's weight at optimizer step ``step`` (traced), e.g. 0 in
    the BR phases of BR's ``alternating_steps_br`` schedule; None: 1."""
    compute_dtype: Any = jnp.float32
    """The dtype the model computes in: the preprocessed images are cast to it and the layers
    follow their input's dtype (``jnp.bfloat16``: convolutions, matmuls and activations in bf16,
    quantizer arithmetic and BatchNorm statistics in float32, integer codes exact on their grid,
    see `jaxquant.layers`). Parameters, optimizer state and the loss stay float32."""
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] = cross_entropy
    """``(logits, labels) -> scalar``: each precision's task loss (default: cross-entropy against
    integer labels); the distillation modes still apply between precisions."""
    lowering: Lowering = Lowering()
    """How the model's convs are lowered (`jaxquant.layers.Lowering`), set around every trace."""
    learning_rates: dict[str, Callable] | None = None
    """``{group: schedule}``, the learning rates of ``optimizer`` (`training.optim.schedules`),
    which `fit` records; None: not recorded."""

    def __post_init__(self):
        self.bits = tuple(self.bits)
        model_bits = getattr(self.model, "bits", None)  # jaxquant's models and PrecisionModel
        if isinstance(model_bits, (tuple, list)) and tuple(model_bits) != self.bits:
            raise PrecisionError(
                f"the model is built for bits {tuple(model_bits)} but the trainer is given "
                f"{self.bits}; pass the model's bits"
            )
        if self.precision_mode not in PRECISION_MODES:
            raise ConfigError(
                f"unknown precision_mode {self.precision_mode!r}; choose one of {PRECISION_MODES}"
            )
        if self.distillation not in DISTILLATION_MODES:
            raise ConfigError(
                f"unknown distillation {self.distillation!r}; choose one of {DISTILLATION_MODES}"
            )
        if self.loss_weights is not None and len(self.loss_weights) != len(self.bits):
            raise ConfigError(
                f"loss_weights has {len(self.loss_weights)} entries but bits has {len(self.bits)}"
            )

    @property
    def num_precisions(self) -> int:
        return len(self.bits)

    def apply(self, variables, x, precision, **kwargs):
        """``model.apply(variables, x, precision, **kwargs)`` with the trainer's conv lowering.
        A concrete ``precision`` outside ``0..P-1`` raises `PrecisionError`."""
        check_precision(precision, self.num_precisions, f"bits {self.bits}")
        with lowering(self.lowering):
            return self.model.apply(variables, x, precision, **kwargs)

    def _inputs(self, images, train: bool, key, dtype=None):
        x = images if self.preprocess is None else self.preprocess(images, train, key)
        dtype = self.compute_dtype if dtype is None else dtype
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    def init(self, key: jax.Array, sample_images: jax.Array) -> TrainState:
        """Initialise parameters; LSQ step sizes are initialised from ``sample_images``
        (the LSQ paper's data-dependent init), at the largest bit-width's precision index."""
        # float32 inputs whatever the compute dtype: data-dependent inits (LSQ steps) are the
        # float32 run's, and every parameter is created float32.
        x = self._inputs(sample_images, False, key, jnp.float32)

        # Jitted: un-jitted, Flax's init dispatches op by op (2x slower for the multi-branch
        # models).
        def init(k, v):
            with lowering(self.lowering):
                return self.model.init(k, v, int(np.argmax(self.bits)), train=True)

        variables = jax.jit(init)(key, x)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=self.optimizer.init(params),
        )

    def _forward_all(self, params, batch_stats, x):
        """Logits ``(P, N, classes)`` in training mode and the updated batch statistics."""

        def one(precision, stats):
            logits, updates = self.apply(
                {"params": params, "batch_stats": stats},
                x,
                precision,
                train=True,
                mutable=["batch_stats"],
            )
            return logits.astype(jnp.float32), updates.get("batch_stats", stats)

        if self.precision_mode == "vmap":
            logits, stacked = jax.vmap(one, in_axes=(0, None))(
                jnp.arange(self.num_precisions), batch_stats
            )
            return logits, _merge_batch_stats(batch_stats, stacked)
        outputs = []
        for p in range(self.num_precisions):
            logits, batch_stats = one(p, batch_stats)
            outputs.append(logits)
        return jnp.stack(outputs), batch_stats

    def train_step(
        self, state: TrainState, images: jax.Array, labels: jax.Array, key: jax.Array
    ) -> tuple[TrainState, dict]:
        """One optimizer update from all P precisions of a batch. ``key`` is the run's base key;
        the step folds in ``state.step``, so a resumed run draws the same augmentations."""
        x = self._inputs(images, True, jax.random.fold_in(key, state.step))

        def loss_fn(params):
            logits, batch_stats = self._forward_all(params, state.batch_stats, x)
            loss, per_precision = multi_precision_loss(
                logits, labels, self.bits, self.distillation, self.loss_weights, self.loss_fn
            )
            if self.task_weight is not None:
                loss = self.task_weight(state.step) * loss
            regularization = {}
            if self.regularizer is not None:
                regularization = self.regularization(params, state.step)
                weight, per_precision_br = (
                    regularization["regularizer_weight"],
                    regularization["regularizer_per_precision"],
                )
                loss = loss + weight * jnp.sum(per_precision_br)
            return loss, (per_precision, batch_stats, logits, regularization)

        (loss, (per_precision, batch_stats, logits, regularization)), grads = jax.value_and_grad(
            loss_fn, has_aux=True
        )(state.params)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        accuracy = _accuracy(logits, labels)
        metrics = {
            "loss": loss,
            "loss_per_precision": per_precision,
            "accuracy_per_precision": accuracy,
            **regularization,
        }
        return TrainState(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        ), metrics

    def regularization(self, params, step) -> dict:
        """``{'regularizer_per_precision': (P,), 'regularizer_weight': scalar}`` of `regularizer`
        at optimizer step ``step`` (the loss adds their weighted sum; both go to the metrics)."""
        if self.precision_mode == "vmap":
            per_precision = jax.vmap(lambda p: self.regularizer(params, p))(
                jnp.arange(self.num_precisions)
            )
        else:
            per_precision = jnp.stack(
                [self.regularizer(params, p) for p in range(self.num_precisions)]
            )
        weight = 1.0 if self.regularizer_weight is None else self.regularizer_weight(step)
        return {
            "regularizer_per_precision": per_precision,
            "regularizer_weight": jnp.asarray(weight, jnp.float32),
        }

    def logits(self, params, batch_stats, images: jax.Array, precision=None) -> jax.Array:
        """Inference logits: ``(P, N, classes)`` for every precision, or ``(N, classes)`` for
        one."""
        x = self._inputs(images, False, None)

        def one(p):
            return self.apply(
                {"params": params, "batch_stats": batch_stats}, x, p, train=False
            ).astype(jnp.float32)

        if precision is not None:
            return one(precision)
        if self.precision_mode == "vmap":
            return jax.vmap(one)(jnp.arange(self.num_precisions))
        return jnp.stack([one(p) for p in range(self.num_precisions)])

    def correct_counts(self, params, batch_stats, images, labels, mask) -> jax.Array:
        """Number of correct predictions per precision among the ``mask``-ed examples."""
        predictions = jnp.argmax(self.logits(params, batch_stats, images), -1)
        return jnp.sum((predictions == labels[None]) & mask[None], axis=1)

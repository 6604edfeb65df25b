"""The multi-precision training step: every sub-network of a batch in one jitted function.

``precision_mode='vmap'`` (default) runs the P precisions with ``jax.vmap`` over the precision
index; ``'unroll'`` runs them as an unrolled loop inside the same jit (the fair comparison, and
the way to skip work a precision does not need). The per-precision losses are combined inside
the step, so in-place distillation from the largest bit-width costs no extra forward, and one
optimizer update follows.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Any, Callable, Iterable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tqdm.auto import tqdm

from jaxquant.checkpoint import Checkpointer
from jaxquant.data import array_batches, batch_indices
from jaxquant.errors import ConfigError, NonFiniteLossError
from jaxquant.layers import QUANTIZER_PARAM_NAMES
from jaxquant.report import bits_label

DISTILLATION_MODES = ("none", "largest", "recursive")
PRECISION_MODES = ("vmap", "unroll")


@flax.struct.dataclass
class TrainState:
    """Everything a step changes; a pytree that orbax saves as is."""
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


# ----------------------------------------------------------------------------------------------
# Losses.

def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy against integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def soft_cross_entropy(logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
    """``mean_i -sum_c softmax(T_i)_c log_softmax(z_i)_c`` with the teacher under stop_gradient
    (temperature 1, as MBQuant's and Any-Precision's code)."""
    target = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits))
    return -(target * jax.nn.log_softmax(logits)).sum(-1).mean()


def multi_precision_loss(logits: jax.Array, labels: jax.Array, bits: Sequence[int],
                         distillation: str = "none",
                         loss_weights: Sequence[float] | None = None) -> tuple[jax.Array, jax.Array]:
    """Combine the per-precision losses of ``logits`` (shape ``(P, N, classes)``).

    - ``none``: ``L_b = CE_b``.
    - ``largest`` (MBQuant): the largest bit-width is the teacher, ``L_max = CE``; every other
      ``L_b = 0.5 softCE(z_b, T) + 0.5 CE_b``.
    - ``recursive`` (Any-Precision): ``L_max = CE``; each lower bit-width learns from the next
      higher one, ``L_b = softCE(z_b, z_next)``.

    Returns ``(sum_b lambda_b L_b, per-precision losses)``; lambda defaults to 1 (the papers sum).
    """
    if distillation not in DISTILLATION_MODES:
        raise ConfigError(f"unknown distillation {distillation!r}; choose one of {DISTILLATION_MODES}")
    order = np.argsort(np.asarray(bits))[::-1]  # precision indices, largest bit-width first
    teacher = int(order[0])
    losses = [None] * len(bits)
    losses[teacher] = cross_entropy(logits[teacher], labels)
    for rank, p in enumerate(order[1:], start=1):
        p = int(p)
        hard = cross_entropy(logits[p], labels)
        if distillation == "none":
            losses[p] = hard
        elif distillation == "largest":
            losses[p] = 0.5 * soft_cross_entropy(logits[p], logits[teacher]) + 0.5 * hard
        else:
            losses[p] = soft_cross_entropy(logits[p], logits[int(order[rank - 1])])
    per_precision = jnp.stack(losses)
    weights = jnp.ones(len(bits)) if loss_weights is None else jnp.asarray(loss_weights, jnp.float32)
    return jnp.sum(weights * per_precision), per_precision


# ----------------------------------------------------------------------------------------------
# Optimizers: model weights and quantizer parameters in their own groups.

@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Two groups, as the papers' code: model weights (SGD+momentum or Adam, with weight decay)
    and quantizer parameters (Adam, no weight decay), each with its own learning rate."""
    optimizer: str = "sgd"            # model group: sgd | adam
    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    decay_batchnorm: bool = True       # MBQuant's code decays BN gamma/beta too
    schedule: str = "cosine"           # cosine | constant | step
    per_epoch_schedule: bool = False   # staircase: the LR changes once per epoch (PyTorch scheduler.step())
    warmup_epochs: float = 0.0
    step_epochs: tuple[float, ...] = ()   # for schedule='step': multiply by step_factor at these epochs
    step_factor: float = 0.1
    quantizer_optimizer: str = "adam"
    quantizer_learning_rate: float = 1e-3
    quantizer_schedule: str = "cosine"


def learning_rate_schedule(base: float, kind: str, total_steps: int, steps_per_epoch: int,
                           per_epoch: bool = False, warmup_epochs: float = 0.0,
                           step_epochs: Sequence[float] = (), step_factor: float = 0.1) -> optax.Schedule:
    """cosine (to 0), constant, or step; optionally a staircase per epoch and a linear warmup."""
    total_steps = max(int(total_steps), 1)
    steps_per_epoch = max(int(steps_per_epoch), 1)
    warmup = int(round(warmup_epochs * steps_per_epoch))

    def schedule(count):
        t = jnp.floor(count / steps_per_epoch) * steps_per_epoch if per_epoch else count
        t = jnp.asarray(t, jnp.float32)
        if kind == "cosine":
            span = max(total_steps - warmup, 1)
            lr = 0.5 * base * (1.0 + jnp.cos(jnp.pi * jnp.clip((t - warmup) / span, 0.0, 1.0)))
        elif kind == "constant":
            lr = jnp.full((), base, jnp.float32)
        elif kind == "step":
            epoch = t / steps_per_epoch
            drops = sum(jnp.where(epoch >= e, 1.0, 0.0) for e in step_epochs) if step_epochs else 0.0
            lr = base * step_factor ** drops
        else:
            raise ConfigError(f"unknown schedule {kind!r}; use cosine, constant or step")
        if warmup:
            lr = jnp.where(count < warmup, base * (count + 1) / warmup, lr)
        return lr

    return schedule


def _param_group(path: tuple, _) -> str:
    name = getattr(path[-1], "key", str(path[-1]))
    return "quantizer" if name in QUANTIZER_PARAM_NAMES else "model"


def _decays(path: tuple, _, decay_batchnorm: bool) -> bool:
    names = [getattr(k, "key", str(k)) for k in path]
    is_bn = any(n.endswith("bn") or "_bn" in n for n in names[:-1]) and names[-1] in ("scale", "bias")
    return decay_batchnorm or not is_bn


def make_optimizer(config: OptimizerConfig, total_steps: int, steps_per_epoch: int) -> optax.GradientTransformation:
    """``multi_transform`` over the two parameter groups (see `OptimizerConfig`)."""
    lr = learning_rate_schedule(config.learning_rate, config.schedule, total_steps, steps_per_epoch,
                                config.per_epoch_schedule, config.warmup_epochs, config.step_epochs,
                                config.step_factor)
    qlr = learning_rate_schedule(config.quantizer_learning_rate, config.quantizer_schedule, total_steps,
                                 steps_per_epoch, config.per_epoch_schedule, config.warmup_epochs,
                                 config.step_epochs, config.step_factor)

    def decay_mask(params):
        return jax.tree_util.tree_map_with_path(lambda p, v: _decays(p, v, config.decay_batchnorm), params)

    # PyTorch adds the L2 term to the gradient before momentum/Adam: add_decayed_weights first.
    wd = optax.add_decayed_weights(config.weight_decay, mask=decay_mask) if config.weight_decay else optax.identity()
    if config.optimizer == "sgd":
        model_tx = optax.chain(wd, optax.sgd(lr, momentum=config.momentum or None, nesterov=config.nesterov))
    elif config.optimizer == "adam":
        model_tx = optax.chain(wd, optax.adam(lr))
    else:
        raise ConfigError(f"unknown optimizer {config.optimizer!r}; use sgd or adam")
    if config.quantizer_optimizer == "adam":
        quant_tx = optax.adam(qlr)
    elif config.quantizer_optimizer == "sgd":
        quant_tx = optax.sgd(qlr, momentum=config.momentum or None)
    else:
        raise ConfigError(f"unknown quantizer optimizer {config.quantizer_optimizer!r}; use adam or sgd")
    return optax.multi_transform(
        {"model": model_tx, "quantizer": quant_tx},
        lambda params: jax.tree_util.tree_map_with_path(_param_group, params))


# ----------------------------------------------------------------------------------------------
# The step.

def _merge_batch_stats(old, stacked):
    """Merge the batch statistics the P vmapped precisions produced: ``old + sum_p (new_p - old)``.

    Each precision writes only its own row of a `PrecisionBatchNorm`, so this is exactly the
    per-row update; a statistic shared by all precisions receives every precision's update.
    """
    return jax.tree_util.tree_map(lambda o, s: o + jnp.sum(s - o[None], axis=0), old, stacked)


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
    compute_dtype: Any = jnp.float32
    """The dtype the model computes in: the preprocessed images are cast to it and the layers
    follow their input's dtype (``jnp.bfloat16``: convolutions, matmuls and activations in bf16,
    quantizer arithmetic and BatchNorm statistics in float32, integer codes exact on their grid,
    see `jaxquant.layers`). Parameters, optimizer state and the loss stay float32."""

    def __post_init__(self):
        self.bits = tuple(self.bits)
        if self.precision_mode not in PRECISION_MODES:
            raise ConfigError(f"unknown precision_mode {self.precision_mode!r}; choose one of {PRECISION_MODES}")
        if self.distillation not in DISTILLATION_MODES:
            raise ConfigError(f"unknown distillation {self.distillation!r}; choose one of {DISTILLATION_MODES}")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.bits):
            raise ConfigError(f"loss_weights has {len(self.loss_weights)} entries but bits has {len(self.bits)}")

    @property
    def num_precisions(self) -> int:
        return len(self.bits)

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
        # Jitted: un-jitted, Flax's init dispatches op by op (2x slower for the multi-branch models).
        variables = jax.jit(lambda k, v: self.model.init(k, v, int(np.argmax(self.bits)), train=True))(key, x)
        params = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables.get("batch_stats", {}),
                          opt_state=self.optimizer.init(params))

    def _forward_all(self, params, batch_stats, x):
        """Logits ``(P, N, classes)`` in training mode and the updated batch statistics."""
        def one(precision, stats):
            logits, updates = self.model.apply({"params": params, "batch_stats": stats}, x, precision,
                                               train=True, mutable=["batch_stats"])
            return logits.astype(jnp.float32), updates.get("batch_stats", stats)

        if self.precision_mode == "vmap":
            logits, stacked = jax.vmap(one, in_axes=(0, None))(jnp.arange(self.num_precisions), batch_stats)
            return logits, _merge_batch_stats(batch_stats, stacked)
        outputs = []
        for p in range(self.num_precisions):
            logits, batch_stats = one(p, batch_stats)
            outputs.append(logits)
        return jnp.stack(outputs), batch_stats

    def train_step(self, state: TrainState, images: jax.Array, labels: jax.Array,
                   key: jax.Array) -> tuple[TrainState, dict]:
        """One optimizer update from all P precisions of a batch. ``key`` is the run's base key;
        the step folds in ``state.step``, so a resumed run draws the same augmentations."""
        x = self._inputs(images, True, jax.random.fold_in(key, state.step))

        def loss_fn(params):
            logits, batch_stats = self._forward_all(params, state.batch_stats, x)
            loss, per_precision = multi_precision_loss(logits, labels, self.bits, self.distillation,
                                                       self.loss_weights)
            regularization = {}
            if self.regularizer is not None:
                regularization = self.regularization(params, state.step)
                weight, per_precision_br = regularization["regularizer_weight"], regularization["regularizer_per_precision"]
                loss = loss + weight * jnp.sum(per_precision_br)
            return loss, (per_precision, batch_stats, logits, regularization)

        (loss, (per_precision, batch_stats, logits, regularization)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.params)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels[None], axis=1)
        metrics = {"loss": loss, "loss_per_precision": per_precision, "accuracy_per_precision": accuracy,
                   **regularization}
        return TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                          opt_state=opt_state), metrics

    def regularization(self, params, step) -> dict:
        """``{'regularizer_per_precision': (P,), 'regularizer_weight': scalar}`` of `regularizer`
        at optimizer step ``step`` (the loss adds their weighted sum; both go to the metrics)."""
        if self.precision_mode == "vmap":
            per_precision = jax.vmap(lambda p: self.regularizer(params, p))(jnp.arange(self.num_precisions))
        else:
            per_precision = jnp.stack([self.regularizer(params, p) for p in range(self.num_precisions)])
        weight = 1.0 if self.regularizer_weight is None else self.regularizer_weight(step)
        return {"regularizer_per_precision": per_precision, "regularizer_weight": jnp.asarray(weight, jnp.float32)}

    def logits(self, params, batch_stats, images: jax.Array, precision=None) -> jax.Array:
        """Inference logits: ``(P, N, classes)`` for every precision, or ``(N, classes)`` for one."""
        x = self._inputs(images, False, None)

        def one(p):
            return self.model.apply({"params": params, "batch_stats": batch_stats}, x, p,
                                    train=False).astype(jnp.float32)

        if precision is not None:
            return one(precision)
        if self.precision_mode == "vmap":
            return jax.vmap(one)(jnp.arange(self.num_precisions))
        return jnp.stack([one(p) for p in range(self.num_precisions)])

    def correct_counts(self, params, batch_stats, images, labels, mask) -> jax.Array:
        """Number of correct predictions per precision among the ``mask``-ed examples."""
        predictions = jnp.argmax(self.logits(params, batch_stats, images), -1)
        return jnp.sum((predictions == labels[None]) & mask[None], axis=1)


def evaluate(trainer: MultiPrecisionTrainer, state: TrainState, images: np.ndarray, labels: np.ndarray,
             batch_size: int = 500, counts_fn: Callable | None = None) -> dict[int, float]:
    """Test accuracy per bit-width, ``{bits: accuracy}``, over the whole set (the last batch is
    padded and masked, so every example counts once)."""
    return evaluate_batches(trainer, state, array_batches(images, labels, batch_size), batch_size, counts_fn)


def evaluate_batches(trainer: MultiPrecisionTrainer, state: TrainState,
                     batches: Iterable[tuple[np.ndarray, np.ndarray]], batch_size: int = 500,
                     counts_fn: Callable | None = None) -> dict[int, float]:
    """`evaluate` over ``(images, labels)`` batches of at most ``batch_size`` (a dataset's
    ``test_batches``): each is padded to ``batch_size`` and masked, so one compiled function
    serves all and every example counts once."""
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
        total += np.asarray(counts_fn(state.params, state.batch_stats, batch_images, batch_labels, mask))
        n += size
    if n == 0:
        raise ConfigError("the test set is empty")
    return {b: float(c) / n for b, c in zip(trainer.bits, total)}


def evaluate_dataset(trainer: MultiPrecisionTrainer, state: TrainState, dataset, batch_size: int = 500,
                     counts_fn: Callable | None = None) -> dict[int, float]:
    """`evaluate` on ``dataset``'s test split, in memory or streamed."""
    return evaluate_batches(trainer, state, dataset.test_batches(batch_size), batch_size, counts_fn)


def accuracy(predict: Callable[[np.ndarray], jax.Array], images: np.ndarray, labels: np.ndarray,
             batch_size: int = 1000) -> float:
    """Share of ``labels`` that ``argmax(predict(images), -1)`` gets right, predicting batch by
    batch (for one model outside a trainer, e.g. `jaxquant.load_vertical`'s)."""
    return batches_accuracy(predict, array_batches(images, labels, batch_size))


def batches_accuracy(predict: Callable[[np.ndarray], jax.Array], batches: Iterable[tuple[np.ndarray, np.ndarray]]
                     ) -> float:
    """`accuracy` over ``(images, labels)`` batches (a dataset's ``test_batches``)."""
    correct = total = 0
    for images, labels in batches:
        correct += int(np.sum(np.argmax(np.asarray(predict(images)), -1) == labels))
        total += len(labels)
    if total == 0:
        raise ConfigError("the test set is empty")
    return correct / total


# ----------------------------------------------------------------------------------------------
# The fit loop: data-parallel over all devices, checkpointed, resumable, deterministic.

def data_parallel_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh with a ``data`` axis over every device (all hosts in a multi-host run)."""
    return jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))


def _empty_log(num_precisions: int) -> dict:
    """What the fit loop accumulates on device between two log points (`_accumulate`)."""
    return {"loss_sum": jnp.zeros((), jnp.float32), "accuracy_sum": jnp.zeros((num_precisions,), jnp.float32),
            "steps": jnp.zeros((), jnp.int32), "first_nonfinite_step": jnp.full((), -1, jnp.int32),
            "first_nonfinite_loss": jnp.zeros((), jnp.float32)}


def _accumulate(log: dict, metrics: dict, step: jax.Array) -> dict:
    """Add one step's metrics to ``log``, and remember the first step whose loss is not finite
    (1-based, as `fit` reports steps) and that loss; all on device, nothing is fetched."""
    loss = metrics["loss"].astype(jnp.float32)
    first = (log["first_nonfinite_step"] < 0) & ~jnp.isfinite(loss)
    return {"loss_sum": log["loss_sum"] + loss,
            "accuracy_sum": log["accuracy_sum"] + metrics["accuracy_per_precision"].astype(jnp.float32),
            "steps": log["steps"] + 1,
            "first_nonfinite_step": jnp.where(first, step + 1, log["first_nonfinite_step"]),
            "first_nonfinite_loss": jnp.where(first, loss, log["first_nonfinite_loss"])}


def fit(trainer: MultiPrecisionTrainer, dataset, *, workdir: str, seed: int, epochs: int, batch_size: int,
        checkpoint_every_steps: int = 500, keep_checkpoints: int = 3, progress: bool = True,
        log_every_steps: int = 50, log: Callable[[str], None] = print,
        on_start: Callable[[], None] | None = None) -> TrainState:
    """Train ``trainer`` on ``dataset`` (in memory or streamed, `jaxquant.data`) for ``epochs``;
    resume from ``workdir``.

    The batch order is a function of (seed, step) and the augmentation key of (seed, step), so a
    run killed at any point and resumed ends with exactly the parameters of an uninterrupted run.
    The next batch is read (a streamed one decoded) in a background thread while the step runs.
    The batch is sharded over all devices along ``data``; the state is replicated. ``on_start``
    runs once any existing checkpoint has been restored (or found absent), before the first step.

    Nothing moves from device to host between log points: the step adds its loss and accuracies
    to an on-device log (and notes the first non-finite loss), which the loop fetches every
    ``log_every_steps`` steps (the progress bar's figures are their means since the last log
    point), before every checkpoint and at the end. A non-finite loss therefore stops the run at
    the next of those points, before anything is saved: the error names the step where it began,
    and the last good checkpoint is kept. Checkpoints are written asynchronously (`Checkpointer`).
    """
    if log_every_steps < 1:
        raise ConfigError(f"log_every_steps must be at least 1, got {log_every_steps}")
    mesh = data_parallel_mesh()
    if batch_size % mesh.size:
        raise ConfigError(f"batch_size {batch_size} is not divisible by the {mesh.size} devices; "
                          f"use a multiple of {mesh.size}")
    data_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    n = dataset.train_size
    steps_per_epoch = n // batch_size
    total_steps = steps_per_epoch * epochs
    key = jax.random.key(seed)

    sample = dataset.train_examples(batch_indices(seed, 0, n, batch_size), seed, 0)[0]
    state = trainer.init(jax.random.fold_in(key, 10**6), jnp.asarray(sample))
    checkpointer = Checkpointer(workdir, keep=keep_checkpoints)
    start = checkpointer.latest_step()
    if start is not None:
        try:
            state = checkpointer.restore(state)
        except BaseException:
            checkpointer.close()  # orbax's threads end now, not while the interpreter shuts down
            raise
        log(f"resuming from step {start} in {checkpointer.directory}")
    elif trainer.init_from_batches is not None:
        batches = [dataset.train_examples(batch_indices(seed + 1, i, n, batch_size), seed + 1, i)[0]
                   for i in range(trainer.num_precisions)]
        state = trainer.init_from_batches(trainer, state, batches, jax.random.fold_in(key, 10**6 + 1))
    if on_start is not None:
        on_start()
    state = jax.device_put(state, replicated)

    def step_and_log(state, log_state, images, labels, key):
        step = state.step
        state, metrics = trainer.train_step(state, images, labels, key)
        return state, _accumulate(log_state, metrics, step)

    step_fn = jax.jit(step_and_log, donate_argnums=(0, 1), out_shardings=(replicated, replicated))
    fresh_log = jax.jit(lambda: _empty_log(trainer.num_precisions), out_shardings=replicated)

    # In a multi-host run each process feeds its slice of the global batch.
    per_process = batch_size // jax.process_count()
    local = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)

    def local_batch(step):
        return dataset.train_examples(batch_indices(seed, step, n, batch_size)[local], seed, step, local.start)

    first = int(state.step)
    bar = tqdm(total=total_steps, initial=first, disable=not progress, unit="step", mininterval=1.0,
               dynamic_ncols=True, desc="train")
    last_saved = start

    def read_log(log_state) -> None:
        """The one device-to-host transfer between log points: report, or stop on a bad loss."""
        values = jax.device_get(log_state)
        if values["first_nonfinite_step"] >= 0:
            kept = f"the last good checkpoint (step {last_saved}) is kept" if last_saved is not None else "no checkpoint was written"
            raise NonFiniteLossError(
                f"loss became {float(values['first_nonfinite_loss'])} at step {int(values['first_nonfinite_step'])}; "
                f"lower --config.optimizer.learning_rate or check the data; {kept}")
        if values["steps"] > 0:
            mean_accuracy = values["accuracy_sum"] / values["steps"]
            bar.set_postfix_str(f"loss {float(values['loss_sum']) / values['steps']:.3f} | " + " ".join(
                f"{bits_label(b)}:{a:.2f}" for b, a in zip(trainer.bits, mean_accuracy)), refresh=False)

    loader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="batches")
    pending = loader.submit(local_batch, first) if first < total_steps else None
    log_state = fresh_log()
    try:
        for step in range(first, total_steps):
            host_images, host_labels = pending.result()
            if step + 1 < total_steps:
                pending = loader.submit(local_batch, step + 1)
            images = jax.make_array_from_process_local_data(data_sharding, host_images)
            labels = jax.make_array_from_process_local_data(data_sharding, host_labels)
            state, log_state = step_fn(state, log_state, images, labels, key)
            bar.update(1)
            save = (step + 1) % checkpoint_every_steps == 0 or step + 1 == total_steps
            if save or (step + 1) % log_every_steps == 0:
                read_log(log_state)  # raises before a non-finite state can be saved
                log_state = fresh_log()
            if save:
                checkpointer.save(step + 1, state)
                last_saved = step + 1
    finally:
        bar.close()
        loader.shutdown(wait=True, cancel_futures=True)
        checkpointer.close()  # waits for an asynchronous save still being written
    return state

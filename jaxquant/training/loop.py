"""The fit loop: data-parallel over all devices, checkpointed, resumable, deterministic."""

from __future__ import annotations

import concurrent.futures
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxquant.checkpoint import Checkpointer
from jaxquant.data import batch_indices
from jaxquant.errors import ConfigError, NonFiniteLossError
from jaxquant.report import bits_label
from jaxquant.training.evaluation import evaluate_dataset
from jaxquant.training.init_from import initialize_from, load_source
from jaxquant.training.metrics import MetricWriter
from jaxquant.training.step import MultiPrecisionTrainer, TrainState


def data_parallel_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh with a ``data`` axis over every device (all hosts in a multi-host run)."""
    return jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))


def _empty_log(num_precisions: int) -> dict:
    """What the fit loop accumulates on device between two log points (`_accumulate`)."""
    return {
        "loss_sum": jnp.zeros((), jnp.float32),
        "loss_per_precision_sum": jnp.zeros((num_precisions,), jnp.float32),
        "accuracy_sum": jnp.zeros((num_precisions,), jnp.float32),
        "steps": jnp.zeros((), jnp.int32),
        "first_nonfinite_step": jnp.full((), -1, jnp.int32),
        "first_nonfinite_loss": jnp.zeros((), jnp.float32),
    }


def _accumulate(log: dict, metrics: dict, step: jax.Array) -> dict:
    """Add one step's metrics to ``log``, and remember the first step whose loss is not finite
    (1-based, as `fit` reports steps) and that loss; all on device, nothing is fetched."""
    loss = metrics["loss"].astype(jnp.float32)
    first = (log["first_nonfinite_step"] < 0) & ~jnp.isfinite(loss)
    return {
        "loss_sum": log["loss_sum"] + loss,
        "loss_per_precision_sum": log["loss_per_precision_sum"]
        + metrics["loss_per_precision"].astype(jnp.float32),
        "accuracy_sum": log["accuracy_sum"] + metrics["accuracy_per_precision"].astype(jnp.float32),
        "steps": log["steps"] + 1,
        "first_nonfinite_step": jnp.where(first, step + 1, log["first_nonfinite_step"]),
        "first_nonfinite_loss": jnp.where(first, loss, log["first_nonfinite_loss"]),
    }


def fit(
    trainer: MultiPrecisionTrainer,
    dataset,
    *,
    workdir: str,
    seed: int,
    epochs: int,
    batch_size: int,
    checkpoint_every_steps: int = 500,
    keep_checkpoints: int = 3,
    progress: bool = True,
    log_every_steps: int = 50,
    log: Callable[[str], None] = print,
    on_start: Callable[[], None] | None = None,
    eval_every_steps: int = 0,
    eval_batch_size: int = 500,
    init_from: str | None = None,
    init_from_bn_batches: int = 50,
    write_metrics: bool = True,
) -> TrainState:
    """Train ``trainer`` on ``dataset`` (in memory or streamed, `jaxquant.data`) for ``epochs``;
    resume from ``workdir``.

    The batch order is a function of (seed, step) and the augmentation key of (seed, step), so a
    run killed at any point and resumed ends with exactly the parameters of an uninterrupted run.
    The next batch is read (a streamed one decoded) in a background thread while the step runs.
    The batch is sharded over all devices along ``data``; the state is replicated. ``on_start``
    runs once any existing checkpoint has been restored (or found absent), before the first step.

    Every log point and every ``eval_every_steps`` steps (test accuracy per bit-width,
    `evaluate_dataset`) is a record in ``workdir``'s ``metrics.jsonl`` and TensorBoard event
    files (`jaxquant.training.metrics`; ``write_metrics=False``: none); a resumed run first drops
    the records after its checkpoint. ``init_from`` (a run directory or checkpoint folder) starts a
    fresh run from that run's weights (`jaxquant.training.init_from`; BatchNorm re-estimated over
    ``init_from_bn_batches`` training batches) and evaluates at step 0.

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
        raise ConfigError(
            f"batch_size {batch_size} is not divisible by the {mesh.size} devices; "
            f"use a multiple of {mesh.size}"
        )
    data_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    n = dataset.train_size
    steps_per_epoch = n // batch_size
    total_steps = steps_per_epoch * epochs
    key = jax.random.key(seed)

    sample = dataset.train_examples(batch_indices(seed, 0, n, batch_size), seed, 0)[0]
    state = trainer.init(jax.random.fold_in(key, 10**6), jnp.asarray(sample))
    fresh = not Checkpointer.exists(workdir)
    if init_from and fresh:  # read and matched before anything is written to the workdir
        source = load_source(init_from)
        bn_batches = [
            dataset.train_examples(batch_indices(seed + 2, i, n, batch_size), seed + 2, i)[0]
            for i in range(init_from_bn_batches)
        ]
        state = initialize_from(
            trainer, state, source, sample, jax.random.fold_in(key, 10**6 + 2), bn_batches
        )
        log(f"initialised from {source.description}")
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
        batches = [
            dataset.train_examples(batch_indices(seed + 1, i, n, batch_size), seed + 1, i)[0]
            for i in range(trainer.num_precisions)
        ]
        state = trainer.init_from_batches(
            trainer, state, batches, jax.random.fold_in(key, 10**6 + 1)
        )
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
        return dataset.train_examples(
            batch_indices(seed, step, n, batch_size)[local], seed, step, local.start
        )

    first = int(state.step)
    bar = tqdm(
        total=total_steps,
        initial=first,
        disable=not progress,
        unit="step",
        mininterval=1.0,
        dynamic_ncols=True,
        desc="train",
    )
    last_saved = start

    writer = None
    counts_fn = jax.jit(trainer.correct_counts)  # compiled once for every evaluation
    bit_labels = [bits_label(b) for b in trainer.bits]

    def record(step: int, values: dict) -> None:
        if writer is not None:
            writer.write(step, step / max(steps_per_epoch, 1), values)

    def run_evaluation(state, step: int) -> None:
        accuracies = evaluate_dataset(trainer, state, dataset, eval_batch_size, counts_fn)
        record(step, {f"eval/accuracy/{bits_label(b)}": a for b, a in accuracies.items()})
        text = " | ".join(f"{bits_label(b)} {100 * a:.2f}" for b, a in accuracies.items())
        message = f"step {step} (epoch {step / max(steps_per_epoch, 1):g}): test accuracy {text}"
        bar.write(message) if progress else log(message)

    def read_log(log_state, step: int) -> None:
        """The one device-to-host transfer between log points: report, or stop on a bad loss."""
        values = jax.device_get(log_state)
        if values["first_nonfinite_step"] >= 0:
            kept = (
                f"the last good checkpoint (step {last_saved}) is kept"
                if last_saved is not None
                else "no checkpoint was written"
            )
            raise NonFiniteLossError(
                f"loss became {float(values['first_nonfinite_loss'])} "
                f"at step {int(values['first_nonfinite_step'])}; "
                f"lower --config.optimizer.learning_rate or check the data; {kept}"
            )
        if values["steps"] > 0:
            mean_accuracy = values["accuracy_sum"] / values["steps"]
            mean_losses = values["loss_per_precision_sum"] / values["steps"]
            scalars = {"train/loss": float(values["loss_sum"]) / values["steps"]}
            scalars.update({f"train/loss/{b}": v for b, v in zip(bit_labels, mean_losses)})
            scalars.update({f"train/accuracy/{b}": a for b, a in zip(bit_labels, mean_accuracy)})
            for group, schedule in (trainer.learning_rates or {}).items():
                scalars[f"learning_rate/{group}"] = float(schedule(step - 1))
            record(step, scalars)
            bar.set_postfix_str(
                f"loss {float(values['loss_sum']) / values['steps']:.3f} | "
                + " ".join(f"{bits_label(b)}:{a:.2f}" for b, a in zip(trainer.bits, mean_accuracy)),
                refresh=False,
            )

    loader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="batches")
    pending = loader.submit(local_batch, first) if first < total_steps else None
    log_state = fresh_log()
    try:
        writer = MetricWriter(workdir, start) if write_metrics else None
        if init_from and start is None and eval_every_steps:
            run_evaluation(state, 0)
        for step in range(first, total_steps):
            host_images, host_labels = pending.result()
            if step + 1 < total_steps:
                pending = loader.submit(local_batch, step + 1)
            images = jax.make_array_from_process_local_data(data_sharding, host_images)
            labels = jax.make_array_from_process_local_data(data_sharding, host_labels)
            state, log_state = step_fn(state, log_state, images, labels, key)
            bar.update(1)
            save = (step + 1) % checkpoint_every_steps == 0 or step + 1 == total_steps
            evaluate = eval_every_steps and (
                (step + 1) % eval_every_steps == 0 or step + 1 == total_steps
            )
            if save or evaluate or (step + 1) % log_every_steps == 0:
                read_log(log_state, step + 1)  # raises before a non-finite state is evaluated
                log_state = fresh_log()  # or saved
            if evaluate:
                run_evaluation(state, step + 1)  # recorded before the checkpoint of its step
            if save:
                checkpointer.save(step + 1, state)
                last_saved = step + 1
    finally:
        bar.close()
        loader.shutdown(wait=True, cancel_futures=True)
        checkpointer.close()  # waits for an asynchronous save still being written
        if writer is not None:
            writer.close()
    return state

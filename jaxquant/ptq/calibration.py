"""Calibration data, activation steps (the MSE fixed point) and BatchNorm re-estimation."""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.ptq.capture import Layer, Network, Quantizer, activation_range


def mse_step(values: np.ndarray, bits: int, signed: bool, max_iterations: int = 1000) -> float:
    """The code's per-tensor activation step: from ``s = max / hi`` iterate
    ``q = clip(round(x / s), lo, hi)``, ``s = <x, q> / <q, q>`` until ``s`` repeats one of its last
    five values (a cycle guard). Unsigned: on the strictly positive values; signed: on ``|x|``."""
    values = np.asarray(values, np.float64).reshape(-1)
    values = np.abs(values) if signed else values[values > 0]
    if values.size == 0 or values.max() <= 0:
        return 1.0
    lo, hi = activation_range(bits, signed)
    lo = 0 if signed else lo
    step = values.max() / hi
    history: list[float] = []
    for _ in range(max_iterations):
        q = np.clip(np.round(values / step), lo, hi)
        qq = float(q @ q)
        new = float(values @ q) / qq if qq > 0 else step
        if new == step or new in history[-5:]:
            break
        history.append(step)
        step = new
    return float(step)


def sample_rows(
    rng: np.random.Generator, layers: Sequence[Layer], batch: int, rows: int, samples: int
) -> tuple[dict, dict]:
    """Random output positions ``[K, 3]`` (example, i, j) per layer, at most ``rows`` without
    replacement (dense: every example), and ``samples`` random flat indices into each input."""
    row_indices, sample_indices = {}, {}
    for layer in layers:
        if layer.kind == "dense":
            row_indices[layer.name] = np.stack(
                [np.arange(batch), np.zeros(batch, int), np.zeros(batch, int)], 1
            )
        else:
            h, w = layer.output_spatial
            total = batch * h * w
            flat = rng.choice(total, size=min(rows, total), replace=False)
            row_indices[layer.name] = np.stack(np.unravel_index(flat, (batch, h, w)), 1)
        size = batch * int(np.prod(layer.input_shape))
        sample_indices[layer.name] = rng.choice(size, size=min(samples, size), replace=False)
    to_jnp = lambda d: {k: jnp.asarray(v, jnp.int32) for k, v in d.items()}  # noqa: E731
    return to_jnp(row_indices), to_jnp(sample_indices)


BN_STACK_BYTES = 2**30
"""BatchNorm batches up to this size are augmented once and kept on device, stacked."""


@dataclasses.dataclass
class CalibrationData:
    """Where PTQ draws images: ``calibration`` (model inputs, augmented once) and
    ``bn_batches()`` (an iterable of model-input batches for BatchNorm re-estimation), or
    ``bn_stack`` (the same batches stacked ``[T, B, ...]`` on device: every re-estimation of a
    run then is one jitted `lax.scan` over them, without re-drawing or re-augmenting)."""

    calibration: jax.Array
    bn_batches: Callable[[], Iterable[jax.Array]]
    bn_stack: jax.Array | None = None

    @classmethod
    def from_arrays(
        cls, network: Network, images: np.ndarray, config, seed: int = 0
    ) -> "CalibrationData":
        """Draw from in-memory training ``images`` with the network's training augmentation."""
        return cls.from_examples(network, len(images), lambda idx, step: images[idx], config, seed)

    @classmethod
    def from_dataset(cls, network: Network, dataset, config, seed: int = 0) -> "CalibrationData":
        """Draw from a `jaxquant.data` dataset's training split, in memory or streamed (a streamed
        one arrives augmented from the host; the network's preprocess then only normalises)."""
        return cls.from_examples(
            network,
            dataset.train_size,
            lambda idx, step: dataset.train_examples(idx, seed, step)[0],
            config,
            seed,
        )

    @classmethod
    def from_examples(
        cls,
        network: Network,
        size: int,
        examples: Callable[[np.ndarray, int], np.ndarray],
        config,
        seed: int = 0,
    ) -> "CalibrationData":
        """``examples(indices, draw)`` gives the training images at ``indices`` (draw 0: the
        calibration set, draw i: BN batch i); they go through the network's training preprocess."""
        rng = np.random.default_rng(seed)
        key = jax.random.key(seed)
        chosen = rng.choice(size, size=min(config.calibration_images, size), replace=False)
        calibration = network.inputs(examples(np.sort(chosen), 0), True, jax.random.fold_in(key, 0))

        def bn_batches():
            batch_rng = np.random.default_rng(seed + 1)
            for i in range(config.bn_batches):
                idx = batch_rng.choice(size, size=min(config.bn_batch_size, size), replace=False)
                yield network.inputs(examples(idx, i + 1), True, jax.random.fold_in(key, i + 1))

        batch = min(config.bn_batch_size, size)
        stack_bytes = config.bn_batches * batch * calibration[0].size * calibration.dtype.itemsize
        stack = (
            jnp.stack(list(bn_batches()))
            if 0 < config.bn_batches and stack_bytes <= BN_STACK_BYTES
            else None
        )
        return cls(calibration, bn_batches, stack)


def reestimate_batchnorm(
    quantizer: Quantizer, variables: dict, data: CalibrationData, act_arrays: dict
) -> dict:
    """Run the training-mode forward over ``data.bn_batches()`` (the model's own BN momentum)
    and return the variables with the moved ``batch_stats``: the code's BN "update"."""
    if not variables.get("batch_stats"):
        return variables
    if data.bn_stack is not None:
        scan = quantizer.compile_bn_scan(variables, data.bn_stack, act_arrays)
        return {**variables, "batch_stats": scan(variables, data.bn_stack, act_arrays)}
    for x in data.bn_batches():
        variables = {**variables, "batch_stats": quantizer.bn_update(variables, x, act_arrays)}
    return variables

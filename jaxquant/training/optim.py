"""Optimizers: model weights and quantizer parameters in their own groups, with their learning
rate schedules."""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxquant.errors import ConfigError
from jaxquant.layers import is_quantizer_param


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Two groups, as the papers' code: model weights (SGD+momentum or Adam, with weight decay)
    and quantizer parameters (Adam, no weight decay), each with its own learning rate."""

    optimizer: str = "sgd"  # model group: sgd | adam
    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    decay_batchnorm: bool = True  # MBQuant's code decays BN gamma/beta too
    # parameter paths ("layer/.../name", fnmatch patterns) that get no weight decay, e.g.
    # ("*_dw/kernel",): MBQuant's MobileNetV1 depthwise kernels
    no_decay: tuple[str, ...] = ()
    schedule: str = "cosine"  # cosine | constant | step
    per_epoch_schedule: bool = (
        False  # staircase: the LR changes once per epoch (PyTorch scheduler.step())
    )
    warmup_epochs: float = 0.0
    step_epochs: tuple[
        float, ...
    ] = ()  # for schedule='step': multiply by step_factor at these epochs
    step_factor: float = 0.1
    quantizer_optimizer: str = "adam"
    quantizer_learning_rate: float = 1e-3
    quantizer_schedule: str = "cosine"


def learning_rate_schedule(
    base: float,
    kind: str,
    total_steps: int,
    steps_per_epoch: int,
    per_epoch: bool = False,
    warmup_epochs: float = 0.0,
    step_epochs: Sequence[float] = (),
    step_factor: float = 0.1,
) -> optax.Schedule:
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
            drops = (
                sum(jnp.where(epoch >= e, 1.0, 0.0) for e in step_epochs) if step_epochs else 0.0
            )
            lr = base * step_factor**drops
        else:
            raise ConfigError(f"unknown schedule {kind!r}; use cosine, constant or step")
        if warmup:
            lr = jnp.where(count < warmup, base * (count + 1) / warmup, lr)
        return lr

    return schedule


def _param_group(path: tuple, _) -> str:
    name = getattr(path[-1], "key", str(path[-1]))
    return "quantizer" if is_quantizer_param(name) else "model"


def _decays(path: tuple, _, decay_batchnorm: bool, no_decay: Sequence[str] = ()) -> bool:
    names = [getattr(k, "key", str(k)) for k in path]
    joined = "/".join(str(n) for n in names)
    if any(fnmatch.fnmatchcase(joined, pattern) for pattern in no_decay):
        return False
    is_bn = any(n.endswith("bn") or "_bn" in n for n in names[:-1]) and names[-1] in (
        "scale",
        "bias",
    )
    return decay_batchnorm or not is_bn


def schedules(
    config: OptimizerConfig, total_steps: int, steps_per_epoch: int
) -> dict[str, optax.Schedule]:
    """The learning rate schedule of each parameter group, ``{'model': ..., 'quantizer': ...}``."""
    common = (
        total_steps,
        steps_per_epoch,
        config.per_epoch_schedule,
        config.warmup_epochs,
        config.step_epochs,
        config.step_factor,
    )
    return {
        "model": learning_rate_schedule(config.learning_rate, config.schedule, *common),
        "quantizer": learning_rate_schedule(
            config.quantizer_learning_rate, config.quantizer_schedule, *common
        ),
    }


def _moments(kind: str, momentum: float, nesterov: bool = False) -> optax.GradientTransformation:
    """What ``optax.sgd`` / ``optax.adam`` apply before the learning rate."""
    if kind == "adam":
        return optax.scale_by_adam()
    return optax.trace(momentum, nesterov) if momentum else optax.identity()


def _trained_when(
    before_lr: optax.GradientTransformation, lr: optax.Schedule, on: Callable
) -> optax.GradientTransformation:
    """``before_lr`` (weight decay, momentum or Adam's moments) only at the optimizer steps where
    ``on(step)``: elsewhere a zero update and its state unchanged. The learning rate stays outside
    the mask, so it follows the run's step in every phase."""
    return optax.chain(
        optax.transforms.conditionally_mask(before_lr, on), optax.scale_by_learning_rate(lr)
    )


def make_optimizer(
    config: OptimizerConfig,
    total_steps: int,
    steps_per_epoch: int,
    trainable: Callable | None = None,
) -> optax.GradientTransformation:
    """``multi_transform`` over the two parameter groups (see `OptimizerConfig`).

    ``trainable(step) -> {'model': bool, 'quantizer': bool}`` (``step`` traced; None: both groups
    at every step): a group that is not trainable at an optimizer step gets a zero update, and
    its weight decay, momentum or Adam moments do not advance; its learning rate still follows
    the run's step (Bin Regularization's ``alternating_steps_br`` schedule).
    """
    group_schedules = schedules(config, total_steps, steps_per_epoch)
    lr, qlr = group_schedules["model"], group_schedules["quantizer"]

    def decay_mask(params):
        return jax.tree_util.tree_map_with_path(
            lambda p, v: _decays(p, v, config.decay_batchnorm, tuple(config.no_decay)), params
        )

    # PyTorch adds the L2 term to the gradient before momentum/Adam: add_decayed_weights first.
    wd = (
        optax.add_decayed_weights(config.weight_decay, mask=decay_mask)
        if config.weight_decay
        else optax.identity()
    )
    if config.optimizer == "sgd":
        model_tx = optax.chain(
            wd, optax.sgd(lr, momentum=config.momentum or None, nesterov=config.nesterov)
        )
    elif config.optimizer == "adam":
        model_tx = optax.chain(wd, optax.adam(lr))
    else:
        raise ConfigError(f"unknown optimizer {config.optimizer!r}; use sgd or adam")
    if config.quantizer_optimizer == "adam":
        quant_tx = optax.adam(qlr)
    elif config.quantizer_optimizer == "sgd":
        quant_tx = optax.sgd(qlr, momentum=config.momentum or None)
    else:
        raise ConfigError(
            f"unknown quantizer optimizer {config.quantizer_optimizer!r}; use adam or sgd"
        )
    if trainable is not None:
        model_tx = _trained_when(
            optax.chain(wd, _moments(config.optimizer, config.momentum, config.nesterov)),
            lr,
            lambda step: trainable(step)["model"],
        )
        quant_tx = _trained_when(
            _moments(config.quantizer_optimizer, config.momentum),
            qlr,
            lambda step: trainable(step)["quantizer"],
        )
    return optax.multi_transform(
        {"model": model_tx, "quantizer": quant_tx},
        lambda params: jax.tree_util.tree_map_with_path(_param_group, params),
    )

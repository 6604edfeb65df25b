"""Methods: each module defines its `Method` (quantizers, config section, hooks) and registers
it; `build_trainer` wires a config into a model and a `MultiPrecisionTrainer` through those
fields alone (the step itself is shared)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxquant.config import check_run_config, upgrade_legacy_keys
from jaxquant.data import ArrayDataset, StreamingDataset, make_preprocess
from jaxquant.errors import ConfigError
from jaxquant.layers import Lowering, QuantSpec
from jaxquant.methods import anyprecision, binreg, lsq, mbquant, vertical  # noqa: F401  (they register)
from jaxquant.methods.base import METHODS, Method, get_method, register, section, unregister
from jaxquant.models import CifarResNet, MobileNetV2, ResNet, SmallCNN
from jaxquant.quantizers import FP_BITS, max_exact_bits
from jaxquant.training import MultiPrecisionTrainer, OptimizerConfig, make_optimizer
from jaxquant.training.optim import schedules

__all__ = [
    "METHODS",
    "MODELS",
    "Method",
    "build_model",
    "build_trainer",
    "get_method",
    "optimizer_config",
    "register",
    "resolve_distillation",
    "resolve_dtype",
    "resolve_precision_mode",
    "section",
    "unregister",
    "whole_width",
]

MODELS = (
    "small_cnn",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet18",
    "resnet34",
    "mobilenet_v2",
)


def whole_width(config) -> int:
    """``config.width`` for the CIFAR ResNets, whose channel counts are ``16 * width``."""
    if float(config.width) != int(config.width) or int(config.width) < 1:
        raise ConfigError(
            f"{config.model} needs a whole width multiplier (1, 2, 5, ...), got {config.width}; "
            "fractional widths are for mobilenet_v2"
        )
    return int(config.width)


def build_model(config, num_classes: int, spec: QuantSpec):
    """The model named by ``config.model`` for ``config.bits`` with the quantizers ``spec``, or
    the method's own model (`Method.build_model`; MBQuant: the multi-branch variant)."""
    method = get_method(config.method)
    if method.build_model is not None:
        return method.build_model(config, num_classes, spec)
    bits = tuple(config.bits)
    common = dict(
        num_classes=num_classes,
        bits=bits,
        spec=spec,
        first_last_bits=config.first_last_bits or None,
    )
    if config.model == "small_cnn":
        return SmallCNN(widths=tuple(config.widths), stem_pool=config.stem_pool, **common)
    if config.model in ("resnet20", "resnet32", "resnet44", "resnet56"):
        return CifarResNet(
            depth=int(config.model[6:]),
            width=whole_width(config),
            preactivation=config.preactivation,
            quantize_shortcut=config.quantize_shortcut,
            **common,
        )
    if config.model in ("resnet18", "resnet34"):
        stages = (2, 2, 2, 2) if config.model == "resnet18" else (3, 4, 6, 3)
        return ResNet(stage_sizes=stages, quantize_shortcut=config.quantize_shortcut, **common)
    if config.model == "mobilenet_v2":
        return MobileNetV2(width=float(config.width), **common)
    raise ConfigError(f"unknown model {config.model!r}; choose one of {MODELS}")


def optimizer_config(config) -> OptimizerConfig:
    """``config.optimizer`` as an `OptimizerConfig`; ``weight_decay_by_bits``, pairs
    ``(bits, decay)``, sets the weight decay of a run at one bit-width (BR's fine-tuning: 1e-4,
    5e-5 and 2.5e-5 at 4, 3 and 2 bits)."""
    o = dict(config.optimizer)
    o["step_epochs"] = tuple(float(e) for e in o["step_epochs"])
    by_bits = o.pop("weight_decay_by_bits", ())
    if by_bits:
        table = {int(b): float(d) for b, d in by_bits}
        bits = tuple(int(b) for b in config.bits)
        if len(bits) != 1:
            raise ConfigError(
                f"optimizer.weight_decay_by_bits sets the decay of a run at one bit-width, but "
                f"bits is {bits} (its precisions share weights); set optimizer.weight_decay"
            )
        if bits[0] not in table:
            raise ConfigError(
                f"optimizer.weight_decay_by_bits has no entry for {bits[0]} bits "
                f"(it has {sorted(table)})"
            )
        o["weight_decay"] = table[bits[0]]
    return OptimizerConfig(**o)


def resolve_distillation(config) -> str:
    """``config.distillation``, with ``'auto'`` replaced by the method's own default
    (MBQuant: ``largest``; Any-Precision: ``recursive``; LSQ and Vertical Layering: ``none``)."""
    if config.distillation == "auto":
        return get_method(config.method).distillation
    return str(config.distillation)


def resolve_precision_mode(config, backend: str | None = None) -> str:
    """``config.precision_mode``, with ``'auto'`` replaced by the method's own default (MBQuant:
    ``unroll``, a static precision computes only its selected branches where vmap computes all
    G) or else by the backend's: ``unroll`` on CPU (the faster strategy there,
    ``benchmarks/step_speed.py``), ``vmap`` on GPU/TPU (one batched program; to be measured,
    ``benchmarks/accelerator.py``). ``backend`` defaults to ``jax.default_backend()``."""
    if config.precision_mode == "auto":
        method_default = get_method(config.method).precision_mode
        if method_default is not None:
            return method_default
        backend = backend or jax.default_backend()
        return "unroll" if backend == "cpu" else "vmap"
    return str(config.precision_mode)


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def resolve_dtype(config):
    """The compute dtype named by ``config.dtype``; a low-precision one only for bit-widths whose
    integer codes it holds exactly (`quantizers.max_exact_bits`: bfloat16 up to 8) and FP."""
    name = str(config.dtype)
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    dtype = DTYPES[name]
    limit = max_exact_bits(dtype)
    too_wide = [b for b in config.bits if limit < int(b) < FP_BITS]
    if too_wide:
        raise ConfigError(
            f"dtype {name} carries quantized values exactly only up to {limit} bits, "
            f"but bits has {too_wide}; use --config.dtype=float32"
        )
    return dtype


def build_trainer(
    config, dataset: ArrayDataset | StreamingDataset, steps_per_epoch: int
) -> MultiPrecisionTrainer:
    """Model, optimizer and on-device preprocessing for ``config`` on ``dataset``."""
    upgrade_legacy_keys(config)  # a config built in code with an older flat key
    check_run_config(config)
    if isinstance(dataset, StreamingDataset) and config.augment != "none":
        raise ConfigError(
            f"{dataset.name} is augmented on the host as it streams (RandomResizedCrop + flip); "
            f"set --config.augment=none (now {config.augment!r})"
        )
    method = get_method(config.method)
    spec = method.quant_spec(config)
    # A method with its own bit-width rule (MBQuant: 2..8) checks it; the others, their quantizers.
    bits = (
        method.validate_bits(config, spec) if method.validate_bits else spec.validate(config.bits)
    )
    if config.first_last_bits:
        spec.validate((config.first_last_bits,))
    model = build_model(config, dataset.num_classes, spec)
    total_steps = steps_per_epoch * config.epochs
    optimizer_settings = optimizer_config(config)
    init_from_batches = method.init_from_batches(config) if method.init_from_batches else None
    # Bin Regularization: method 'binreg', or binreg.lambda_ > 0 on a method it applies to.
    regularizer, regularizer_weight = binreg.make_regularizer(
        config, model, dataset.image_shape, steps_per_epoch
    )
    # BR's alternating_steps_br schedule: which loss and which parameter group, per phase.
    task_weight, trainable = binreg.make_phases(config, steps_per_epoch)
    optimizer = make_optimizer(optimizer_settings, total_steps, steps_per_epoch, trainable)
    return MultiPrecisionTrainer(
        model=model,
        bits=bits,
        optimizer=optimizer,
        distillation=resolve_distillation(config),
        precision_mode=resolve_precision_mode(config),
        loss_weights=tuple(config.loss_weights) or None,
        preprocess=make_preprocess(dataset.mean, dataset.std, config.augment, config.crop_padding),
        init_from_batches=init_from_batches,
        regularizer=regularizer,
        regularizer_weight=regularizer_weight,
        task_weight=task_weight,
        compute_dtype=resolve_dtype(config),
        lowering=Lowering(str(config.conv_batching), str(config.conv_weight_gradient)),
        learning_rates=schedules(optimizer_settings, total_steps, steps_per_epoch),
    )

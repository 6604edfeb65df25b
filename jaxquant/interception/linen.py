"""Any-precision training of an unchanged Flax Linen model, by Flax's method interception.

`quantize` wraps a user's model: while it runs, every ``nn.Conv`` (2-D), ``nn.ConvTranspose``
and ``nn.Dense`` a `Rule` matches computes with quantized weights and inputs at the precision
index, and every
``nn.BatchNorm`` keeps its statistics and affine per precision (`switchable_batch_norm`). The
variables stay in the user's modules, under the user's names: a conv's ``kernel`` and ``bias``,
plus its quantizers' ``weight_<name>``/``act_<name>``; a BatchNorm's ``scale``, ``bias``,
``mean`` and ``var`` with a leading precision axis. The precision reaches the layers through
the interceptor, not through the user's ``__call__``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxquant import quantizers as q
from jaxquant.errors import ConfigError
from jaxquant.interception.rules import Rule, default_rules, match
from jaxquant.layers import (
    PrecisionBatchNorm,
    check_precision,
    conv,
    on_grid,
    switchable_batch_norm,
)

TRAIN_KWARGS = ("train", "deterministic", "use_running_average", None)


def mode_kwargs(train_kwarg: str | None, train: bool) -> dict:
    """The keyword a user's ``__call__`` takes its mode by (`TRAIN_KWARGS`): ``train``, or
    ``deterministic``/``use_running_average`` (the negation); None: no keyword."""
    if train_kwarg is None:
        return {}
    return {train_kwarg: train if train_kwarg == "train" else not train}


def spatial_pairs(value, n: int) -> tuple:
    """A Flax layer's strides or dilation (None, an int, or one per spatial axis) as n ints."""
    if value is None:
        return (1,) * n
    return (int(value),) * n if isinstance(value, int) else tuple(int(v) for v in value)


def conv_padding(padding, n: int):
    """nn.Conv's padding as `precision_conv` takes it: ``SAME``/``VALID`` or ``n`` pairs."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ConfigError(
                f"jaxquant.quantize supports SAME/VALID/explicit padding, not {padding!r}"
            )
        return padding.upper()
    if isinstance(padding, int):
        return ((padding, padding),) * n
    return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


def _quantized_layer(module, rule: Rule, bits, x, index, kernel_shape, compute) -> jax.Array:
    """What every intercepted layer does: its ``kernel`` (the user's init and name), both
    operands quantized by the rule at the precision index, ``compute(x_hat, w_hat)``, its
    ``bias``; the result in ``x``'s dtype."""
    kernel = module.param("kernel", module.kernel_init, kernel_shape, module.param_dtype)
    x_hat = on_grid(module, rule.activation, "act", q.as_float32(x), index, bits)[0]
    w_hat = on_grid(module, rule.weight, "weight", kernel, index, bits)[0]
    y = compute(x_hat, w_hat.astype(x_hat.dtype))
    if module.use_bias:
        y = y + module.param("bias", module.bias_init, (module.features,), module.param_dtype)
    return y.astype(x.dtype)


def _quantized_conv(module: nn.Conv, rule: Rule, bits, x: jax.Array, index) -> jax.Array:
    if x.ndim != 4 or len(module.kernel_size) != 2:
        raise ConfigError(f"{'/'.join(module.path)}: jaxquant.quantize handles 2-D NHWC convs")
    if any(d != 1 for d in spatial_pairs(module.input_dilation, 2)) or any(
        d != 1 for d in spatial_pairs(module.kernel_dilation, 2)
    ):
        raise ConfigError(f"{'/'.join(module.path)}: dilated convs are not supported yet")
    groups = module.feature_group_count
    shape = tuple(module.kernel_size) + (x.shape[-1] // groups, module.features)
    strides, padding = spatial_pairs(module.strides, 2), conv_padding(module.padding, 2)
    return _quantized_layer(
        module, rule, bits, x, index, shape,
        lambda x_hat, w_hat: conv.precision_conv(x_hat, w_hat, strides, padding, groups=groups),
    )  # fmt: skip


def _quantized_conv_transpose(module, rule: Rule, bits, x: jax.Array, index) -> jax.Array:
    """``lax.conv_transpose`` of the quantized input and kernel, as ``nn.ConvTranspose``
    computes it (``transpose_kernel`` and ``kernel_dilation`` included; no mask, no circular
    padding)."""
    if module.mask is not None or module.padding == "CIRCULAR":
        raise ConfigError(
            f"{'/'.join(module.path)}: masked or circular ConvTranspose is not supported"
        )
    n, in_features = len(module.kernel_size), x.shape[-1]
    io = (
        (module.features, in_features)
        if module.transpose_kernel
        else (in_features, module.features)
    )

    def compute(x_hat, w_hat):
        return jax.lax.conv_transpose(
            x_hat,
            w_hat,
            spatial_pairs(module.strides, n),
            conv_padding(module.padding, n),
            rhs_dilation=spatial_pairs(module.kernel_dilation, n),
            transpose_kernel=module.transpose_kernel,
        )

    return _quantized_layer(module, rule, bits, x, index, tuple(module.kernel_size) + io, compute)


def _quantized_dense(module: nn.Dense, rule: Rule, bits, x: jax.Array, index) -> jax.Array:
    shape = (x.shape[-1], module.features)
    return _quantized_layer(module, rule, bits, x, index, shape, jnp.matmul)


def _batch_norm(module: nn.BatchNorm, args, kwargs, precision, num_precisions: int):
    if module.axis not in (-1,) or module.axis_index_groups is not None:
        raise ConfigError(
            f"{'/'.join(module.path)}: only BatchNorm over the last axis is supported"
        )
    x = args[0]
    call_value = kwargs.get("use_running_average", args[1] if len(args) > 1 else None)
    use_ra = nn.merge_param("use_running_average", module.use_running_average, call_value)
    settings = PrecisionBatchNorm(
        num_precisions=num_precisions,
        momentum=module.momentum,
        epsilon=module.epsilon,
        use_scale=module.use_scale,
        use_bias=module.use_bias,
        axis_name=module.axis_name,
        parent=None,
    )
    return switchable_batch_norm(module, settings, x, precision, not use_ra)


@dataclasses.dataclass(frozen=True)
class PrecisionModel:
    """A user's Linen model run at a precision index into ``bits`` (`quantize` builds it).

    ``init(rngs, x, precision=0, train=False)`` and ``apply(variables, x, precision=0,
    train=False, mutable=...)`` call the user's model with its own mode keyword
    (``train_kwarg``: ``train``, ``deterministic`` (= not train), ``use_running_average``
    (= not train) or None: not passed), as `MultiPrecisionTrainer` expects of a model.
    A concrete ``precision`` outside ``0..len(bits)-1`` raises `PrecisionError`, and so do
    ``variables`` whose per-precision arrays were built for other bits (at the layer that
    reads them).
    """

    model: nn.Module
    bits: tuple[int, ...]
    rules: tuple[Rule, ...] = default_rules()
    train_kwarg: str | None = "train"

    def __post_init__(self):
        object.__setattr__(self, "bits", tuple(int(b) for b in self.bits))
        object.__setattr__(self, "rules", tuple(self.rules))
        if self.train_kwarg not in TRAIN_KWARGS:
            raise ConfigError(
                f"train_kwarg must be one of {TRAIN_KWARGS}, got {self.train_kwarg!r}"
            )
        for rule in self.rules:
            rule.layer_bits(self.bits)  # a bit-width a rule's quantizer cannot do fails here

    def _interceptor(self, precision, matched: set | None):
        def intercept(next_fun, args, kwargs, context):
            module = context.module
            if context.method_name != "__call__":
                return next_fun(*args, **kwargs)
            if isinstance(module, nn.BatchNorm):
                return _batch_norm(module, args, kwargs, precision, len(self.bits))
            if not isinstance(module, (nn.Conv, nn.ConvTranspose, nn.Dense)):
                return next_fun(*args, **kwargs)
            rule = match(self.rules, "/".join(module.path))
            if rule is None:
                return next_fun(*args, **kwargs)
            if matched is not None:
                matched.add(rule)
            if isinstance(rule.weight, q.FullPrecision) and isinstance(
                rule.activation, q.FullPrecision
            ):
                return next_fun(*args, **kwargs)
            bits = rule.layer_bits(self.bits)
            index = precision if len(bits) > 1 else 0
            layer = (
                _quantized_conv
                if isinstance(module, nn.Conv)
                else _quantized_conv_transpose
                if isinstance(module, nn.ConvTranspose)
                else _quantized_dense
            )
            return layer(module, rule, bits, args[0], index)

        return nn.intercept_methods(intercept)

    def init(self, rngs, x, precision=0, train: bool = False, **kwargs):
        check_precision(precision, len(self.bits), f"bits {self.bits}")
        matched: set = set()
        with self._interceptor(precision, matched):
            variables = self.model.init(rngs, x, **mode_kwargs(self.train_kwarg, train), **kwargs)
        unmatched = [rule.pattern for rule in self.rules if rule not in matched]
        if unmatched:
            raise ConfigError(
                f"rule(s) {unmatched} matched no nn.Conv/nn.Dense of {type(self.model).__name__}; "
                "patterns are searched in module paths such as 'Conv_0' or 'block1/Dense_0'"
            )
        return variables

    def apply(self, variables, x, precision=0, train: bool = False, **kwargs):
        check_precision(precision, len(self.bits), f"bits {self.bits}")
        with self._interceptor(precision, None):
            return self.model.apply(variables, x, **mode_kwargs(self.train_kwarg, train), **kwargs)


def quantize(
    model: nn.Module,
    rules: Sequence[Rule] | None = None,
    bits: Sequence[int] = (2, 4, 8, 32),
    train_kwarg: str | None = "train",
) -> PrecisionModel:
    """``model`` (an unchanged Linen or NNX module) run at every bit-width of ``bits``: its
    matched convs and dense layers quantized by the `Rule` list (default: every one, LSQ weights
    and activations), its BatchNorms per precision. Train it with `MultiPrecisionTrainer`.
    An NNX model goes to `quantize_nnx` (``train_kwarg`` does not apply: NNX models switch
    mode with ``.train()``/``.eval()``)."""
    from flax import nnx

    if isinstance(model, nnx.Module):
        from jaxquant.interception.nnx import quantize_nnx

        return quantize_nnx(model, rules, bits)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"jaxquant.quantize takes a flax.linen or flax.nnx Module, got {type(model).__name__}"
        )
    rules = default_rules() if rules is None else tuple(rules)
    return PrecisionModel(model, tuple(bits), rules, train_kwarg)


__all__ = ["PrecisionModel", "TRAIN_KWARGS", "quantize"]

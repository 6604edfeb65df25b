"""Any-precision training of an unchanged Flax NNX model, by module surgery.

`quantize_nnx` copies the user's model and replaces, in the copy, every ``nnx.Conv`` (2-D) and
``nnx.Linear`` a `Rule` matches with a layer that quantizes its weights and inputs at the
precision index, and every ``nnx.BatchNorm`` with one whose statistics and affine have a
leading precision axis. The replacements keep the user's ``kernel``/``bias`` and names. The
precision reaches them through a context variable (`precision_scope`), not through the
user's ``__call__``. `NNXPrecisionModel` runs the copy functionally (``nnx.split``/``merge``),
so `MultiPrecisionTrainer` trains all precisions in one jitted step.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxquant import quantizers as q
from jaxquant.errors import ConfigError
from jaxquant.interception.linen import conv_padding, spatial_pairs
from jaxquant.interception.rules import Rule, default_rules, match
from jaxquant.layers import bits_at, check_precision, check_precision_rows, conv, normalize
from jaxquant.layers.batchnorm import batch_norm_train

_PRECISION = contextvars.ContextVar("jaxquant_precision", default=0)


@contextlib.contextmanager
def precision_scope(precision):
    """Run the quantized NNX layers called inside at precision index ``precision``."""
    token = _PRECISION.set(precision)
    try:
        yield
    finally:
        _PRECISION.reset(token)


class _Quantized(nnx.Module):
    """The shared part of a quantized conv or linear layer: its rule, bits and quantizers."""

    def _setup(self, layer, rule: Rule, bits: tuple[int, ...]):
        self.kernel, self.bias = layer.kernel, layer.bias
        self.rule, self.bits = rule, bits
        # Named as the Linen layers name them (weight_step, act_step, ...): the optimizer puts
        # weight_*/act_* parameters in the quantizer group.
        for name, value in rule.weight.init(layer.kernel[...], bits).items():
            setattr(self, f"weight_{name}", nnx.Param(value))

    def _operands(self, x):
        weight, act = self.rule.weight, self.rule.activation
        if act.param_names and not hasattr(self, f"act_{act.param_names[0]}"):
            for name, value in act.init(q.as_float32(x), self.bits).items():
                setattr(self, f"act_{name}", nnx.Param(value))  # the first input (`init`)
        index = _PRECISION.get() if len(self.bits) > 1 else 0
        bit_width = bits_at(self.bits, index)
        w_params = weight.at(
            {n: getattr(self, f"weight_{n}")[...] for n in weight.param_names}, index
        )
        a_params = act.at({n: getattr(self, f"act_{n}")[...] for n in act.param_names}, index)
        x_hat = act.quantize(q.as_float32(x), a_params, bit_width)
        return x_hat, weight.quantize(self.kernel[...], w_params, bit_width).astype(x_hat.dtype)


class QuantizedConv(_Quantized):
    def __init__(self, layer: nnx.Conv, rule: Rule, bits: tuple[int, ...]):
        if len(layer.kernel_size) != 2:
            raise ConfigError("jaxquant.quantize handles 2-D NHWC nnx.Conv layers")
        self._setup(layer, rule, bits)
        self.strides = spatial_pairs(layer.strides, 2)
        self.padding = conv_padding(layer.padding, 2)
        self.groups = layer.feature_group_count

    def __call__(self, x):
        x_hat, w_hat = self._operands(x)
        y = conv.precision_conv(x_hat, w_hat, self.strides, self.padding, groups=self.groups)
        return (y if self.bias is None else y + self.bias[...]).astype(x.dtype)


class QuantizedLinear(_Quantized):
    def __init__(self, layer: nnx.Linear, rule: Rule, bits: tuple[int, ...]):
        self._setup(layer, rule, bits)

    def __call__(self, x):
        x_hat, w_hat = self._operands(x)
        y = jnp.matmul(x_hat, w_hat)
        return (y if self.bias is None else y + self.bias[...]).astype(x.dtype)


class PrecisionBatchNormNNX(nnx.Module):
    """An ``nnx.BatchNorm`` (last axis) with ``scale``, ``bias``, ``mean``, ``var`` of shape
    ``(P, C)``: row ``precision`` used, and in training only that row's statistics move."""

    def __init__(self, layer: nnx.BatchNorm, num_precisions: int):
        if layer.axis != -1 or layer.axis_name is not None:
            raise ConfigError("jaxquant.quantize handles nnx.BatchNorm over the last axis only")
        tile = lambda v: jnp.tile(jnp.asarray(v, jnp.float32)[None], (num_precisions, 1))
        self.scale = nnx.Param(tile(layer.scale[...])) if layer.use_scale else None
        self.bias = nnx.Param(tile(layer.bias[...])) if layer.use_bias else None
        self.mean = nnx.BatchStat(tile(layer.mean[...]))
        self.var = nnx.BatchStat(tile(layer.var[...]))
        self.momentum, self.epsilon = layer.momentum, layer.epsilon
        self.use_running_average = layer.use_running_average

    def __call__(self, x, use_running_average: bool | None = None):
        p = _PRECISION.get()
        ones = jnp.ones(x.shape[-1], jnp.float32)
        scale = ones if self.scale is None else self.scale[...][p]
        bias = 0.0 * ones if self.bias is None else self.bias[...][p]
        use_ra = self.use_running_average if use_running_average is None else use_running_average
        if use_ra:
            return normalize(x, self.mean[...][p], self.var[...][p], scale, bias, self.epsilon)
        y, mean, var = batch_norm_train(x, scale, bias, jnp.float32(self.epsilon))
        m = self.momentum
        self.mean[...] = self.mean[...].at[p].set(m * self.mean[...][p] + (1 - m) * mean)
        self.var[...] = self.var[...].at[p].set(m * self.var[...][p] + (1 - m) * var)
        return y


def replace_module(model: nnx.Module, path: tuple, new) -> None:
    """Put ``new`` at ``path`` (attribute names and list indices, as `nnx.iter_graph` gives)."""
    parent = model
    for key in path[:-1]:
        parent = parent[key] if isinstance(key, int) else getattr(parent, key)
    if isinstance(path[-1], int):
        parent[path[-1]] = new
    else:
        setattr(parent, path[-1], new)


class NNXPrecisionModel:
    """A surgically quantized NNX model run functionally: ``init(rngs, x, precision, train)``
    returns ``{'params', 'batch_stats'}`` as pure dicts and ``apply(variables, x, precision,
    train, mutable)`` runs it, the interface `MultiPrecisionTrainer` expects of a model (both
    may run inside ``jax.jit``). ``module`` is the quantized copy, before `init`."""

    def __init__(self, module: nnx.Module, bits: tuple[int, ...]):
        self.module, self.bits = module, bits
        self._rest = nnx.split(module, nnx.Param, nnx.BatchStat, ...)[3]  # RNG state and such

    def init(self, rngs, x, precision=0, train: bool = False):
        """A copy whose input quantizers' parameters are created from ``x`` (one forward in
        training mode whose BatchNorm updates are then undone); its variables as pure dicts."""
        check_precision(precision, len(self.bits), f"bits {self.bits}")
        module = nnx.clone(self.module)
        stats = nnx.state(module, nnx.BatchStat)
        saved = nnx.to_pure_dict(stats)
        module.train()
        with precision_scope(int(precision)):
            module(jnp.asarray(x))
        if saved:
            nnx.replace_by_pure_dict(stats, saved)
            nnx.update(module, stats)
        graphdef, params, stats, _ = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
        shapes = lambda state: jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state
        )
        self.graphdef, self._templates = graphdef, (shapes(params), shapes(stats))
        return {"params": nnx.to_pure_dict(params), "batch_stats": nnx.to_pure_dict(stats)}

    def apply(self, variables, x, precision=0, train: bool = False, mutable=False):
        if not hasattr(self, "graphdef"):
            raise ConfigError("call init before apply: it creates the input quantizers' parameters")
        check_precision(precision, len(self.bits), f"bits {self.bits}")
        states = []
        for template, pure, collection in zip(
            self._templates,
            (variables["params"], variables.get("batch_stats", {})),
            ("params", "batch_stats"),
        ):
            if pure:
                self._check_shapes(template, pure, collection)
            state = jax.tree_util.tree_map(lambda leaf: leaf, template)
            if pure:
                nnx.replace_by_pure_dict(state, pure)
            states.append(state)
        model = nnx.merge(self.graphdef, *states, self._rest)
        model.train() if train else model.eval()
        with precision_scope(precision):
            y = model(x)
        if mutable:
            return y, {"batch_stats": nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))}
        return y

    def _check_shapes(self, template, pure, collection: str) -> None:
        """`PrecisionError` for a variable of ``pure`` whose shape is not the template's (one
        built for other bits: ``nnx.replace_by_pure_dict`` would take it as it is)."""
        flat = lambda tree: {  # noqa: E731
            jax.tree_util.keystr(path): jnp.shape(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
        }
        got = flat(pure)
        for key, want in flat(nnx.to_pure_dict(template)).items():
            if key in got:
                check_precision_rows(
                    f"NNX model (bits {self.bits})",
                    f"{collection}{key}",
                    got[key],
                    want,
                    len(self.bits),
                )


def quantize_nnx(
    model: nnx.Module, rules: Sequence[Rule] | None = None, bits: Sequence[int] = (2, 4, 8, 32)
) -> NNXPrecisionModel:
    """A copy of the NNX ``model`` with its matched ``nnx.Conv``/``nnx.Linear`` quantized by the
    rules and its ``nnx.BatchNorm`` per precision (the user's model is left unchanged)."""
    bits = tuple(int(b) for b in bits)
    rules = default_rules() if rules is None else tuple(rules)
    for rule in rules:
        rule.layer_bits(bits)
    model = nnx.clone(model)
    matched = set()
    layers = [(p, m) for p, m in nnx.iter_graph(model) if isinstance(m, nnx.Module) and p]
    for path, layer in layers:
        name = "/".join(str(k) for k in path)
        if isinstance(layer, nnx.BatchNorm):
            replace_module(model, path, PrecisionBatchNormNNX(layer, len(bits)))
            continue
        if not isinstance(layer, (nnx.Conv, nnx.Linear)):
            continue
        rule = match(rules, name)
        if rule is None:
            continue
        matched.add(rule)
        if not (
            isinstance(rule.weight, q.FullPrecision)
            and isinstance(rule.activation, q.FullPrecision)
        ):
            kind = QuantizedConv if isinstance(layer, nnx.Conv) else QuantizedLinear
            replace_module(model, path, kind(layer, rule, rule.layer_bits(bits)))
    unmatched = [rule.pattern for rule in rules if rule not in matched]
    if unmatched:
        raise ConfigError(
            f"rule(s) {unmatched} matched no nnx.Conv/nnx.Linear of {type(model).__name__}; "
            "patterns are searched in attribute paths such as 'conv1' or 'layers/0'"
        )
    return NNXPrecisionModel(model, bits)

"""An NNX model seen by PTQ as a Linen one: in a copy, every ``nnx.Conv``, ``nnx.Linear`` and
``nnx.BatchNorm`` calls the equivalent Linen layer (named by its NNX path), so PTQ's method
interception finds, captures and quantizes them; the variables are a Linen tree built from
the NNX state."""

from __future__ import annotations

import flax.linen as nn
from flax import nnx

from jaxquant.errors import ConfigError
from jaxquant.interception.nnx import replace_module


def _name(path) -> str:
    return "_".join(str(k) for k in path)


class _Conv(nnx.Module):
    def __init__(self, layer: nnx.Conv, name: str):
        self.name, self.features = name, layer.out_features
        self.kernel_size, self.strides = tuple(layer.kernel_size), layer.strides
        self.padding, self.groups = layer.padding, layer.feature_group_count
        self.use_bias = layer.use_bias

    def __call__(self, x):
        conv = nn.Conv(
            self.features,
            self.kernel_size,
            self.strides,
            self.padding,
            feature_group_count=self.groups,
            use_bias=self.use_bias,
            name=self.name,
        )
        return conv(x)


class _Linear(nnx.Module):
    def __init__(self, layer: nnx.Linear, name: str):
        self.name, self.features, self.use_bias = name, layer.out_features, layer.use_bias

    def __call__(self, x):
        return nn.Dense(self.features, use_bias=self.use_bias, name=self.name)(x)


class _BatchNorm(nnx.Module):
    def __init__(self, layer: nnx.BatchNorm, name: str):
        if layer.axis != -1:
            raise ConfigError("PTQ of NNX models handles BatchNorm over the last axis only")
        self.name, self.momentum, self.epsilon = name, layer.momentum, layer.epsilon
        self.use_bias, self.use_scale = layer.use_bias, layer.use_scale
        self.use_running_average = layer.use_running_average

    def __call__(self, x, use_running_average: bool | None = None):
        use_ra = self.use_running_average if use_running_average is None else use_running_average
        bn = nn.BatchNorm(
            use_ra,
            momentum=self.momentum,
            epsilon=self.epsilon,
            use_bias=self.use_bias,
            use_scale=self.use_scale,
            name=self.name,
        )
        return bn(x)


def _bridged(model: nnx.Module, train: bool) -> tuple[nnx.Module, dict]:
    """A copy of ``model`` in train or eval mode whose layers call Linen ones, and the Linen
    variables of those layers."""
    model = nnx.clone(model)
    model.train() if train else model.eval()
    params, stats = {}, {}
    found = [(p, m) for p, m in nnx.iter_graph(model) if p and isinstance(m, nnx.Module)]
    for path, layer in found:
        name = _name(path)
        if isinstance(layer, nnx.Conv):
            new = _Conv(layer, name)
            params[name] = {"kernel": layer.kernel[...]}
        elif isinstance(layer, nnx.Linear):
            new = _Linear(layer, name)
            params[name] = {"kernel": layer.kernel[...]}
        elif isinstance(layer, nnx.BatchNorm):
            new = _BatchNorm(layer, name)
            params[name] = {"scale": layer.scale[...], "bias": layer.bias[...]}
            stats[name] = {"mean": layer.mean[...], "var": layer.var[...]}
        else:
            continue
        if isinstance(layer, (nnx.Conv, nnx.Linear)) and layer.use_bias:
            params[name]["bias"] = layer.bias[...]
        replace_module(model, path, new)
    return model, {"params": params, "batch_stats": stats} if stats else {"params": params}


class NNXAsLinen(nn.Module):
    """Runs the bridged copies of an NNX model (train and eval) inside a Linen module."""

    train_model: nnx.Module
    eval_model: nnx.Module

    @nn.compact
    def __call__(self, x, train: bool = False):
        return (self.train_model if train else self.eval_model)(x)


def nnx_as_linen(model: nnx.Module) -> tuple[NNXAsLinen, dict]:
    """``(linen module, variables)``: ``model`` as a Linen module whose conv, dense and BatchNorm
    layers are Linen ones named by their NNX paths (``layers/0`` -> ``layers_0``)."""
    train_model, variables = _bridged(model, True)
    eval_model, _ = _bridged(model, False)
    return NNXAsLinen(train_model, eval_model), variables

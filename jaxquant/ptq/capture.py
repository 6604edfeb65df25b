"""The layers of a model seen through a Flax interceptor: which layers, how their kernels map
to ``[M_out, N]`` matrices, im2col rows of their inputs, and a forward that quantizes their
inputs.

Convs are ungrouped or depthwise (``feature_group_count == C_in == C_out``, as MobileNetV2's):
a depthwise kernel ``(kh, kw, 1, C)`` is the matrix ``[C, kh*kw]``, its im2col rows still cover
every input channel (``[K, C*kh*kw]``, (C, kh, kw) order), and `fit_rows` splits them into each
channel's own patch ``[K, C, kh*kw]``, so ``Y[:, m] = X[:, m] W[m]^T``."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.errors import ConfigError
from jaxquant.layers import QuantConv, QuantDense, visit_layers

LAYER_TYPES = (QuantConv, QuantDense, nn.Conv, nn.Dense)


@dataclasses.dataclass(frozen=True)
class Layer:
    """A conv or dense layer found in a model's forward pass, in call order."""

    name: str  # module path joined by '/', e.g. 'stage0_block0_conv0'
    path: tuple[str, ...]
    kind: str  # 'conv' | 'dense'
    kernel_shape: tuple[int, ...]  # HWIO (conv) or (in, out) (dense)
    strides: tuple[int, ...] = ()
    padding: tuple[tuple[int, int], ...] = ()  # explicit, resolved for the input's size
    output_spatial: tuple[int, ...] = ()
    has_bias: bool = False
    input_shape: tuple[int, ...] = ()  # of one example
    groups: int = 1  # feature_group_count: 1, or the channel count (depthwise)

    @property
    def features(self) -> int:
        return self.kernel_shape[-1]

    @property
    def depthwise(self) -> bool:
        """A depthwise conv: each output channel reads only its own input channel."""
        return self.kind == "conv" and self.groups > 1

    @property
    def fan_in(self) -> int:
        return int(np.prod(self.kernel_shape[:-1]))


def _resolve_padding(padding, in_spatial, kernel_spatial, strides) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ConfigError(f"PTQ supports SAME, VALID or explicit conv padding, not {padding!r}")
        return tuple(jax.lax.padtype_to_pads(in_spatial, kernel_spatial, strides, padding.upper()))
    if isinstance(padding, int):
        return ((padding, padding),) * len(in_spatial)
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _describe(module: nn.Module, x: jax.Array, y: jax.Array) -> Layer:
    name, path = "/".join(module.path), tuple(module.path)
    if isinstance(module, (QuantDense, nn.Dense)):
        return Layer(
            name,
            path,
            "dense",
            (x.shape[-1], module.features),
            has_bias=bool(module.use_bias),
            input_shape=tuple(x.shape[1:]),
        )
    groups = int(module.feature_group_count)
    if groups != 1 and not groups == x.shape[-1] == module.features:
        raise ConfigError(
            f"layer {name}: PTQ supports ungrouped and depthwise convs only, not "
            f"feature_group_count={groups} with {x.shape[-1]} input and {module.features} "
            "output channels"
        )
    if isinstance(module, nn.Conv) and (
        module.kernel_dilation not in (None, 1, (1, 1))
        or module.input_dilation not in (None, 1, (1, 1))
    ):
        raise ConfigError(f"layer {name}: PTQ supports undilated convs only")
    kernel_size = (
        tuple(module.kernel_size)
        if not isinstance(module.kernel_size, int)
        else (module.kernel_size,) * 2
    )
    strides = module.strides if module.strides is not None else 1
    strides = (strides,) * len(kernel_size) if isinstance(strides, int) else tuple(strides)
    padding = _resolve_padding(module.padding, x.shape[1:-1], kernel_size, strides)
    return Layer(
        name,
        path,
        "conv",
        kernel_size + (x.shape[-1] // groups, module.features),
        strides,
        padding,
        tuple(y.shape[1:-1]),
        bool(module.use_bias),
        tuple(x.shape[1:]),
        groups,
    )


def layer_matrix(kernel: jax.Array, layer: Layer) -> jax.Array:
    """The kernel as ``W [M_out, N]``: conv HWIO -> rows in (C, kh, kw) order (depthwise:
    ``[C, kh*kw]``); dense (in, out) -> W^T."""
    if layer.kind == "dense":
        return jnp.asarray(kernel).T
    return jnp.transpose(jnp.asarray(kernel), (3, 2, 0, 1)).reshape(layer.features, -1)


def matrix_kernel(matrix: jax.Array, layer: Layer) -> jax.Array:
    """The inverse of `layer_matrix`."""
    if layer.kind == "dense":
        return jnp.asarray(matrix).T
    kh, kw, c, m = layer.kernel_shape
    return jnp.transpose(jnp.asarray(matrix).reshape(m, c, kh, kw), (2, 3, 1, 0))


def im2col_rows(x: jax.Array, layer: Layer, rows: jax.Array) -> jax.Array:
    """im2col of ``x`` (NHWC) at output positions ``rows`` ``[K, 3]`` = (example, i, j):
    ``[K, C*kh*kw]`` over all ``C`` input channels in (C, kh, kw) order, zero-padded as the conv
    pads (dense: ``x[rows[:, 0]]``)."""
    if layer.kind == "dense":
        return x[rows[:, 0]]
    (pt, pb), (pl, pr) = layer.padding
    x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    kh, kw, c_group, _ = layer.kernel_shape
    c = c_group * layer.groups
    sh, sw = layer.strides

    def patch(n, i, j):
        window = jax.lax.dynamic_slice(x, (n, i * sh, j * sw, 0), (1, kh, kw, c))[0]
        return jnp.transpose(window, (2, 0, 1)).reshape(-1)

    return jax.vmap(patch)(rows[:, 0], rows[:, 1], rows[:, 2])


def fit_rows(x: jax.Array, layer: Layer) -> jax.Array:
    """The `im2col_rows` of ``layer`` as its weight fit takes them: as they are (``[K, N]``), or
    for a depthwise conv each output channel's own patch, ``[K, C, kh*kw]`` (the input of
    `jaxquant.methods.bitsplit.ofwa_rr_dw`)."""
    if not layer.depthwise:
        return x
    return jnp.reshape(x, (x.shape[0], layer.features, layer.fan_in))


def output_rows(y: jax.Array, layer: Layer, rows: jax.Array) -> jax.Array:
    if layer.kind == "dense":
        return y[rows[:, 0]]
    return y[rows[:, 0], rows[:, 1], rows[:, 2]]


def layer_params(params, layer: Layer) -> dict:
    """The parameter dict (``kernel``, maybe ``bias``) of ``layer`` in a model's params."""
    node = params
    for part in layer.path:
        node = node[part]
    return node


def get_kernel(params, layer: Layer) -> jax.Array:
    return layer_params(params, layer)["kernel"]


def set_kernels(variables: dict, kernels: dict[str, jax.Array], layers: Sequence[Layer]) -> dict:
    """A copy of ``variables`` with the kernels of the named layers replaced."""
    params = _thaw(variables["params"])  # fresh nested dicts; the arrays are shared
    for layer in layers:
        if layer.name in kernels:
            node = layer_params(params, layer)
            node["kernel"] = jnp.asarray(kernels[layer.name], node["kernel"].dtype)
    return {**variables, "params": params}


def _thaw(tree):
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: _thaw(v) for k, v in tree.items()}
    return tree


@dataclasses.dataclass
class Network:
    """A Flax model and how to call it: ``apply(variables, x, train)`` returns logits, or
    ``(logits, updated batch_stats)`` when ``train``. `Network.from_model` builds it for jaxquant
    models (``model(x, precision, train=...)``); any Linen model fits with its own ``apply``."""

    apply: Callable[[dict, jax.Array, bool], Any]
    preprocess: Callable | None = None  # (images, train, key) -> model input, as the trainer's

    @classmethod
    def from_model(
        cls, model: nn.Module, precision: int = 0, preprocess: Callable | None = None
    ) -> "Network":
        def apply(variables, x, train):
            if train:
                logits, updates = model.apply(
                    variables, x, precision, train=True, mutable=["batch_stats"]
                )
                return logits, updates.get("batch_stats", variables.get("batch_stats", {}))
            return model.apply(variables, x, precision, train=False)

        return cls(apply, preprocess)

    def inputs(self, images, train: bool, key=None):
        return (
            images if self.preprocess is None else self.preprocess(jnp.asarray(images), train, key)
        )


def find_layers(network: Network, variables: dict, x: jax.Array) -> list[Layer]:
    """The conv and dense layers of a forward pass on model inputs ``x``, in call order."""
    layers: list[Layer] = []

    def visit(module, args, y):
        layer = _describe(module, args[0], y)
        if any(seen.name == layer.name for seen in layers):
            raise ConfigError(
                f"layer {layer.name} is called twice in one forward; PTQ needs each layer once"
            )
        layers.append(layer)

    visit_layers(lambda: network.apply(variables, x, False), LAYER_TYPES, visit)
    if not layers:
        raise ConfigError(
            "the model has no QuantConv/QuantDense/nn.Conv/nn.Dense layer to quantize"
        )
    return layers


def fake_quantize(x: jax.Array, step, lo, hi) -> jax.Array:
    """``s * clip(round(x / s), lo, hi)`` (round half to even, as torch.round)."""
    return step * jnp.clip(jnp.round(x / step), lo, hi)


def activation_range(bits: int, signed: bool) -> tuple[int, int]:
    """``[0, 2^A - 1]`` unsigned, ``[-(2^(A-1) - 1), 2^(A-1) - 1]`` signed (symmetric, as the
    code)."""
    if signed:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


@dataclasses.dataclass(frozen=True)
class ActivationQuant:
    """The input quantizer of one layer: ``step * clip(round(x / step), lo, hi)``."""

    step: float
    bits: int
    signed: bool

    @property
    def bounds(self) -> tuple[int, int]:
        return activation_range(self.bits, self.signed)


def act_arrays(layers: Sequence[Layer], act: dict[str, ActivationQuant]) -> dict:
    """Per layer ``(enabled, step, lo, hi)`` arrays, for one compiled forward whatever is
    enabled."""
    out = {}
    for layer in layers:
        a = act.get(layer.name)
        lo, hi = a.bounds if a else (0, 1)
        out[layer.name] = (
            jnp.asarray(a is not None),
            jnp.asarray(a.step if a else 1.0, jnp.float32),
            jnp.asarray(lo, jnp.float32),
            jnp.asarray(hi, jnp.float32),
        )
    return out


def quantizing(
    layers: Sequence[Layer],
    act_arrays: dict,
    captured: dict | None = None,
    rows: dict | None = None,
    samples: dict | None = None,
):
    """The interceptor: quantize each layer's input as ``act_arrays`` says; if ``captured`` is a
    dict, record per layer the raw input's im2col ``rows``, the output rows and raw ``samples``."""
    by_name = {layer.name: layer for layer in layers}

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name != "__call__" or not isinstance(context.module, LAYER_TYPES):
            return next_fun(*args, **kwargs)
        name = "/".join(context.module.path)
        raw = args[0]
        enabled, step, lo, hi = act_arrays[name]
        x = jnp.where(enabled, fake_quantize(raw, step, lo, hi), raw)
        y = next_fun(x, *args[1:], **kwargs)
        if captured is not None:
            layer = by_name[name]
            captured[name] = {
                "x": im2col_rows(raw, layer, rows[name]),
                "y": output_rows(y, layer, rows[name]),
                "samples": raw.reshape(-1)[samples[name]],
            }
        return y

    return interceptor


class Quantizer:
    """The jitted forwards a PTQ run needs, compiled once per model: `capture` (rows and samples
    of every layer), `predict` and `bn_update`, each with per-layer input quantization."""

    def __init__(self, network: Network, layers: Sequence[Layer]):
        self.network, self.layers = network, list(layers)

        def capture(variables, x, act_arrays, rows, samples, train):
            captured: dict = {}
            with nn.intercept_methods(quantizing(self.layers, act_arrays, captured, rows, samples)):
                network.apply(variables, x, train)
            return captured

        def predict(variables, x, act_arrays):
            with nn.intercept_methods(quantizing(self.layers, act_arrays)):
                return network.apply(variables, x, False)

        def bn_update(variables, x, act_arrays):
            with nn.intercept_methods(quantizing(self.layers, act_arrays)):
                return network.apply(variables, x, True)[1]

        def bn_scan(variables, batches, act_arrays):
            def body(stats, x):
                return bn_update({**variables, "batch_stats": stats}, x, act_arrays), None

            return jax.lax.scan(body, variables["batch_stats"], batches)[0]

        self.capture = jax.jit(capture, static_argnames="train")
        self.predict = jax.jit(predict)
        self.bn_update = jax.jit(bn_update)
        self._bn_scan = jax.jit(bn_scan)
        self._bn_scan_compiled: dict = {}

    def compile_bn_scan(self, variables, batches: jax.Array, act_arrays: dict):
        """The compiled `lax.scan` of `bn_update` over stacked ``batches`` ``[T, B, ...]``
        (compiled once per shape, without running it)."""
        key = (batches.shape, batches.dtype)
        if key not in self._bn_scan_compiled:
            self._bn_scan_compiled[key] = self._bn_scan.lower(
                variables, batches, act_arrays
            ).compile()
        return self._bn_scan_compiled[key]

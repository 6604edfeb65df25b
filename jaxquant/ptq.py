"""Post-training quantization of a trained full-precision Flax model, layer by layer: BitSplit
(`jaxquant.methods.bitsplit`), BitSplit with error-compensated activation quantization, and
per-channel round-to-nearest as the baseline.

Works on any Linen model built from `QuantConv`/`QuantDense` (or plain ``nn.Conv``/``nn.Dense``):
the layers are found, their inputs captured and quantized by a Flax method interceptor, so the
model's code is not touched and the result is the same model with quantized kernels plus one
activation step per layer.

The pipeline, as the official code's fast script (digest B7):

1. **Calibration**: ``calibration_images`` training images (640) *with* training augmentation;
   one full-precision forward (eval-mode BN) records, for every layer, im2col rows of its input X
   and the matching rows of its pre-BN output Y at ``calibration_rows`` (15,000) random positions.
   The im2col feature order is (C, kh, kw), the order of `layer_matrix`, so ``Y = X W^T``.
2. **Weights**: the first layer and the classifier at ``first_last_weight_bits`` (8), the others at
   W bits. BitSplit: `fwa` -> `split` -> `ofwa` -> `ofwa_rr` (100 epochs) against the rows; the
   classifier by `ofwa` only (the code's choice; ``classifier_reconstruction`` to change it).
   Round-to-nearest: ``max|w| / (2^(M-1) - 1)`` per output channel.
3. **BatchNorm re-estimation** (``bn_batches`` of ``bn_batch_size`` augmented training images,
   201 x 64 as the code) with the quantized weights.
4. **Activations**: one unsigned (signed if the layer sees negative inputs) per-tensor step per
   layer input by the MSE fixed point ``s = <x, q> / <q, q>`` on up to ``activation_samples``
   random values (the positive ones for unsigned), from a forward with quantized weights and FP
   activations. The image input of the first layer stays FP; the classifier's input uses
   ``last_activation_bits`` (8). Residual sums stay FP (only layer inputs are quantized).
5. **BatchNorm re-estimation** again, with activations quantized.

**Error-compensated activation quantization** (ECAQ, the paper's Algorithm 1, absent from the
released code; *our reading*): layers are quantized in call order. For layer l the calibration
batch runs through the network whose layers before l are already quantized (weights and input
activations; BN on batch statistics, standing in for the re-estimation that follows); the
activation step of l is set on that input X~, and the bit-split weights are fitted to
``min || Y_l - Q(X~_l) W_q ||`` with Y_l the full-precision target, so the weights absorb the
error of everything before them. One BN re-estimation ends it.

The round-to-nearest baseline goes through steps 3-5 too, so the methods differ only in weights.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any, Callable, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxquant.errors import BitWidthError, CheckpointError, ConfigError
from jaxquant.layers import QuantConv, QuantDense
from jaxquant.methods import bitsplit

LAYER_TYPES = (QuantConv, QuantDense, nn.Conv, nn.Dense)
METHODS = ("rtn", "bitsplit", "bitsplit_ecaq")
METHOD_LABELS = {"fp": "FP (no quantization)", "rtn": "round-to-nearest, per channel",
                 "bitsplit": "BitSplit", "bitsplit_ecaq": "BitSplit + ECAQ (our reading)"}
FP_BITS = 32


def ptq_config() -> ml_collections.ConfigDict:
    """Every key `jaxquant ptq` understands, with the official code's values as defaults."""
    c = ml_collections.ConfigDict()
    c.settings = ("W4A8", "W3A8", "W4A4", "W2A8", "W8A8")  # W<weight bits>A<activation bits>; A32 = FP activations
    c.methods = METHODS              # rtn | bitsplit | bitsplit_ecaq
    c.calibration_images = 640       # training images, with training augmentation (the code's one batch of 640)
    c.calibration_rows = 15000       # random im2col rows per layer for the weight objective
    c.activation_samples = 200000    # random input values per layer for the activation step
    c.epochs = 100                   # ofwa_rr epochs (the code: 100, no convergence test)
    c.ofwa_epochs = 50               # weight-only ofwa epochs before ofwa_rr
    c.block = 64                     # coordinates per block of the (exactly sequential) blocked sweep
    c.first_last_weight_bits = 8     # the first layer and the classifier (the paper and code: 8)
    c.last_activation_bits = 8       # the classifier's input (the code: 8)
    c.quantize_image_input = False   # the first layer's input (the image): FP in the code
    c.classifier_reconstruction = False  # True: ofwa_rr for the classifier too (the code: ofwa only)
    c.bn_batches = 201               # BatchNorm re-estimation batches (the code: 201 x 64, twice)
    c.bn_batch_size = 64
    c.eval_batch_size = 500
    c.seed = 0
    return c


def validate_config(config) -> list[tuple[int, int]]:
    """Check a PTQ config (keys, settings, methods, sizes); return the parsed settings."""
    known = set(ptq_config().keys())
    unknown = sorted(set(config.keys()) - known)
    if unknown:
        raise ConfigError(f"unknown PTQ config key(s) {unknown}; known keys: {', '.join(sorted(known))}")
    if not config.settings:
        raise ConfigError("config.settings is empty; give at least one, e.g. ('W4A8',)")
    for method in config.methods:
        if method not in METHODS:
            raise ConfigError(f"unknown PTQ method {method!r}; choose from {METHODS}")
    for key in ("calibration_images", "calibration_rows", "activation_samples", "block", "bn_batch_size",
                "eval_batch_size"):
        if int(config[key]) < 1:
            raise ConfigError(f"config.{key} must be at least 1, got {config[key]}")
    for key in ("epochs", "ofwa_epochs", "bn_batches"):
        if int(config[key]) < 0:
            raise ConfigError(f"config.{key} must be 0 or more, got {config[key]}")
    bitsplit.check_bits(int(config.first_last_weight_bits))
    if not 2 <= int(config.last_activation_bits) <= 16:
        raise BitWidthError(f"config.last_activation_bits must be 2..16, got {config.last_activation_bits}")
    return [parse_setting(s) for s in config.settings]


def parse_setting(setting: str) -> tuple[int, int]:
    """``'W4A8'`` -> ``(4, 8)``; ``A32`` means full-precision activations."""
    text = str(setting).strip().upper()
    try:
        w_text, a_text = text[1:].split("A")
        if not text.startswith("W"):
            raise ValueError
        weight_bits, act_bits = int(w_text), int(a_text)
    except ValueError:
        raise ConfigError(f"setting {setting!r} is not of the form W<bits>A<bits>, e.g. W4A8") from None
    bitsplit.check_bits(weight_bits)
    if not (2 <= act_bits <= 16 or act_bits == FP_BITS):
        raise BitWidthError(f"setting {setting!r}: activation bits must be 2..16, or 32 for full precision")
    return weight_bits, act_bits


# ----------------------------------------------------------------------------------------------
# Layers of a model and how their kernels map to [M_out, N] matrices.

@dataclasses.dataclass(frozen=True)
class Layer:
    """A conv or dense layer found in a model's forward pass, in call order."""
    name: str                                  # module path joined by '/', e.g. 'stage0_block0_conv0'
    path: tuple[str, ...]
    kind: str                                  # 'conv' | 'dense'
    kernel_shape: tuple[int, ...]              # HWIO (conv) or (in, out) (dense)
    strides: tuple[int, ...] = ()
    padding: tuple[tuple[int, int], ...] = ()  # explicit, resolved for the input's size
    output_spatial: tuple[int, ...] = ()
    has_bias: bool = False
    input_shape: tuple[int, ...] = ()          # of one example

    @property
    def features(self) -> int:
        return self.kernel_shape[-1]

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
        return Layer(name, path, "dense", (x.shape[-1], module.features), has_bias=bool(module.use_bias),
                     input_shape=tuple(x.shape[1:]))
    if isinstance(module, QuantConv) and module.feature_group_count != 1:
        raise ConfigError(f"layer {name}: PTQ supports ungrouped convs only (the code's depthwise ofwa_rr_dw "
                          "is not implemented)")
    if isinstance(module, nn.Conv):
        if module.feature_group_count != 1 or module.kernel_dilation not in (None, 1, (1, 1)) \
                or module.input_dilation not in (None, 1, (1, 1)):
            raise ConfigError(f"layer {name}: PTQ supports ungrouped, undilated convs only")
    kernel_size = tuple(module.kernel_size) if not isinstance(module.kernel_size, int) else (module.kernel_size,) * 2
    strides = module.strides if module.strides is not None else 1
    strides = (strides,) * len(kernel_size) if isinstance(strides, int) else tuple(strides)
    padding = _resolve_padding(module.padding, x.shape[1:-1], kernel_size, strides)
    return Layer(name, path, "conv", kernel_size + (x.shape[-1], module.features), strides, padding,
                 tuple(y.shape[1:-1]), bool(module.use_bias), tuple(x.shape[1:]))


def layer_matrix(kernel: jax.Array, layer: Layer) -> jax.Array:
    """The kernel as ``W [M_out, N]``: conv HWIO -> rows in (C, kh, kw) order; dense (in, out) -> W^T."""
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
    ``[K, C*kh*kw]`` in (C, kh, kw) order, zero-padded as the conv pads (dense: ``x[rows[:, 0]]``)."""
    if layer.kind == "dense":
        return x[rows[:, 0]]
    (pt, pb), (pl, pr) = layer.padding
    x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    kh, kw, c, _ = layer.kernel_shape
    sh, sw = layer.strides

    def patch(n, i, j):
        window = jax.lax.dynamic_slice(x, (n, i * sh, j * sw, 0), (1, kh, kw, c))[0]
        return jnp.transpose(window, (2, 0, 1)).reshape(-1)

    return jax.vmap(patch)(rows[:, 0], rows[:, 1], rows[:, 2])


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


# ----------------------------------------------------------------------------------------------
# The network seen through an interceptor: find layers, quantize their inputs, capture rows.

@dataclasses.dataclass
class Network:
    """A Flax model and how to call it: ``apply(variables, x, train)`` returns logits, or
    ``(logits, updated batch_stats)`` when ``train``. `Network.from_model` builds it for jaxquant
    models (``model(x, precision, train=...)``); any Linen model fits with its own ``apply``."""
    apply: Callable[[dict, jax.Array, bool], Any]
    preprocess: Callable | None = None            # (images, train, key) -> model input, as the trainer's

    @classmethod
    def from_model(cls, model: nn.Module, precision: int = 0, preprocess: Callable | None = None) -> "Network":
        def apply(variables, x, train):
            if train:
                logits, updates = model.apply(variables, x, precision, train=True, mutable=["batch_stats"])
                return logits, updates.get("batch_stats", variables.get("batch_stats", {}))
            return model.apply(variables, x, precision, train=False)
        return cls(apply, preprocess)

    def inputs(self, images, train: bool, key=None):
        return images if self.preprocess is None else self.preprocess(jnp.asarray(images), train, key)


def find_layers(network: Network, variables: dict, x: jax.Array) -> list[Layer]:
    """The conv and dense layers of a forward pass on model inputs ``x``, in call order."""
    layers: list[Layer] = []

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name != "__call__" or not isinstance(context.module, LAYER_TYPES):
            return next_fun(*args, **kwargs)
        y = next_fun(*args, **kwargs)
        layer = _describe(context.module, args[0], y)
        if any(seen.name == layer.name for seen in layers):
            raise ConfigError(f"layer {layer.name} is called twice in one forward; PTQ needs each layer once")
        layers.append(layer)
        return y

    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda v, x: network.apply(v, x, False), variables, x)
    if not layers:
        raise ConfigError("the model has no QuantConv/QuantDense/nn.Conv/nn.Dense layer to quantize")
    return layers


def fake_quantize(x: jax.Array, step, lo, hi) -> jax.Array:
    """``s * clip(round(x / s), lo, hi)`` (round half to even, as torch.round)."""
    return step * jnp.clip(jnp.round(x / step), lo, hi)


def activation_range(bits: int, signed: bool) -> tuple[int, int]:
    """``[0, 2^A - 1]`` unsigned, ``[-(2^(A-1) - 1), 2^(A-1) - 1]`` signed (symmetric, as the code)."""
    if signed:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


@dataclasses.dataclass(frozen=True)
class ActivationQuant:
    """The input quantizer of one layer: ``step * clip(round(x / step), lo, hi)``."""
    step: float
    bits: int
    signed: bool

    @property
    def bounds(self) -> tuple[int, int]:
        return activation_range(self.bits, self.signed)


def _act_arrays(layers: Sequence[Layer], act: dict[str, ActivationQuant]) -> dict:
    """Per layer ``(enabled, step, lo, hi)`` arrays, for one compiled forward whatever is enabled."""
    out = {}
    for layer in layers:
        a = act.get(layer.name)
        lo, hi = a.bounds if a else (0, 1)
        out[layer.name] = (jnp.asarray(a is not None), jnp.asarray(a.step if a else 1.0, jnp.float32),
                           jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32))
    return out


def _quantizing(layers: Sequence[Layer], act_arrays: dict, captured: dict | None = None,
                rows: dict | None = None, samples: dict | None = None):
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
            captured[name] = {"x": im2col_rows(raw, layer, rows[name]), "y": output_rows(y, layer, rows[name]),
                              "samples": raw.reshape(-1)[samples[name]]}
        return y

    return interceptor


class Quantizer:
    """The jitted forwards a PTQ run needs, compiled once per model: `capture` (rows and samples
    of every layer), `predict` and `bn_update`, each with per-layer input quantization."""

    def __init__(self, network: Network, layers: Sequence[Layer]):
        self.network, self.layers = network, list(layers)

        def capture(variables, x, act_arrays, rows, samples, train):
            captured: dict = {}
            with nn.intercept_methods(_quantizing(self.layers, act_arrays, captured, rows, samples)):
                network.apply(variables, x, train)
            return captured

        def predict(variables, x, act_arrays):
            with nn.intercept_methods(_quantizing(self.layers, act_arrays)):
                return network.apply(variables, x, False)

        def bn_update(variables, x, act_arrays):
            with nn.intercept_methods(_quantizing(self.layers, act_arrays)):
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
            self._bn_scan_compiled[key] = self._bn_scan.lower(variables, batches, act_arrays).compile()
        return self._bn_scan_compiled[key]


# ----------------------------------------------------------------------------------------------
# Calibration data, activation steps, BatchNorm re-estimation.

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


def sample_rows(rng: np.random.Generator, layers: Sequence[Layer], batch: int, rows: int,
                samples: int) -> tuple[dict, dict]:
    """Random output positions ``[K, 3]`` (example, i, j) per layer, at most ``rows`` without
    replacement (dense: every example), and ``samples`` random flat indices into each input."""
    row_indices, sample_indices = {}, {}
    for layer in layers:
        if layer.kind == "dense":
            row_indices[layer.name] = np.stack([np.arange(batch), np.zeros(batch, int), np.zeros(batch, int)], 1)
        else:
            h, w = layer.output_spatial
            total = batch * h * w
            flat = rng.choice(total, size=min(rows, total), replace=False)
            row_indices[layer.name] = np.stack(np.unravel_index(flat, (batch, h, w)), 1)
        size = batch * int(np.prod(layer.input_shape))
        sample_indices[layer.name] = rng.choice(size, size=min(samples, size), replace=False)
    to_jnp = lambda d: {k: jnp.asarray(v, jnp.int32) for k, v in d.items()}  # noqa: E731
    return to_jnp(row_indices), to_jnp(sample_indices)


BN_STACK_BYTES = 2 ** 30
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
    def from_arrays(cls, network: Network, images: np.ndarray, config, seed: int = 0) -> "CalibrationData":
        """Draw from in-memory training ``images`` with the network's training augmentation."""
        return cls.from_examples(network, len(images), lambda idx, step: images[idx], config, seed)

    @classmethod
    def from_dataset(cls, network: Network, dataset, config, seed: int = 0) -> "CalibrationData":
        """Draw from a `jaxquant.data` dataset's training split, in memory or streamed (a streamed
        one arrives augmented from the host; the network's preprocess then only normalises)."""
        return cls.from_examples(network, dataset.train_size,
                                 lambda idx, step: dataset.train_examples(idx, seed, step)[0], config, seed)

    @classmethod
    def from_examples(cls, network: Network, size: int, examples: Callable[[np.ndarray, int], np.ndarray],
                      config, seed: int = 0) -> "CalibrationData":
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
        stack = jnp.stack(list(bn_batches())) if 0 < config.bn_batches and stack_bytes <= BN_STACK_BYTES else None
        return cls(calibration, bn_batches, stack)


def reestimate_batchnorm(quantizer: Quantizer, variables: dict, data: CalibrationData, act_arrays: dict) -> dict:
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


# ----------------------------------------------------------------------------------------------
# The methods.

@dataclasses.dataclass
class QuantizedModel:
    """A PTQ result: the variables (quantized kernels, re-estimated BN), each layer's input
    quantizer, the codes and scales of every weight, and how long calibration took."""
    method: str
    weight_bits: int
    act_bits: int
    variables: dict
    activations: dict[str, ActivationQuant]
    weights: dict[str, dict]            # layer -> {'bits', 'codes' [M, N] ints, 'alpha' [M]}
    seconds: float
    reconstruction: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    """layer -> (error at the start of ofwa_rr, error at its end), BitSplit only."""


def classifier_name(layers: Sequence[Layer]) -> str | None:
    """The classifier: the last dense layer (None if the model has none)."""
    return next((layer.name for layer in reversed(layers) if layer.kind == "dense"), None)


def reconstructs(layer: Layer, layers: Sequence[Layer], method: str, config) -> bool:
    """Whether ``method`` fits ``layer`` by `ofwa_rr` (BitSplit: every layer but the classifier,
    which the code fits by `ofwa` only, unless ``classifier_reconstruction``)."""
    return method != "rtn" and (layer.name != classifier_name(layers) or config.classifier_reconstruction)


def weight_placement(layers: Sequence[Layer], weight_bits: int, config) -> dict[str, int]:
    """Bits per layer: the first layer and the last dense (the classifier) at
    ``first_last_weight_bits``, every other layer at ``weight_bits``."""
    bits = {layer.name: weight_bits for layer in layers}
    bits[layers[0].name] = config.first_last_weight_bits
    classifier = classifier_name(layers)
    if classifier:
        bits[classifier] = config.first_last_weight_bits
    return bits


def activation_placement(layers: Sequence[Layer], act_bits: int, config) -> dict[str, int]:
    """Bits per quantized layer input: every layer's input at ``act_bits`` except the first
    layer's (the image, unless ``quantize_image_input``) and the classifier's
    (``last_activation_bits``). ``act_bits = 32``: none."""
    if act_bits >= FP_BITS:
        return {}
    bits = {layer.name: act_bits for layer in layers}
    if not config.quantize_image_input:
        bits.pop(layers[0].name)
    classifier = classifier_name(layers)
    if classifier in bits:
        bits[classifier] = config.last_activation_bits
    return bits


def _fit_weight(method: str, w: jax.Array, bits: int, rows: tuple | None, config) -> tuple[dict, tuple | None]:
    if method == "rtn":
        codes, alpha = bitsplit.round_to_nearest(w, bits)
        return {"codes": codes, "alpha": alpha}, None
    result = bitsplit.quantize_weight(w, bits, *(rows or (None, None)), epochs=config.epochs,
                                      ofwa_epochs=config.ofwa_epochs, block=config.block)
    errors = None if result["errors"] is None else (float(result["errors"][0]), float(result["errors"][-1]))
    return {"codes": result["codes"], "alpha": result["alpha"]}, errors


def _bias_free_target(y: jax.Array, variables: dict, layer: Layer) -> jax.Array:
    return y - layer_params(variables["params"], layer)["bias"] if layer.has_bias else y


def _input_quantizer(samples: jax.Array, bits: int) -> ActivationQuant:
    values = np.asarray(samples)
    signed = bool(values.min() < 0)
    return ActivationQuant(mse_step(values, bits, signed), bits, signed)


def quantize_model(quantizer: Quantizer, variables: dict, data: CalibrationData, fp_rows: dict, method: str,
                   weight_bits: int, act_bits: int, config, rows: dict, samples: dict,
                   progress: Callable[[str], None] | None = None) -> QuantizedModel:
    """Quantize the FP ``variables`` with ``method`` at ``W weight_bits A act_bits``.
    ``fp_rows`` is the FP network's `Quantizer.capture` on the calibration batch."""
    if method not in METHODS:
        raise ConfigError(f"unknown PTQ method {method!r}; choose one of {METHODS}")
    start = time.perf_counter()
    layers = quantizer.layers
    w_bits = weight_placement(layers, weight_bits, config)
    a_bits = activation_placement(layers, act_bits, config)
    ecaq = method == "bitsplit_ecaq"
    kernels, weights, reconstruction, act = {}, {}, {}, {}
    say = progress or (lambda _: None)
    if ecaq:
        # The FP targets from the same training-mode forward the quantized inputs come from, so
        # the two differ only by the quantization before the layer.
        fp_rows = quantizer.capture(variables, data.calibration, _act_arrays(layers, {}), rows, samples, train=True)
    current = variables  # ECAQ: the network with every layer before this one quantized
    for layer in layers:
        x_rows = fp_rows[layer.name]["x"]
        if ecaq and (layer.name in a_bits or layer is not layers[0]):
            captured = quantizer.capture(current, data.calibration, _act_arrays(layers, act), rows, samples,
                                         train=True)[layer.name]
            x_rows = captured["x"]
            if layer.name in a_bits:
                act[layer.name] = _input_quantizer(captured["samples"], a_bits[layer.name])
                lo, hi = act[layer.name].bounds
                x_rows = fake_quantize(x_rows, act[layer.name].step, lo, hi)
        target = _bias_free_target(fp_rows[layer.name]["y"], variables, layer)
        w = layer_matrix(get_kernel(variables["params"], layer), layer)
        fitted, errors = _fit_weight(method, w, w_bits[layer.name],
                                     (x_rows, target) if reconstructs(layer, layers, method, config) else None, config)
        weights[layer.name] = {"bits": w_bits[layer.name], **fitted}
        kernels[layer.name] = matrix_kernel(fitted["alpha"][:, None] * fitted["codes"], layer)
        if ecaq:
            current = set_kernels(current, {layer.name: kernels[layer.name]}, layers)
        if errors:
            reconstruction[layer.name] = errors
        say(layer.name)
    if ecaq:
        quantized = reestimate_batchnorm(quantizer, current, data, _act_arrays(layers, act))
    else:
        quantized = set_kernels(variables, kernels, layers)
        quantized = reestimate_batchnorm(quantizer, quantized, data, _act_arrays(layers, {}))
        if a_bits:
            captured = quantizer.capture(quantized, data.calibration, _act_arrays(layers, {}), rows, samples,
                                         train=False)
            act = {name: _input_quantizer(captured[name]["samples"], bits) for name, bits in a_bits.items()}
            quantized = reestimate_batchnorm(quantizer, quantized, data, _act_arrays(layers, act))
    jax.block_until_ready(quantized)
    weights = {name: {"bits": int(v["bits"]), "codes": np.asarray(v["codes"]).astype(np.int32),
                      "alpha": np.asarray(v["alpha"], np.float32)} for name, v in weights.items()}
    return QuantizedModel(method, weight_bits, act_bits, quantized, act, weights,
                          time.perf_counter() - start, reconstruction)


def accuracy(quantizer: Quantizer, variables: dict, act: dict[str, ActivationQuant], images: np.ndarray,
             labels: np.ndarray, batch_size: int = 500) -> float:
    """Test accuracy of the network with ``variables`` and input quantizers ``act``."""
    from jaxquant.data import array_batches
    return batches_accuracy(quantizer, variables, act, array_batches(images, labels, batch_size))


def batches_accuracy(quantizer: Quantizer, variables: dict, act: dict[str, ActivationQuant],
                     batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
    """`accuracy` over ``(images, labels)`` batches (a dataset's ``test_batches``)."""
    from jaxquant.training import batches_accuracy as predict_accuracy
    arrays = _act_arrays(quantizer.layers, act)
    return predict_accuracy(lambda images: quantizer.predict(variables, quantizer.network.inputs(images, False), arrays),
                            batches)


# ----------------------------------------------------------------------------------------------
# Saving and loading a quantized model.

def save_quantized(model: QuantizedModel, path: str | pathlib.Path, extra: dict | None = None) -> pathlib.Path:
    """Write one msgpack file: the variables, the input quantizers and the integer weight codes
    with their per-channel scales (what a deployment needs), plus metadata."""
    from flax import serialization
    payload = {
        "variables": jax.tree_util.tree_map(np.asarray, model.variables),
        "activations": {name: {"step": a.step, "bits": a.bits, "signed": a.signed}
                        for name, a in model.activations.items()},
        "weights": model.weights,
        "meta": json.dumps({"method": model.method, "weight_bits": model.weight_bits, "act_bits": model.act_bits,
                            "seconds": model.seconds, **(extra or {})}),
    }
    path = pathlib.Path(path)
    path.write_bytes(serialization.msgpack_serialize(payload))
    return path


def load_quantized(path: str | pathlib.Path) -> tuple[dict, dict[str, ActivationQuant], dict]:
    """``(variables, input quantizers, metadata)`` of a `save_quantized` file."""
    from flax import serialization
    path = pathlib.Path(path)
    try:
        payload = serialization.msgpack_restore(path.read_bytes())
        activations = {name: ActivationQuant(float(a["step"]), int(a["bits"]), bool(a["signed"]))
                       for name, a in payload["activations"].items()}
        return payload["variables"], activations, json.loads(payload["meta"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a readable jaxquant PTQ file ({type(e).__name__}); "
                              "rerun `jaxquant ptq` to write it") from e


# ----------------------------------------------------------------------------------------------
# A whole PTQ run on a trained FP workdir: every setting x method, a table, a plot, the files.

def format_ptq_table(accuracy_table: dict[str, dict[str, float]], settings: Sequence[str], title: str = "",
                     digits: int = 2, scale: float = 100.0) -> str:
    """Markdown: one row per method, one column per setting (``fp`` fills every column)."""
    lines = ([f"**{title}**", ""] if title else []) + ["| method | " + " | ".join(settings) + " |",
                                                      "|---|" + "---:|" * len(settings)]
    for method, row in accuracy_table.items():
        cells = [f"{scale * row[s]:.{digits}f}" if s in row else "" for s in settings]
        lines.append(f"| {METHOD_LABELS.get(method, method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def draw_ptq_bars(ax, accuracy_table: dict[str, dict[str, float]], settings: Sequence[str]) -> None:
    """Grouped bars on ``ax``: test accuracy per setting, one bar per method, FP as a dashed line."""
    methods = [m for m in accuracy_table if m != "fp"]
    width = 0.8 / max(len(methods), 1)
    for k, method in enumerate(methods):
        xs = [i + (k - (len(methods) - 1) / 2) * width for i in range(len(settings))]
        ax.bar(xs, [100 * accuracy_table[method].get(s, np.nan) for s in settings], width,
               label=METHOD_LABELS.get(method, method))
    if "fp" in accuracy_table:
        fp = 100 * next(iter(accuracy_table["fp"].values()))
        ax.axhline(fp, color="black", linestyle="--", linewidth=1, label=f"FP ({fp:.2f})")
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels(settings)
    ax.set_ylabel("test accuracy (%)")
    values = [100 * v for row in accuracy_table.values() for v in row.values()]
    ax.set_ylim(max(0.0, min(values) - 5), min(100.0, max(values) + 3))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")


def plot_ptq(accuracy_table: dict[str, dict[str, float]], settings: Sequence[str], path: str | pathlib.Path,
             title: str = "") -> pathlib.Path:
    """`draw_ptq_bars` in a figure of its own, saved to ``path``."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6.5, 3.8), dpi=120)
    ax = fig.subplots()
    draw_ptq_bars(ax, accuracy_table, settings)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path)
    return path


def fp_network(workdir: str | pathlib.Path, dataset=None):
    """``(run config, dataset, Network, variables)`` of a trained run's full-precision model
    (its bit-width 32; train one with ``--config.bits=(32,)``)."""
    from jaxquant.runs import load_run
    run_config, dataset, trainer, state, _ = load_run(workdir, dataset)
    bits = tuple(int(b) for b in run_config.bits)
    if FP_BITS not in bits:
        raise ConfigError(f"{workdir} has no full-precision model (bits {bits}); PTQ starts from an FP run: "
                          "jaxquant train --config.method=lsq --config.bits=\"(32,)\" ...")
    network = Network.from_model(trainer.model, bits.index(FP_BITS), trainer.preprocess)
    return run_config, dataset, network, {"params": state.params, "batch_stats": state.batch_stats}


def warm_up(quantizer: Quantizer, variables: dict, data: CalibrationData, rows: dict, samples: dict,
            settings: Iterable[tuple[int, int]], config) -> float:
    """Compile, before anything is timed, every function the methods will call: the capture and
    BN forwards and, per layer and weight bit-width, `fwa`, `ofwa` and `ofwa_rr`. Returns seconds."""
    start = time.perf_counter()
    layers = quantizer.layers
    no_act = _act_arrays(layers, {})
    jax.block_until_ready(quantizer.bn_update(variables, data.calibration[:2], no_act))
    if data.bn_stack is not None:
        quantizer.compile_bn_scan(variables, data.bn_stack, no_act)
    if "bitsplit_ecaq" in config.methods:
        jax.block_until_ready(quantizer.capture(variables, data.calibration, no_act, rows, samples, train=True))
    if any(m != "rtn" for m in config.methods):  # every BitSplit method compiles the same functions
        for weight_bits, _ in settings:
            placement = weight_placement(layers, weight_bits, config)
            for layer in layers:
                bits = placement[layer.name]
                zeros = jnp.zeros((layer.features, layer.fan_in), jnp.float32)
                codes, alpha = bitsplit.fwa(zeros, bits)
                bitsplit.ofwa(zeros, bitsplit.split(codes, bits), alpha, epochs=config.ofwa_epochs)
                if reconstructs(layer, layers, "bitsplit", config):
                    bitsplit.compiled_ofwa_rr(bits - 1, layer.features, layer.fan_in, config.epochs, config.block)
    return time.perf_counter() - start


def run(workdir: str | pathlib.Path, config, out: str | pathlib.Path | None = None, dataset=None,
        progress: bool = True, save_models: bool = True) -> dict:
    """PTQ of the FP model in ``workdir`` for every ``config.settings`` x ``config.methods``:
    prints one line per result, writes the quantized models, ``ptq_results.json``,
    ``ptq_table.md`` and ``ptq_accuracy.png`` to ``out`` (default ``workdir/ptq``), and returns
    ``{'accuracy': {method: {setting: acc}}, 'seconds': {...}, ...}``."""
    settings = [str(s).upper() for s in config.settings]
    parsed = dict(zip(settings, validate_config(config)))
    run_config, dataset, network, variables = fp_network(workdir, dataset)
    out = pathlib.Path(out or pathlib.Path(workdir) / "ptq")
    out.mkdir(parents=True, exist_ok=True)
    data = CalibrationData.from_dataset(network, dataset, config, config.seed)
    layers = find_layers(network, variables, data.calibration[:2])
    quantizer = Quantizer(network, layers)
    rows, samples = sample_rows(np.random.default_rng(config.seed), layers, int(data.calibration.shape[0]),
                                config.calibration_rows, config.activation_samples)
    print(f"jaxquant ptq: {workdir} ({run_config.model} on {dataset.name}), {len(layers)} layers, "
          f"{int(data.calibration.shape[0])} calibration images, {config.calibration_rows} rows per layer; "
          f"writing to {out}", flush=True)
    fp_rows = quantizer.capture(variables, data.calibration, _act_arrays(layers, {}), rows, samples, train=False)
    compile_seconds = warm_up(quantizer, variables, data, rows, samples, parsed.values(), config)
    print(f"  compiled the forwards and {len(bitsplit._COMPILED)} ofwa_rr layer shapes in {compile_seconds:.1f} s "
          "(kept out of the calibration times)", flush=True)
    def test_accuracy(variables, act):
        return batches_accuracy(quantizer, variables, act, dataset.test_batches(config.eval_batch_size))

    fp_accuracy = test_accuracy(variables, {})
    table = {"fp": {s: fp_accuracy for s in settings}}
    seconds: dict[str, dict[str, float]] = {}
    reconstruction: dict[str, dict[str, dict]] = {}
    print(f"  FP: {100 * fp_accuracy:.2f}%", flush=True)
    for setting in settings:
        weight_bits, act_bits = parsed[setting]
        for method in config.methods:
            bar = None
            if progress:
                from tqdm.auto import tqdm
                bar = tqdm(total=len(layers), desc=f"{setting} {method}", leave=False, unit="layer")
            model = quantize_model(quantizer, variables, data, fp_rows, method, weight_bits, act_bits, config,
                                   rows, samples, progress=(lambda _: bar.update()) if bar else None)
            if bar:
                bar.close()
            acc = test_accuracy(model.variables, model.activations)
            table.setdefault(method, {})[setting] = acc
            seconds.setdefault(method, {})[setting] = round(model.seconds, 1)
            if model.reconstruction:
                reconstruction.setdefault(method, {})[setting] = {k: list(v) for k, v in model.reconstruction.items()}
            print(f"  {setting} {METHOD_LABELS[method]}: {100 * acc:.2f}% (calibration {model.seconds:.1f} s)",
                  flush=True)
            if save_models:
                save_quantized(model, out / f"{method}_{setting}.msgpack", {"test_accuracy": acc, "fp_run": str(workdir)})
    title = f"{dataset.name}: test accuracy (%) after PTQ of {run_config.model} ({dataset.test_size} test images)"
    text = (format_ptq_table(table, settings, title) + "\n\n"
            + format_ptq_table({m: v for m, v in seconds.items()}, settings, "calibration seconds", 1, 1.0))
    print("\n" + text)
    (out / "ptq_table.md").write_text(text + "\n")
    payload = {"fp_run": str(workdir), "model": run_config.model, "dataset": dataset.name,
               "test_examples": int(dataset.test_size), "settings": settings, "accuracy": table,
               "seconds": seconds, "compile_seconds": round(compile_seconds, 1), "reconstruction_error": reconstruction, "config": config.to_dict()}
    (out / "ptq_results.json").write_text(json.dumps(payload, indent=2) + "\n")
    png = plot_ptq(table, settings, out / "ptq_accuracy.png", title=f"{dataset.name}, {run_config.model}: PTQ")
    print(f"\nsaved {out / 'ptq_results.json'}, {out / 'ptq_table.md'} and {png}")
    return payload

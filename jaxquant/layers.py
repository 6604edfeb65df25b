"""Flax Linen layers whose precision is data.

A layer is built for a static tuple of bit-widths ``bits`` (``P = len(bits)``) and called with a
precision **index** ``precision`` (a traced int) into that tuple. State that differs per
precision (LSQ step sizes, BatchNorm statistics and affine) carries a leading axis of size P and
is gathered with the index, so ``jax.vmap`` over ``precision`` runs every sub-network at once.

Swap ``nn.Conv`` for `QuantConv` and ``nn.Dense`` for `QuantDense` in your own model, and
``nn.BatchNorm`` for `PrecisionBatchNorm` (switchable BN). `MultiBranchConv` is a conv of G
branches of fixed 2-bit weights selected per precision by a `BranchSelection` (the tables are the
method's: `jaxquant.methods.mbquant`).

**Dtypes: the compute dtype follows the input.** Parameters (and BatchNorm statistics) are
float32 and initialised from ``x.astype(float32)``, so a bfloat16 init equals a float32 one.
A layer returns its input's dtype; quantizer arithmetic and BatchNorm run in float32; convs and
matmuls take operands in the input dtype and accumulate in float32.

**Exact grid in bfloat16.** A fake-quantized tensor is ``x_hat = n * s`` (n integer-valued,
s the grid's scale: `quantizers.grid_integers`). bfloat16 (8 significant bits) would move
``n * s`` off its grid, so with bfloat16 inputs a quantized layer computes
``y = conv(n_x, n_w) * (s_x * s_w)``: the integer operands are exact in bfloat16 for
``|n| <= 256``, the conv accumulates in float32 and the scales (``s_w`` per output channel with
``per_channel``) are applied after, in float32. Gradients are those of ``conv(x_hat, w_hat)``:
``n = x_hat / stop_gradient(s)`` snapped to the integer, times ``stop_gradient(s_x s_w)``, so step
sizes get their gradients only through the quantizers. Full precision (``bits >= 32``): s = 1,
nothing snapped. A bfloat16 layer with a quantized bit-width above 8 raises `ConfigError`
(use float32 for 9..16 bits).

**Conv batching** (``conv_batching``, `resolve_conv_batching`): ``auto`` (default) is ``unroll``
on CPU and ``native`` on GPU/TPU; ``weight_gradient`` ``auto`` is ``im2col`` on CPU and ``xla``
elsewhere (`resolve_weight_gradient`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import custom_batching

from jaxquant import quantizers as q
from jaxquant.errors import BitWidthError, ConfigError

WEIGHT_QUANTIZERS = ("lsq", "dorefa", "vertical", "codes", "none")
EXECUTIONS = ("fake_quant", "integer", "bit_serial")
ACTIVATION_QUANTIZERS = ("lsq", "dorefa", "none")

QUANTIZER_PARAM_NAMES = frozenset({"weight_step", "act_step", "weight_lower", "weight_upper",
                                   "act_lower", "act_upper"})
"""Parameter names that belong to quantizers (optimised by their own optimizer group)."""


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """Which quantizers a layer uses.

    weight: ``lsq`` (signed, learned step per precision), ``dorefa`` (Any-Precision), ``vertical``
      (one learned source step at ``source_bits``; every precision by ``cascade``, see
      `quantizers.vertical_weight`), ``codes`` (inference: the kernel is stored as k-bit
      offset-binary codes ``codes`` with step ``code_step``, weight ``(u - (2^k-1)/2) * step``,
      as `jaxquant.load_vertical` builds it) or ``none``.
    activation: ``lsq`` (learned step), ``dorefa`` (fixed [0, 1] range) or ``none``.
    per_channel: one weight step per output channel instead of per tensor.
    signed_activations: LSQ activations on a signed grid (inputs that are not post-ReLU).
    source_bits, cascade: the ``vertical`` weight quantizer's source bit-width and cascade.
    execution: how a ``codes`` conv with LSQ activations computes: ``fake_quant`` (float conv of
      dequantized values), ``integer`` (int32 conv of the integer codes, scales applied after) or
      ``bit_serial`` (one int32 conv per weight bit plane, ``sum_i 2^i conv(a, plane_i)``).
    """
    weight: str = "lsq"
    activation: str = "lsq"
    per_channel: bool = False
    signed_activations: bool = False
    source_bits: int = 8
    cascade: str = "floor"
    execution: str = "fake_quant"

    def __post_init__(self):
        if self.weight not in WEIGHT_QUANTIZERS:
            raise ConfigError(f"unknown weight quantizer {self.weight!r}; choose one of {WEIGHT_QUANTIZERS}")
        if self.activation not in ACTIVATION_QUANTIZERS:
            raise ConfigError(f"unknown activation quantizer {self.activation!r}; choose one of {ACTIVATION_QUANTIZERS}")
        if self.cascade not in q.VERTICAL_CASCADES:
            raise ConfigError(f"unknown cascade {self.cascade!r}; choose one of {q.VERTICAL_CASCADES}")
        if self.execution not in EXECUTIONS:
            raise ConfigError(f"unknown execution {self.execution!r}; choose one of {EXECUTIONS}")
        if self.execution != "fake_quant" and (self.weight != "codes" or self.activation != "lsq"
                                               or self.signed_activations):
            raise ConfigError("integer and bit-serial execution need weight='codes' with unsigned LSQ activations")

    def validate(self, bits: Sequence[int]) -> tuple[int, ...]:
        """Check ``bits`` against both quantizers; return the tuple."""
        q.validate_bits(bits, self.weight if self.weight != "none" else "lsq")
        if self.weight == "vertical":
            q.validate_bits((self.source_bits,), "vertical")
            for b in bits:
                if self.source_bits < b < q.FP_BITS:
                    raise BitWidthError(f"bit-width {b} is above the source bit-width {self.source_bits}; "
                                          f"raise source_bits or drop {b}")
        return q.validate_bits(bits, self.activation if self.activation != "none" else "lsq")


FULL_PRECISION = QuantSpec(weight="none", activation="none")


# ----------------------------------------------------------------------------------------------
# Convolution that vmaps over precision without grouped convolutions.

CONV_BATCHINGS = ("auto", "unroll", "native")
WEIGHT_GRADIENTS = ("auto", "xla", "im2col")
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def resolve_conv_batching(batching: str = "auto", backend: str | None = None) -> str:
    """What ``conv_batching`` runs on ``backend`` (default ``jax.default_backend()``): ``auto`` is
    ``unroll`` on CPU (one plain conv per precision, the fastest there) and ``native`` on GPU/TPU
    (XLA's batching: one grouped conv for all P precisions); ``unroll``/``native`` as given."""
    if batching not in CONV_BATCHINGS:
        raise ConfigError(f"unknown conv batching {batching!r}; choose one of {CONV_BATCHINGS}")
    if batching != "auto":
        return batching
    return "unroll" if (backend or jax.default_backend()) == "cpu" else "native"


def resolve_weight_gradient(weight_gradient: str = "auto", backend: str | None = None) -> str:
    """What ``weight_gradient`` runs on ``backend`` (default ``jax.default_backend()``): ``auto``
    is ``im2col`` (`conv_weight_gradient`) on CPU and ``xla`` (XLA's own) on GPU/TPU."""
    if weight_gradient not in WEIGHT_GRADIENTS:
        raise ConfigError(f"unknown weight_gradient {weight_gradient!r}; choose one of {WEIGHT_GRADIENTS}")
    if weight_gradient != "auto":
        return weight_gradient
    return "im2col" if (backend or jax.default_backend()) == "cpu" else "xla"


def _static_padding(padding):
    return padding if isinstance(padding, str) else tuple(tuple(int(v) for v in p) for p in padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _low_precision_conv(x, kernel, strides, padding, groups):
    """A conv of low-precision operands with float32 accumulation and a float32 result."""
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DIMENSIONS,
                                        feature_group_count=groups, preferred_element_type=jnp.float32)


def _low_precision_conv_fwd(x, kernel, strides, padding, groups):
    return _low_precision_conv(x, kernel, strides, padding, groups), (x, kernel)


def _low_precision_conv_bwd(strides, padding, groups, residuals, g):
    # Both backward convs in the operands' dtype (the cotangent cast down): their results are
    # cotangents of bf16 operands anyway. JAX's own transpose would upcast them to float32 convs.
    x, kernel = residuals

    def narrow(x, kernel):
        return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DIMENSIONS,
                                            feature_group_count=groups)
    return jax.vjp(narrow, x, kernel)[1](g.astype(x.dtype))


_low_precision_conv.defvjp(_low_precision_conv_fwd, _low_precision_conv_bwd)


def conv_forward(x, kernel, strides=(1, 1), padding="SAME", groups: int = 1):
    """The plain NHWC/HWIO convolution every QuantConv runs (per precision). Low-precision
    operands (bfloat16; both are cast to the narrower dtype) accumulate in float32 and return
    float32 (``preferred_element_type``); their backward convs take bfloat16 operands."""
    if q.is_low_precision(x.dtype) or q.is_low_precision(kernel.dtype):
        dtype = x.dtype if q.is_low_precision(x.dtype) else kernel.dtype
        return _low_precision_conv(x.astype(dtype), kernel.astype(dtype), tuple(int(v) for v in strides),
                                   _static_padding(padding), int(groups))
    return jax.lax.conv_general_dilated(x, kernel, tuple(strides), padding,
                                        dimension_numbers=_DIMENSIONS, feature_group_count=groups)


def conv_backward(x, kernel, g, strides=(1, 1), padding="SAME", weight_gradient: str = "auto", groups: int = 1):
    """``(dL/dx, dL/dkernel)`` of `conv_forward` for the output cotangent ``g``: XLA's
    transposed conv for ``dx``; ``dkernel`` by `conv_weight_gradient` (im2col) or XLA's,
    as ``weight_gradient`` says (``auto`` per backend, `resolve_weight_gradient`; grouped convs
    always use XLA's). Cotangents come in the operands' dtypes."""
    def plain(x, kernel):
        return conv_forward(x, kernel, strides, padding, groups)

    use_im2col = groups == 1 and resolve_weight_gradient(weight_gradient) == "im2col"
    if not use_im2col:
        return jax.vjp(plain, x, kernel)[1](g)
    dx = jax.vjp(lambda x: plain(x, kernel), x)[1](g)[0]
    return dx, conv_weight_gradient(x, g, kernel.shape, strides, padding)


def _unrolled_vmap(fn: Callable) -> Callable:
    """``fn`` whose ``jax.vmap`` runs ``fn`` once per batch element (a Python-unrolled loop
    inside the trace) instead of batching its primitives."""
    @custom_batching.custom_vmap
    def wrapped(*args):
        return fn(*args)

    @wrapped.def_vmap
    def _rule(axis_size, in_batched, *args):
        if not any(in_batched):
            return wrapped(*args), jax.tree_util.tree_map(lambda _: False, fn(*args))
        outs = [wrapped(*(a[i] if batched else a for a, batched in zip(args, in_batched)))
                for i in range(axis_size)]
        stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)
        return stacked, jax.tree_util.tree_map(lambda _: True, stacked)

    return wrapped


def _explicit_padding(in_spatial, kernel_spatial, strides, padding) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        return tuple(jax.lax.padtype_to_pads(in_spatial, kernel_spatial, strides, padding))
    return tuple(tuple(p) for p in padding)


def _batch_chunk(n: int, limit: int) -> int:
    """Images per chunk: the largest divisor of ``n`` up to ``limit`` (no padded images), or
    ``limit`` itself when that divisor is under half of it (the last chunk is then padded)."""
    limit = max(1, min(n, limit))
    divisor = max(d for d in range(1, limit + 1) if n % d == 0)
    return divisor if 2 * divisor > limit else limit


def conv_weight_gradient(x: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...], strides=(1, 1),
                         padding="SAME", cache_bytes: int = 2 ** 21) -> jax.Array:
    """``dL/dkernel`` of an NHWC/HWIO conv as im2col matmuls over chunks of the batch.

    ``dW[i, j, c, o] = sum_{n, y, x} x_pad[n, y*s + i, x*s + j, c] * g[n, y, x, o]``. Per chunk of
    images (sized so its patches fit in ``cache_bytes``), the patches are built along the width
    only, ``P[n, r, x, (j, c)] = x_pad[n, r, x*s + j, c]`` (``kw`` slices), and each kernel row i
    is one matmul of P's rows ``i, i + s, ...`` with g: ``dW[i] += P_i^T g``. On a CPU, XLA's
    own weight-gradient conv (which transposes both operands first) is the slower choice
    (``benchmarks/step_speed.py``, variants fp and fp-xla-dw); on GPU/TPU XLA's own is the
    choice. Low-precision ``x`` (bfloat16): ``g`` is cast to it and the matmuls accumulate in
    float32; the result has ``x``'s dtype.
    """
    low_precision = q.is_low_precision(x.dtype)
    if low_precision:
        g = g.astype(x.dtype)
    kh, kw, c, o = kernel_shape
    n = x.shape[0]
    oh, ow = g.shape[1:3]
    sh, sw = strides
    pads = _explicit_padding(x.shape[1:3], (kh, kw), strides, padding)
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    rows = (oh - 1) * sh + kh  # the padded rows any output reads
    xp = xp[:, :rows]
    chunk = _batch_chunk(n, cache_bytes // max(rows * ow * kw * c * x.dtype.itemsize, 1))
    extra = -n % chunk  # zero images add nothing to the sum
    if extra:
        xp = jnp.pad(xp, ((0, extra), (0, 0), (0, 0), (0, 0)))
        g = jnp.pad(g, ((0, extra), (0, 0), (0, 0), (0, 0)))
    xp = xp.reshape((-1, chunk) + xp.shape[1:])
    g = g.reshape((-1, chunk) + g.shape[1:])
    matmul = functools.partial(jnp.matmul, preferred_element_type=jnp.float32)

    def accumulate(total, chunk_arrays):
        xc, gc = chunk_arrays
        width_patches = jnp.concatenate([jax.lax.slice(xc, (0, 0, j, 0), (chunk, rows, j + (ow - 1) * sw + 1, c),
                                                       (1, 1, sw, 1)) for j in range(kw)], axis=-1)
        gc = gc.reshape(-1, o)
        per_row = [matmul(jax.lax.slice(width_patches, (0, i, 0, 0), (chunk, i + (oh - 1) * sh + 1, ow, kw * c),
                                        (1, sh, 1, 1)).reshape(-1, kw * c).T, gc) for i in range(kh)]
        return total + jnp.stack(per_row), None

    total, _ = jax.lax.scan(accumulate, jnp.zeros((kh, kw * c, o), jnp.float32), (xp, g))
    return total.reshape(kernel_shape).astype(x.dtype)


@functools.lru_cache(maxsize=None)
def _make_precision_conv(strides: tuple[int, ...], padding, weight_gradient: str, groups: int = 1) -> Callable:
    """A conv whose vmap runs one plain conv per precision, forward and backward.

    XLA lowers a vmapped conv with batched input *and* kernel to a grouped conv, which on CPU
    is about 20x slower than P plain convs (measured with ``benchmarks/step_speed.py
    --conv-batching native``). ``custom_vmap`` does not support reverse-mode autodiff, so the
    gradient is a ``custom_vjp`` whose forward and backward are each unrolled under vmap.
    """
    def plain(x, kernel):
        return conv_forward(x, kernel, strides, padding, groups)

    def gradients(x, kernel, g):
        return conv_backward(x, kernel, g, strides, padding, weight_gradient, groups)

    # Both directions unrolled per precision. (Letting the im2col weight gradient batch over
    # precisions, one scan with batched matmuls, measured 8% slower on CPU.)
    forward = _unrolled_vmap(plain)
    backward = _unrolled_vmap(gradients)

    @jax.custom_vjp
    def conv(x, kernel):
        return forward(x, kernel)

    conv.defvjp(lambda x, kernel: (forward(x, kernel), (x, kernel)),
                lambda res, g: backward(*res, g))
    return conv


def precision_conv(x, kernel, strides=(1, 1), padding="SAME", batching: str = "auto",
                   weight_gradient: str = "auto", groups: int = 1):
    """NHWC/HWIO convolution (``groups`` > 1: grouped, e.g. depthwise with ``groups = C``) of
    `conv_forward` (bfloat16 operands: float32 accumulation and result), batched over precision:

    - ``batching='unroll'``: ``jax.vmap`` over precision runs one plain conv per precision,
      forward and backward (a custom vmap rule; the fastest on CPU);
    - ``'native'``: XLA's own batching: the one batched (grouped, ``feature_group_count = P``)
      convolution for all P precisions, to measure on accelerators;
    - ``'auto'`` (default): `resolve_conv_batching` by ``jax.default_backend()``, CPU
      ``unroll``, GPU/TPU ``native``.

    ``weight_gradient``: ``im2col`` (`conv_weight_gradient`), ``xla``, or ``auto`` (im2col on
    CPU, XLA elsewhere); it applies with ``unroll`` to ungrouped convs."""
    strides = tuple(strides)
    resolve_weight_gradient(weight_gradient)  # validates
    if resolve_conv_batching(batching) == "native":
        return conv_forward(x, kernel, strides, padding, groups)
    padding = padding if isinstance(padding, str) else tuple(map(tuple, padding))
    return _make_precision_conv(strides, padding, weight_gradient, int(groups))(x, kernel)


# ----------------------------------------------------------------------------------------------
# Shared quantization of a layer's weights and inputs.

def _bits_at(bits: Sequence[int], precision) -> int | jax.Array:
    """``bits[precision]``: a Python int for a static (Python or NumPy int) precision, as the
    unrolled step passes, so the quantizers pick their branch in Python; else a traced gather."""
    if isinstance(precision, (int, np.integer)):
        return int(bits[precision])
    return jnp.asarray(bits, jnp.int32)[precision]


def _quantize_weight(module: nn.Module, kernel: jax.Array, precision) -> jax.Array:
    return _weight_on_grid(module, kernel, precision)[0]


def _weight_on_grid(module: nn.Module, kernel: jax.Array, precision):
    """``(w_hat, s, b)``: the fake-quantized kernel, its grid scale (`quantizers.grid_integers`)
    and the bit-width that decides full precision (``FP_BITS`` for ``weight='none'``)."""
    spec, bits = module.spec, module.bits
    bit_width = _bits_at(bits, precision)
    if spec.weight == "none":
        return kernel, 1.0, q.FP_BITS
    if spec.weight == "dorefa":
        return q.dorefa_weight(kernel, bit_width), q.dorefa_weight_grid_scale(kernel, bit_width), bit_width
    if spec.weight == "codes":
        raise ConfigError("weight='codes' is an inference form of QuantConv only")
    axis = tuple(range(kernel.ndim - 1)) if spec.per_channel else None
    if spec.weight == "vertical":
        # One source step at B bits shared by every precision (not per precision).
        step = module.param("weight_step", lambda _: q.lsq_init_step(
            kernel, spec.source_bits, signed=True, axis=axis).reshape((-1,) if spec.per_channel else ()))
        return (q.vertical_weight(kernel, step, bit_width, source_bits=spec.source_bits, cascade=spec.cascade),
                q.vertical_grid_scale(step, bit_width, source_bits=spec.source_bits, cascade=spec.cascade), bit_width)
    # LSQ: one step per precision, shape (P,), or (P, out_features) per channel.
    all_bits = jnp.asarray(bits, jnp.int32)
    step = module.param(
        "weight_step",
        lambda _: jax.vmap(lambda b: q.lsq_init_step(kernel, b, signed=True, axis=axis).reshape(
            (-1,) if spec.per_channel else ()))(all_bits))
    return (q.lsq_quantize(kernel, step[precision], bit_width, signed=True),
            q.lsq_grid_scale(step[precision], bit_width), bit_width)


def _act_step(module: nn.Module, x: jax.Array) -> jax.Array:
    """The LSQ activation steps of a layer, shape (P,), initialised from ``x`` (as float32) at
    every bit-width."""
    x = q.as_float32(x)
    all_bits = jnp.asarray(module.bits, jnp.int32)
    signed = module.spec.signed_activations
    return module.param(
        "act_step", lambda _: jax.vmap(lambda b: q.lsq_init_step(x, b, signed=signed))(all_bits))


def _quantize_input(module: nn.Module, x: jax.Array, precision) -> jax.Array:
    return _input_on_grid(module, x, precision)[0]


def _input_on_grid(module: nn.Module, x: jax.Array, precision):
    """``(x_hat, s, b)`` of the layer's input, as `_weight_on_grid`."""
    spec, bits = module.spec, module.bits
    bit_width = _bits_at(bits, precision)
    if spec.activation == "none":
        return x, 1.0, q.FP_BITS
    if spec.activation == "dorefa":
        return q.dorefa_activation(x, bit_width), q.unit_grid_scale(bit_width), bit_width
    step = _act_step(module, x)
    # LSQ's N for activations: the features of one example (the batch does not count).
    per_example = max(x.size // max(x.shape[0], 1), 1) if x.ndim > 1 else x.size
    return (q.lsq_quantize(x, step[precision], bit_width, signed=spec.signed_activations, num_elements=per_example),
            q.lsq_grid_scale(step[precision], bit_width), bit_width)


def _check_exact_codes(module: nn.Module, dtype) -> None:
    """A low-precision compute dtype holds integer codes exactly only up to `q.max_exact_bits`
    (bfloat16: 8 bits): raise `ConfigError` for a quantized bit-width above that."""
    limit = q.max_exact_bits(dtype)
    wide = tuple(b for b in module.bits if limit < b < q.FP_BITS)
    if wide:
        name = jnp.dtype(dtype).name
        raise ConfigError(f"{type(module).__name__} {module.name}: bits {wide} with {name} inputs: {name} carries "
                          f"integer codes exactly only up to {limit} bits; use dtype float32 for "
                          f"{limit + 1}..16 bits")


def _grid_operands(module: nn.Module, x: jax.Array, kernel: jax.Array, precision):
    """``(n_x, n_w, scale)`` for a low-precision ``x``: the integer-valued operands in ``x``'s
    dtype and ``stop_gradient(s_x * s_w)``, so ``conv(n_x, n_w) * scale`` is ``conv(x_hat, w_hat)``
    on the exact grid (module docstring). Quantizes ``x.astype(float32)``."""
    dtype = x.dtype
    if module.spec.weight != "none" or module.spec.activation != "none":
        _check_exact_codes(module, dtype)
    x_hat, s_x, b_x = _input_on_grid(module, x.astype(jnp.float32), precision)
    w_hat, s_w, b_w = _weight_on_grid(module, kernel, precision)
    n_x = q.grid_integers(x_hat, s_x, b_x).astype(dtype)
    n_w = q.grid_integers(w_hat, s_w, b_w).astype(dtype)
    return n_x, n_w, jax.lax.stop_gradient(jnp.asarray(s_x, jnp.float32) * jnp.asarray(s_w, jnp.float32))


def _integer_conv(x, kernel, strides, padding):
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        preferred_element_type=jnp.int32)


class QuantConv(nn.Module):
    """2-D convolution (NHWC) with quantized weights and inputs at ``bits[precision]``;
    ``feature_group_count`` > 1 makes it grouped (``= C_in``: depthwise, as MobileNetV2's).
    Output in the input's dtype; bfloat16 inputs run the exact-grid conv (module docstring).
    ``conv_batching``/``weight_gradient``: `precision_conv`'s (``auto``: per backend)."""
    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: Any = "SAME"
    use_bias: bool = False
    bits: tuple[int, ...] = (q.FP_BITS,)
    spec: QuantSpec = QuantSpec()
    conv_batching: str = "auto"
    weight_gradient: str = "auto"
    kernel_init: Callable = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    feature_group_count: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, precision) -> jax.Array:
        groups = self.feature_group_count
        if groups < 1 or x.shape[-1] % groups or self.features % groups:
            raise ConfigError(f"QuantConv: {x.shape[-1]} input and {self.features} output channels do not "
                              f"split into {groups} groups")
        shape = tuple(self.kernel_size) + (x.shape[-1] // groups, self.features)
        if self.spec.weight == "codes":
            if groups != 1:
                raise ConfigError("weight='codes' (the vertical-layered artefact) supports ungrouped convs only")
            y = self._codes_conv(q.as_float32(x), precision, shape)
        else:
            y = self._conv(x, precision, shape)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y.astype(x.dtype)

    def _codes_conv(self, x, precision, shape):
        """Inference from stored k-bit offset-binary codes ``u``: ``w = (u - (2^k-1)/2) s_k``.

        Integer execution with LSQ activation codes ``a = round(clip(x/s_a, 0, 2^k-1))``:
        ``y = s_a s_k / 2 * (2 conv(a, u) - (2^k-1) conv(a, 1))`` with int32 accumulation (the
        mid-rise offset is a zero point); bit-serial replaces ``conv(a, u)`` by
        ``sum_i 2^i conv(a, plane_i)`` over the weight's bit planes.
        Computes in float32 (a bfloat16 input is cast up; the layer casts the output back).
        """
        codes = self.param("codes", nn.initializers.zeros, shape, jnp.int32)
        code_step = self.param("code_step", nn.initializers.ones,
                               (self.features,) if self.spec.per_channel else (), jnp.float32)
        bit_width = _bits_at(self.bits, precision)
        if self.spec.execution == "fake_quant":
            kernel = q.midrise_dequantize(codes, code_step, bit_width)
            return precision_conv(_quantize_input(self, x, precision), kernel.astype(x.dtype), self.strides,
                                  self.padding, self.conv_batching, self.weight_gradient)
        act_step = _act_step(self, x)[precision]
        a = q.lsq_codes(x, act_step, bit_width, signed=False)
        strides = tuple(self.strides)
        if self.spec.execution == "integer":
            accumulated = _integer_conv(a, codes, strides, self.padding)
        else:
            planes = max(b for b in self.bits if b < q.FP_BITS)  # codes have at most this many bits
            accumulated = sum(jnp.left_shift(_integer_conv(a, jnp.right_shift(codes, i) & 1, strides, self.padding), i)
                              for i in range(planes))
        window_sums = _integer_conv(a, jnp.ones(shape[:-1] + (1,), jnp.int32), strides, self.padding)
        odd_levels = 2 * accumulated - (jnp.left_shift(1, bit_width) - 1) * window_sums  # 2 (u - c) summed
        return odd_levels.astype(jnp.float32) * (act_step * code_step * 0.5)

    def _conv(self, x, precision, shape):
        kernel = self.param("kernel", self.kernel_init, shape)
        conv = functools.partial(precision_conv, strides=self.strides, padding=self.padding,
                                 batching=self.conv_batching, weight_gradient=self.weight_gradient,
                                 groups=self.feature_group_count)
        if q.is_low_precision(x.dtype):  # exact grid: conv(n_x, n_w) * s_x s_w, float32
            n_x, n_w, scale = _grid_operands(self, x, kernel, precision)
            return conv(n_x, n_w) * scale
        x = _quantize_input(self, x, precision)
        kernel = _quantize_weight(self, kernel, precision)
        return conv(x, kernel.astype(x.dtype))


class QuantDense(nn.Module):
    """Dense layer with quantized weights and inputs at ``bits[precision]``; output in the
    input's dtype (bfloat16: ``(n_x @ n_w) * s_x s_w`` on the exact grid, float32 accumulation)."""
    features: int
    use_bias: bool = True
    bits: tuple[int, ...] = (q.FP_BITS,)
    spec: QuantSpec = QuantSpec()
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array, precision) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        dtype = x.dtype
        if q.is_low_precision(dtype):
            n_x, n_w, scale = _grid_operands(self, x, kernel, precision)
            y = jnp.matmul(n_x, n_w, preferred_element_type=jnp.float32) * scale
        else:
            x = _quantize_input(self, x, precision)
            kernel = _quantize_weight(self, kernel, precision)
            y = x @ kernel.astype(x.dtype)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y.astype(dtype)


@jax.custom_vjp
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon) -> tuple[jax.Array, ...]:
    """Training-mode BatchNorm over all axes but the last: ``(y, mean, var)`` with
    ``y = x_hat scale + bias``, ``x_hat = (x - mean) r``, ``r = 1/sqrt(var + eps)``, ``mean``
    and the biased ``var`` of the batch, computed in float32 (``y`` in ``x``'s dtype).

    The backward is written out (the autodiff of these formulas, in M = rows reduced):
    ``dx = r scale (g - mean(g) - x_hat mean(g x_hat)) + g_mean/M + g_var 2 (x - mean)/M``,
    ``dscale = sum(g x_hat)``, ``dbias = sum(g)``; it keeps only ``x`` (and the statistics) from
    the forward, where autodiff keeps ``x - mean`` and ``x_hat`` as tensors too."""
    return _batch_norm_train_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_train_fwd(x, scale, bias, epsilon):
    x32 = q.as_float32(x)
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x32, axis=axes)
    var = jnp.mean(jnp.square(x32 - mean), axis=axes)
    y = (x32 - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias
    return (y.astype(x.dtype), mean, var), (x, mean, var, scale, epsilon)


def _batch_norm_train_bwd(res, cotangents):
    x, mean, var, scale, epsilon = res
    g, g_mean, g_var = cotangents
    x32, g = q.as_float32(x), q.as_float32(g)
    axes = tuple(range(x.ndim - 1))
    rows = x32.size // x32.shape[-1]
    r = jax.lax.rsqrt(var + epsilon)
    centered = x32 - mean
    d_bias = jnp.sum(g, axis=axes)
    d_scale = jnp.sum(g * centered, axis=axes) * r
    # dx = a g + b (x - mean) + c per channel.
    a = r * scale
    b = -a * r * d_scale / rows + 2.0 * g_var / rows
    c = -a * d_bias / rows + g_mean / rows
    dx = a * g + b * centered + c
    return dx.astype(x.dtype), d_scale, d_bias, jnp.zeros_like(epsilon)


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


class PrecisionBatchNorm(nn.Module):
    """Switchable BatchNorm: statistics and affine per precision (leading axis P), row
    ``precision`` used. In training, only that row's running averages move
    (``ra = momentum * ra + (1 - momentum) * batch``, Flax's convention: PyTorch's 0.1 is 0.9).
    Statistics and normalisation in float32 (running stats are float32); output in the input's
    dtype. Training without ``axis_name`` runs `batch_norm_train` (its backward written out)."""
    num_precisions: int = 1
    momentum: float = 0.9
    epsilon: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    axis_name: str | None = None

    def _num_channels(self, x: jax.Array) -> int:
        """The channels of the stored variables (``(P, C)``)."""
        return x.shape[-1]

    def _take(self, value: jax.Array, precision) -> jax.Array:
        """The row of ``value`` (``(P, C)``) that ``x``'s channels use."""
        return value[precision]

    def _put(self, value: jax.Array, precision, new: jax.Array) -> jax.Array:
        """``value`` with ``new`` written where `_take` reads."""
        return value.at[precision].set(new)

    def _normalize(self, x, mean, var, scale, bias):
        """``(x - mean) / sqrt(var + eps) * scale + bias`` in float32, the result in ``x``'s dtype."""
        return ((q.as_float32(x) - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias).astype(x.dtype)

    def _train(self, x, scale, bias):
        """``(y, mean, var)`` of the batch."""
        if self.axis_name is None:
            return batch_norm_train(x, scale, bias, jnp.float32(self.epsilon))
        # Statistics over every device: autodiff through pmean.
        x32 = q.as_float32(x)
        axes = tuple(range(x.ndim - 1))
        mean = jax.lax.pmean(jnp.mean(x32, axis=axes), self.axis_name)
        var = jax.lax.pmean(jnp.mean(jnp.square(x32 - mean), axis=axes), self.axis_name)
        return self._normalize(x, mean, var, scale, bias), mean, var

    @nn.compact
    def __call__(self, x: jax.Array, precision, train: bool) -> jax.Array:
        shape = (self.num_precisions, self._num_channels(x))
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, shape, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, shape, jnp.float32)
        scale = self.param("scale", nn.initializers.ones, shape) if self.use_scale else jnp.ones(shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, shape) if self.use_bias else jnp.zeros(shape, jnp.float32)
        scale, bias = self._take(scale, precision), self._take(bias, precision)
        if not train:
            return self._normalize(x, self._take(ra_mean.value, precision), self._take(ra_var.value, precision),
                                   scale, bias)
        y, mean, var = self._train(x, scale, bias)
        if not self.is_initializing():
            m = self.momentum
            ra_mean.value = self._put(ra_mean.value, precision, m * self._take(ra_mean.value, precision) + (1.0 - m) * mean)
            ra_var.value = self._put(ra_var.value, precision, m * self._take(ra_var.value, precision) + (1.0 - m) * var)
        return y


# ----------------------------------------------------------------------------------------------
# Multi-branch convolution (the layer MBQuant builds on; the selection tables live in the method).

INTERVAL_INIT = "interval_init"
"""The variable collection that, when mutable, puts `MultiBranchConv` in its data-dependent
init mode (`MultiBranchConv._initial_intervals`)."""
WEIGHT_INTERVAL_STDS = ("chunk", "filter")


@dataclasses.dataclass(frozen=True)
class BranchSelection:
    """Which branches of a `MultiBranchConv` each precision uses: static rows, one per precision,
    gathered with the traced precision index.

    full: ``(P, G)`` booleans, branch g runs as a full branch at precision p.
    partial: ``(P,)`` the branch whose top-left slice runs as the partial branch, or -1.
    full_weight_slot: ``(P, G)`` the weight-interval slot that quantizes full branch g.
    partial_weight_slot: ``(P,)`` the weight-interval slot of the partial branch (ignored at -1).
    weight_interval_std: how MBQuant's data-dependent init sets a weight slot: ``chunk`` (3 std of
    the chunk the slot quantizes) or ``filter`` (the official code: 3 std of output filter #slot).
    A branch is never both full and partial at one precision.
    """
    full: tuple[tuple[bool, ...], ...]
    partial: tuple[int, ...]
    full_weight_slot: tuple[tuple[int, ...], ...]
    partial_weight_slot: tuple[int, ...]
    weight_interval_std: str = "chunk"   # data-dependent init of the weight slots: chunk | filter

    def __post_init__(self):
        p, g = len(self.full), len(self.full[0]) if self.full else 0
        if p == 0 or g == 0:
            raise ConfigError("a branch selection needs at least one precision and one branch")
        if (len(self.partial) != p or len(self.full_weight_slot) != p or len(self.partial_weight_slot) != p
                or any(len(row) != g for row in self.full) or any(len(row) != g for row in self.full_weight_slot)):
            raise ConfigError(f"branch selection rows disagree: expected {p} precisions x {g} branches")
        if self.weight_interval_std not in WEIGHT_INTERVAL_STDS:
            raise ConfigError(f"unknown weight_interval_std {self.weight_interval_std!r}; "
                              f"choose one of {WEIGHT_INTERVAL_STDS}")
        for row, pb in zip(self.full, self.partial):
            if not -1 <= pb < g or (pb >= 0 and row[pb]):
                raise ConfigError(f"partial branch {pb} is out of range or also a full branch in {row}")

    @property
    def num_branches(self) -> int:
        return len(self.full[0])

    @property
    def num_precisions(self) -> int:
        return len(self.full)

    def gather(self, precision) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(full_mask, partial_onehot, weight_slot)`` at a (traced) precision index, each ``(G,)``:
        float masks, and the weight slot of each branch in the role it plays there."""
        full = jnp.asarray(self.full, jnp.float32)[precision]
        partial = jnp.asarray(self.partial, jnp.int32)[precision]
        onehot = (jnp.arange(self.num_branches) == partial).astype(jnp.float32)
        slot = jnp.where(onehot > 0, jnp.asarray(self.partial_weight_slot, jnp.int32)[precision],
                         jnp.asarray(self.full_weight_slot, jnp.int32)[precision])
        return full, onehot, slot

    def order(self, precision: int) -> list[int]:
        """The branches a static precision computes, in the order the branch-list layout keeps
        them: the full branches ascending, then the partial one (the official code's
        concatenation order)."""
        full = [b for b in range(self.num_branches) if self.full[precision][b]]
        return full + ([self.partial[precision]] if self.partial[precision] >= 0 else [])


_ARCSINE_HALF_NORMAL = 1.0 / (1.0 - 2.0 / 3.141592653589793) ** 0.5  # 1/sqrt(1 - 2/pi)


class MultiBranchConv(nn.Module):
    """G branches of latent FP weights quantized to fixed 2-bit levels ``{-1, -1/3, 1/3, 1}``
    (`quantizers.interval_weight`, a learnable ``[l, u]`` per weight slot), inputs quantized at
    ``bits[precision]`` (`quantizers.interval_activation`, one ``[l, u]`` per (precision, slot)).

    Input ``(N, H, W, G, C_in)``, output ``(N, H, W, G, features)``: every branch keeps its own
    slot, so shapes never depend on the precision. At a precision (`BranchSelection`), a full
    branch g computes ``conv(q_b(x[..., g, :]), q_2(W_g))``; the partial branch pb computes the
    top-left slice ``conv(q_b(x[..., pb, :p_in]), q_2(W_pb)[:, :, :p_in, :p_out])`` and writes
    output channels ``[0, p_out)`` of its slot; every other output is exactly zero. Activation
    slots: ``g`` for full branch g, ``G`` for the partial branch (each (slot, precision) has one
    user, so this is the same parametrisation as the official code's per-position slots).

    Two ways to select, the same function:

    - a **traced** precision (``jax.vmap`` over precision, the default step): masks on the
      quantized kernels, so one trace serves every precision; the price is that **all G branches
      are computed** (deselected ones multiply zero kernels, and their weights get exactly zero
      gradient, as long as every activation interval keeps ``u > l``: a collapsed interval gives
      NaN, and ``0 * NaN`` is NaN);
    - a **static** Python-int precision (``precision_mode='unroll'``), with ``skip_deselected``:
      only the selected branches' convs run, and the partial one at its ``p_in x p_out`` size, so
      the b-bit network costs its ``floor(b/2) (+ 1/2)`` branches, not G.

    Making the ``interval_init`` collection mutable runs MBQuant's data-dependent interval init
    (`_initial_intervals`, driven by `jaxquant.methods.mbquant.initialize_intervals`).
    No bias, no rescaling: the following (per-precision) BatchNorm absorbs the scale.
    The default initializer is PyTorch's ``kaiming_normal_(fan_out)`` on the grouped weight:
    ``std = sqrt(2 / (G * k * k * C_out))`` (fan_out counts every branch).
    Output in the input's dtype; intervals are initialised from ``x.astype(float32)``; bfloat16
    inputs convolve the integer codes (`_conv`: ``conv(n_x, n_w) * s_x/3``, bits <= 8).
    """
    features: int
    selection: BranchSelection
    bits: tuple[int, ...]
    partial_in: int | None = None      # input channels of the partial slice (None: all)
    partial_out: int | None = None     # output channels of the partial slice (None: all)
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: Any = "SAME"
    conv_batching: str = "auto"        # precision_conv's: auto (CPU unroll, GPU/TPU native) | unroll | native
    weight_gradient: str = "auto"
    kernel_init: Callable = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    skip_deselected: bool = True       # a static (Python int) precision computes only its branches

    @nn.compact
    def __call__(self, x: jax.Array, precision) -> jax.Array:
        sel = self.selection
        g = sel.num_branches
        if sel.num_precisions != len(self.bits):
            raise ConfigError(f"the branch selection has {sel.num_precisions} precisions but bits={self.bits}")
        if x.ndim != 5 or x.shape[-2] != g:
            raise ConfigError(f"MultiBranchConv expects inputs (N, H, W, {g}, C), got shape {x.shape}")
        c_in = x.shape[-1]
        p_in = c_in if self.partial_in is None else self.partial_in
        p_out = self.features if self.partial_out is None else self.partial_out
        if not (0 < p_in <= c_in and 0 < p_out <= self.features):
            raise ConfigError(f"partial slice {p_in}x{p_out} does not fit a {c_in}->{self.features} conv")
        kernel = self.param("kernel", self.kernel_init, (g, *self.kernel_size, c_in, self.features))
        dtype, x32 = x.dtype, q.as_float32(x)  # data-dependent inits and quantizers read float32
        if q.is_low_precision(dtype):
            _check_exact_codes(self, dtype)
        branch_std = lambda k: 3.0 * jnp.std(k.reshape(g, -1), axis=1)  # noqa: E731
        w_upper = self.param("weight_upper", lambda _: branch_std(kernel))
        w_lower = self.param("weight_lower", lambda _: -branch_std(kernel))

        def act_init(stat):
            def init(_):
                per_branch = jnp.moveaxis(x32, -2, 0).reshape(g, -1)
                values = jnp.concatenate([stat(per_branch, axis=1), stat(x32.reshape(1, -1), axis=1)])
                return jnp.broadcast_to(values, (len(self.bits), g + 1))
            return init
        # 3 std / sqrt(1 - 2/pi) and the minimum, as the official init (kept apart by at least 1e-3).
        a_lower = self.param("act_lower", act_init(jnp.min))
        a_upper = self.param("act_upper", act_init(
            lambda v, axis: jnp.maximum(3.0 * jnp.std(v, axis=axis, ddof=1) * _ARCSINE_HALF_NORMAL,
                                        jnp.min(v, axis=axis) + 1e-3)))

        if self.is_mutable_collection(INTERVAL_INIT) and not self.is_initializing():  # init makes every collection mutable
            w_lower, w_upper, a_lower, a_upper = self._initial_intervals(
                x32, kernel, precision, p_in, p_out, (w_lower, w_upper, a_lower, a_upper))
        bit_width = _bits_at(self.bits, precision)
        if self.skip_deselected and isinstance(precision, (int, np.integer)):
            return self._selected_branches(x, kernel, int(precision), p_in, p_out,
                                           (w_lower, w_upper, a_lower, a_upper), bit_width).astype(dtype)
        full, partial, slot = sel.gather(precision)
        shape5 = (g, 1, 1, 1, 1)
        quantized = q.interval_weight(kernel, w_lower[slot].reshape(shape5), w_upper[slot].reshape(shape5))
        slice_mask = ((jnp.arange(c_in) < p_in)[:, None] & (jnp.arange(self.features) < p_out)[None, :])
        keep = full[:, None, None] + partial[:, None, None] * slice_mask.astype(jnp.float32)  # (G, C_in, C_out)
        quantized = quantized * keep[:, None, None]
        act_slot = jnp.where(partial > 0, g, jnp.arange(g))
        lower = a_lower[precision][act_slot][:, None]
        upper = a_upper[precision][act_slot][:, None]
        xq = q.interval_activation(x32, lower, upper, bit_width)
        conv = functools.partial(self._conv, bit_width=bit_width, dtype=dtype)
        return jax.vmap(conv, in_axes=(3, 0), out_axes=3)(xq, quantized)

    def _conv(self, x: jax.Array, kernel: jax.Array, bit_width=None, dtype=None) -> jax.Array:
        """``conv(x_hat, w_hat)`` of one branch: ``x_hat`` interval activations at ``bit_width``
        (grid ``1/(2^b-1)``), ``w_hat`` interval weights (grid 1/3); the result in ``dtype``
        (the layer's input dtype; default ``x``'s).

        float32 ``dtype``, or no ``bit_width``: the plain conv of the values (in ``x``'s dtype,
        cast to ``dtype``). Low-precision ``dtype`` (bfloat16) with ``bit_width``: the exact grid,
        ``conv(n_x, n_w) * stop_gradient(s_x / 3)`` with ``n_x = x_hat (2^b-1)`` and ``n_w = 3 w_hat``
        snapped to their integers (`quantizers.grid_integers`), float32 accumulation.
        """
        dtype = jnp.dtype(x.dtype if dtype is None else dtype)
        conv = functools.partial(precision_conv, strides=self.strides, padding=self.padding,
                                 batching=self.conv_batching, weight_gradient=self.weight_gradient)
        if not q.is_low_precision(dtype) or bit_width is None:
            return conv(x, kernel.astype(x.dtype)).astype(dtype)
        s_x = q.unit_grid_scale(bit_width)
        n_x = q.grid_integers(x, s_x, bit_width).astype(dtype)
        n_w = q.grid_integers(kernel, q.INTERVAL_WEIGHT_GRID_SCALE, 2).astype(dtype)
        scale = jax.lax.stop_gradient(s_x * q.INTERVAL_WEIGHT_GRID_SCALE)
        return (conv(n_x, n_w) * scale).astype(dtype)

    def _selected_branches(self, x, kernel, precision: int, p_in: int, p_out: int, intervals, bit_width):
        """The same function as the masked path for a static precision, computing only the
        selected branches (deselected slots are zeros that no conv produced)."""
        sel, g = self.selection, self.selection.num_branches
        order = sel.order(precision)
        pb = sel.partial[precision]
        chunks = [x[..., branch, :p_in] if branch == pb else x[..., branch, :] for branch in order]
        ys = self._branch_convs(chunks, kernel, precision, intervals, bit_width)
        outputs = dict(zip(order, ys))
        if pb >= 0:
            y = outputs[pb]
            outputs[pb] = jnp.pad(y, [(0, 0)] * (y.ndim - 1) + [(0, self.features - p_out)])
        zeros = jnp.zeros(ys[0].shape[:-1] + (self.features,), x.dtype)
        return jnp.stack([outputs.get(branch, zeros) for branch in range(g)], axis=3)

    def _branch_convs(self, chunks, kernel, precision: int, intervals, bit_width) -> list:
        """The convs of a static precision's selected branches, in `BranchSelection.order` (full
        branches ascending, then the partial): ``chunks`` are their inputs (the partial's sliced to
        ``p_in`` channels); returns their outputs (``features`` wide, the partial's ``p_out``)."""
        w_lower, w_upper, a_lower, a_upper = intervals
        sel, g = self.selection, self.selection.num_branches
        pb = sel.partial[precision]
        outputs = []
        for branch, chunk in zip(sel.order(precision), chunks):
            if branch == pb:
                slot, act = sel.partial_weight_slot[precision], g
                p_in, p_out = chunk.shape[-1], self.features if self.partial_out is None else self.partial_out
                wq = q.interval_weight(kernel[pb, :, :, :p_in, :p_out], w_lower[slot], w_upper[slot])
            else:
                slot, act = sel.full_weight_slot[precision][branch], branch
                wq = q.interval_weight(kernel[branch], w_lower[slot], w_upper[slot])
            xq = q.interval_activation(chunk, a_lower[precision, act], a_upper[precision, act], bit_width)
            outputs.append(self._conv(xq, wq, bit_width=bit_width, dtype=chunk.dtype))  # the input's dtype
        return outputs

    def selected_branches(self, xs: Sequence[jax.Array], precision: int) -> list[jax.Array]:
        """The static-precision forward on the selected branches only, in the *branch-list
        layout*: ``xs`` holds one ``(N, H, W, C)`` input per selected branch in
        `BranchSelection.order` (the k full branches ascending, ``C_in`` channels each, then the
        partial branch's first ``w >= partial_in`` channels); returns their outputs in the same
        order (``features`` channels each, the partial's ``partial_out``). The same convs as
        `__call__` at that precision (which returns them in their ``G`` slots, with zeros
        elsewhere); reads the parameters ``__call__`` created, so the module must have been
        initialised (its ``__call__`` runs at ``init``)."""
        sel = self.selection
        if not isinstance(precision, (int, np.integer)):
            raise ConfigError("MultiBranchConv.selected_branches needs a static (Python int) precision")
        precision = int(precision)
        kernel = self.get_variable("params", "kernel")
        intervals = tuple(self.get_variable("params", name)
                          for name in ("weight_lower", "weight_upper", "act_lower", "act_upper"))
        c_in = kernel.shape[-2]
        p_in = c_in if self.partial_in is None else self.partial_in
        order = sel.order(precision)
        widths = tuple(x.shape[-1] for x in xs)
        wanted = tuple(p_in if branch == sel.partial[precision] else c_in for branch in order)
        if len(widths) != len(wanted) or any(w < need if branch == sel.partial[precision] else w != need
                                             for branch, w, need in zip(order, widths, wanted)):
            raise ConfigError(f"selected-branch inputs of {widths} channels do not match branches {order} of "
                              f"{c_in} channels (the partial at least {p_in}) at precision {precision}")
        if q.is_low_precision(xs[0].dtype):
            _check_exact_codes(self, xs[0].dtype)
        chunks = [x[..., :need] if x.shape[-1] > need else x for x, need in zip(xs, wanted)]
        return self._branch_convs(chunks, kernel, precision, intervals, _bits_at(self.bits, precision))

    def _initial_intervals(self, x, kernel, precision, p_in: int, p_out: int, intervals):
        """MBQuant's data-dependent init at one precision (`methods.mbquant.initialize_intervals`):
        every slot the precision uses is set from this layer's own input ``x`` and the current
        weights, then used at once, so later layers see inputs quantized with fresh intervals.

        Activations (slot of full branch g, or the partial's slot G):
        ``u = 3 std(x_chunk) / sqrt(1 - 2/pi)`` (unbiased std), ``l = min(x_chunk)``.
        Weights ``u = 3 std(W_chunk)``, ``l = -u``, per the selection's ``weight_interval_std``:
        ``'chunk'`` (clean)
        the slot's own chunk (the branch; the partial slice for the partial's slot, except with
        per-branch slots, where the slot belongs to the whole branch and is left to it);
        ``'filter'`` (the official code's quirk) the slot-th *output filter* of the whole
        ``(G*C_out, ...)`` weight, and the partial slice for the partial's slot.
        The new values are stored in the ``interval_init`` collection for the caller to keep.
        """
        w_lower, w_upper, a_lower, a_upper = intervals
        sel, g = self.selection, self.selection.num_branches
        full, partial, slot = sel.gather(precision)
        has_partial = partial.sum() > 0
        pb = jnp.argmax(partial)

        def act_stats(v):
            lower = jnp.min(v)
            upper = jnp.maximum(3.0 * jnp.std(v, ddof=1) * _ARCSINE_HALF_NORMAL, lower + 1e-3)
            return lower, upper

        chunks = [act_stats(x[..., branch, :]) for branch in range(g)]
        chunks.append(act_stats(jnp.take(x[..., :p_in], pb, axis=-2)))
        used = jnp.concatenate([full, has_partial[None].astype(jnp.float32)]) > 0
        new_lower = jnp.where(used, jnp.stack([c[0] for c in chunks]), a_lower[precision])
        new_upper = jnp.where(used, jnp.stack([c[1] for c in chunks]), a_upper[precision])
        a_lower = a_lower.at[precision].set(new_lower)
        a_upper = a_upper.at[precision].set(new_upper)

        partial_std = 3.0 * jnp.std(jnp.take(kernel[..., :p_in, :p_out], pb, axis=0))
        filters = jnp.moveaxis(kernel, -1, 1).reshape(g * self.features, -1)  # torch's (G*C_out, ...) rows
        for branch in range(g):
            is_partial = partial[branch] > 0
            if sel.weight_interval_std == "filter":
                value = jnp.where(is_partial, partial_std, 3.0 * jnp.std(filters[slot[branch]]))
                write = (full[branch] > 0) | is_partial
            else:
                value = jnp.where(is_partial, partial_std, 3.0 * jnp.std(kernel[branch]))
                per_branch_slots = all(s == tuple(range(g)) for s in sel.full_weight_slot)
                write = (full[branch] > 0) | (is_partial & (not per_branch_slots))
            w_upper = w_upper.at[slot[branch]].set(jnp.where(write, value, w_upper[slot[branch]]))
        w_lower = -w_upper
        for name, value in zip(("weight_lower", "weight_upper", "act_lower", "act_upper"),
                               (w_lower, w_upper, a_lower, a_upper)):
            self.put_variable(INTERVAL_INIT, name, value)
        return w_lower, w_upper, a_lower, a_upper

"""`QuantConv` and `QuantDense`: weights and inputs quantized at a (traced) precision index,
and the shared quantization of a layer's operands."""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxquant import quantizers as q
from jaxquant.errors import ConfigError, PrecisionError
from jaxquant.layers import conv as lowering  # called through the module: one place to swap it
from jaxquant.layers.spec import QuantSpec


def check_precision(precision, num_precisions: int, owner: str) -> None:
    """Refuse (`PrecisionError`, one line) a precision index that is not an integer in
    ``0..num_precisions-1`` (or ``-num_precisions..-1``, counted from the end as Python does):
    a JAX array index past the end would be clamped to the last row, silently. ``owner`` names
    what is indexed (``bits (2, 4, 8)``, a layer). A traced index (under ``jax.jit`` or
    ``jax.vmap``) has no value to check and passes."""
    if isinstance(precision, jax.core.Tracer):
        return
    value = np.asarray(precision)
    if isinstance(precision, bool) or value.ndim or not np.issubdtype(value.dtype, np.integer):
        got = f"an array of shape {value.shape}" if value.ndim else repr(precision)
        raise PrecisionError(f"the precision index into {owner} must be an integer, got {got}")
    if not -num_precisions <= int(value) < num_precisions:
        raise PrecisionError(
            f"precision index {int(value)} is out of range for {owner}: use 0..{num_precisions - 1}"
            ", one index per bit-width"
        )


def layer_label(module: nn.Module) -> str:
    """A bound layer as errors name it: its type and path (``QuantConv 'conv0'``)."""
    path = "/".join(str(name) for name in module.path)
    return f"{type(module).__name__} '{path}'" if path else type(module).__name__


def check_precision_rows(owner: str, name: str, got, want, num_precisions: int) -> None:
    """Refuse (`PrecisionError`, one line naming both shapes) a stored per-precision array
    ``name`` of ``owner`` whose shape ``got`` is not the ``want`` (leading axis
    ``num_precisions``, one row per bit-width) the layer builds: variables of another model."""
    got, want = tuple(got), tuple(want)
    if got == want:
        return
    if len(got) == len(want) and got[1:] == want[1:] and want[:1] == (num_precisions,):
        raise PrecisionError(
            f"{owner}: {name} has shape {got} ({got[0]} rows, one per bit-width) where {want} is "
            f"expected for {num_precisions} bit-widths; the variables were built for other bits"
        )
    raise PrecisionError(
        f"{owner}: {name} has shape {got} where {want} is expected; the variables were built "
        "for another model"
    )


def bits_at(bits: Sequence[int], precision) -> int | jax.Array:
    """``bits[precision]``: a Python int for a static (Python or NumPy int) precision, as the
    unrolled step passes, so the quantizers pick their branch in Python; else a traced gather.
    A concrete index outside ``bits`` raises `PrecisionError` (`check_precision`)."""
    check_precision(precision, len(bits), f"bits {tuple(bits)}")
    if isinstance(precision, (int, np.integer)):
        return int(bits[precision])
    return jnp.asarray(bits, jnp.int32)[precision]


def quantizer_params(
    module: nn.Module, quantizer: q.Quantizer, role: str, x: jax.Array, bits=None
) -> dict:
    """The learned parameters of ``quantizer`` in ``module``, stored as ``{role}_{name}`` and
    initialised from ``x`` (as float32) at every bit-width of ``bits`` (``module.bits``).
    A stored parameter of another shape (built for other bits) raises `PrecisionError`."""
    bits = tuple(module.bits if bits is None else bits)
    init = lambda: quantizer.init(q.as_float32(x), bits)  # noqa: E731
    params = {}
    for name in quantizer.param_names:
        key = f"{role}_{name}"
        try:
            params[name] = module.param(key, lambda _, n=name: init()[n])
        except flax.errors.ScopeParamShapeError:  # one line of ours, with both shapes
            got = np.shape(module.get_variable("params", key))
            check_precision_rows(
                f"{layer_label(module)} (bits {bits})",
                f"quantizer parameter '{key}'",
                got,
                jax.eval_shape(init)[name].shape,
                len(bits),
            )
            raise
    return params


def on_grid(
    module: nn.Module, quantizer: q.Quantizer, role: str, x: jax.Array, precision, bits=None
):
    """``(x_hat, s, b)``: ``x`` fake-quantized by ``quantizer`` at ``bits[precision]`` (``bits``:
    ``module.bits``), its grid scale (`quantizers.grid_integers`) and the bit-width that decides
    full precision. The quantizer's parameters live in ``module`` (`quantizer_params`)."""
    bits = tuple(module.bits if bits is None else bits)
    bit_width = bits_at(bits, precision)
    params = quantizer.at(quantizer_params(module, quantizer, role, x, bits), precision)
    return (
        quantizer.quantize(x, params, bit_width),
        quantizer.grid_scale(x, params, bit_width),
        quantizer.effective_bits(bit_width),
    )


def _quantize_weight(module: nn.Module, kernel: jax.Array, precision) -> jax.Array:
    return on_grid(module, module.spec.weight, "weight", kernel, precision)[0]


def _quantize_input(module: nn.Module, x: jax.Array, precision) -> jax.Array:
    return on_grid(module, module.spec.activation, "act", x, precision)[0]


def check_exact_codes(module: nn.Module, dtype) -> None:
    """A low-precision compute dtype holds integer codes exactly only up to `q.max_exact_bits`
    (bfloat16: 8 bits): raise `ConfigError` for a quantized bit-width above that."""
    limit = q.max_exact_bits(dtype)
    wide = tuple(b for b in module.bits if limit < b < q.FP_BITS)
    if wide:
        name = jnp.dtype(dtype).name
        raise ConfigError(
            f"{type(module).__name__} {module.name}: bits {wide} with {name} inputs: "
            f"{name} carries "
            f"integer codes exactly only up to {limit} bits; use dtype float32 for "
            f"{limit + 1}..16 bits"
        )


def _grid_operands(module: nn.Module, x: jax.Array, kernel: jax.Array, precision):
    """``(n_x, n_w, scale)`` for a low-precision ``x``: the integer-valued operands in ``x``'s
    dtype and ``stop_gradient(s_x * s_w)``, so ``conv(n_x, n_w) * scale`` is ``conv(x_hat, w_hat)``
    on the exact grid (module docstring). Quantizes ``x.astype(float32)``."""
    dtype = x.dtype
    if not all(
        isinstance(qz, q.FullPrecision) for qz in (module.spec.weight, module.spec.activation)
    ):
        check_exact_codes(module, dtype)
    x_hat, s_x, b_x = on_grid(
        module, module.spec.activation, "act", x.astype(jnp.float32), precision
    )
    w_hat, s_w, b_w = on_grid(module, module.spec.weight, "weight", kernel, precision)
    n_x = q.grid_integers(x_hat, s_x, b_x).astype(dtype)
    n_w = q.grid_integers(w_hat, s_w, b_w).astype(dtype)
    return (
        n_x,
        n_w,
        jax.lax.stop_gradient(jnp.asarray(s_x, jnp.float32) * jnp.asarray(s_w, jnp.float32)),
    )


def _integer_conv(x, kernel, strides, padding):
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        strides,
        padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=jnp.int32,
    )


class QuantConv(nn.Module):
    """2-D convolution (NHWC) with quantized weights and inputs at ``bits[precision]``;
    ``feature_group_count`` > 1 makes it grouped (``= C_in``: depthwise, as MobileNetV2's).
    Output in the input's dtype; bfloat16 inputs run the exact-grid conv (module docstring).
    How the conv is lowered is the `layers.conv.Lowering` in effect when it is traced."""

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: Any = "SAME"
    use_bias: bool = False
    bits: tuple[int, ...] = (q.FP_BITS,)
    spec: QuantSpec = QuantSpec()
    kernel_init: Callable = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    feature_group_count: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, precision) -> jax.Array:
        groups = self.feature_group_count
        if groups < 1 or x.shape[-1] % groups or self.features % groups:
            raise ConfigError(
                f"QuantConv: {x.shape[-1]} input and {self.features} output channels do not "
                f"split into {groups} groups"
            )
        shape = tuple(self.kernel_size) + (x.shape[-1] // groups, self.features)
        if isinstance(self.spec.weight, q.StoredCodes):
            if groups != 1:
                raise ConfigError(
                    "weight='codes' (the vertical-layered artefact) supports ungrouped convs only"
                )
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
        code_step = self.param(
            "code_step",
            nn.initializers.ones,
            (self.features,) if self.spec.weight.per_channel else (),
            jnp.float32,
        )
        bit_width = bits_at(self.bits, precision)
        if self.spec.execution == "fake_quant":
            kernel = q.midrise_dequantize(codes, code_step, bit_width)
            return lowering.precision_conv(
                _quantize_input(self, x, precision),
                kernel.astype(x.dtype),
                self.strides,
                self.padding,
            )
        act_step = quantizer_params(self, self.spec.activation, "act", x)["step"][precision]
        a = q.lsq_codes(x, act_step, bit_width, signed=False)
        strides = tuple(self.strides)
        if self.spec.execution == "integer":
            accumulated = _integer_conv(a, codes, strides, self.padding)
        else:
            planes = max(b for b in self.bits if b < q.FP_BITS)  # codes have at most this many bits
            accumulated = sum(
                jnp.left_shift(
                    _integer_conv(a, jnp.right_shift(codes, i) & 1, strides, self.padding), i
                )
                for i in range(planes)
            )
        window_sums = _integer_conv(
            a, jnp.ones(shape[:-1] + (1,), jnp.int32), strides, self.padding
        )
        odd_levels = (
            2 * accumulated - (jnp.left_shift(1, bit_width) - 1) * window_sums
        )  # 2 (u - c) summed
        return odd_levels.astype(jnp.float32) * (act_step * code_step * 0.5)

    def _conv(self, x, precision, shape):
        kernel = self.param("kernel", self.kernel_init, shape)
        conv = functools.partial(
            lowering.precision_conv,
            strides=self.strides,
            padding=self.padding,
            groups=self.feature_group_count,
        )
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

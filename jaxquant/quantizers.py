"""Pure quantizer functions with straight-through estimators.

The bit-width may be an array (traced): bounds such as ``Qp = 2**(b-1) - 1`` are computed
arithmetically, so one compiled function serves every bit-width and ``jax.vmap`` over a vector
of bit-widths runs them all at once. A bit-width of ``FP_BITS`` (32) or more means full
precision: every quantizer passes its input through (DoReFa with its own FP form). A traced
bit-width computes both the quantized and the full-precision form and selects with
``jnp.where``; a static one (a Python or NumPy int, as the unrolled multi-precision step passes)
picks its branch in Python and computes only that one.

Quantizers here know nothing about layers; they take arrays and return fake-quantized arrays
(values on the quantization grid, in the input's units) with the gradients of the papers.
They compute in float32: a bfloat16 input is cast up and the result is float32. Every grid is
``x_hat = n * s`` with n integer-valued (the ``*_grid_scale`` functions give s, `grid_integers`
gives n), which is how a layer feeds a bfloat16 conv exact operands (`jaxquant.layers`).
"""
from __future__ import annotations

import functools
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant import nesting
from jaxquant.errors import BitWidthError

FP_BITS = 32
"""A bit-width at or above this means full precision (no quantization)."""

# The bit-widths each quantizer family can represent, for static validation of a model's tuple.
SUPPORTED_BITS = {
    "lsq": tuple(range(2, 17)) + (FP_BITS,),
    "dorefa": tuple(range(1, 17)) + (FP_BITS,),
    "interval": tuple(range(2, 17)) + (FP_BITS,),
    "vertical": tuple(range(1, 17)) + (FP_BITS,),
    "none": (FP_BITS,),
}


def validate_bits(bits: Iterable[int], quantizer: str) -> tuple[int, ...]:
    """Check a static tuple of bit-widths against a quantizer family; return it as a tuple.

    Raises `BitWidthError` naming the offending value and the supported range.
    """
    if quantizer not in SUPPORTED_BITS:
        raise BitWidthError(f"unknown quantizer {quantizer!r}; choose one of {sorted(SUPPORTED_BITS)}")
    bits = tuple(bits)
    if not bits:
        raise BitWidthError("no bit-widths given; pass at least one, e.g. bits=(2, 4, 8)")
    allowed = SUPPORTED_BITS[quantizer]
    for b in bits:
        if not isinstance(b, int) or isinstance(b, bool) or b not in allowed:
            lo, hi = min(allowed), max(a for a in allowed if a < FP_BITS) if len(allowed) > 1 else FP_BITS
            raise BitWidthError(
                f"bit-width {b!r} is not supported by the {quantizer} quantizer; use integers "
                f"{lo}..{hi} or {FP_BITS} for full precision")
    if len(set(bits)) != len(bits):
        raise BitWidthError(f"bit-widths {bits} contain duplicates; list each bit-width once")
    return bits


def _as_bits(bits) -> jax.Array:
    return jnp.asarray(bits, dtype=jnp.int32)


def _pow2(exponent, dtype=jnp.float32) -> jax.Array:
    """Exactly ``2**exponent`` (``jnp.exp2`` is off by ulps on CPU from 2^13 on). Exponents
    are capped at 30: a full-precision bit-width (32) never uses its range."""
    return jnp.ldexp(jnp.ones((), dtype), jnp.minimum(_as_bits(exponent), 30))


def is_low_precision(dtype) -> bool:
    """A float narrower than 32 bits (bfloat16, float16)."""
    dtype = jnp.dtype(dtype)
    return bool(jnp.issubdtype(dtype, jnp.floating)) and dtype.itemsize < 4


def as_float32(x) -> jax.Array:
    """``x`` as float32 when it is a narrower float (`is_low_precision`); else unchanged.
    Quantizer arithmetic (``x/s``, clip, round) runs in float32, and a grid value ``n s`` would
    not survive a bfloat16 result (8 significant bits), so low-precision inputs give float32
    outputs."""
    x = jnp.asarray(x)
    return x.astype(jnp.float32) if is_low_precision(x.dtype) else x


def is_full_precision(bits) -> jax.Array:
    """True where the bit-width means full precision (``bits >= FP_BITS``)."""
    return _as_bits(bits) >= FP_BITS


def _is_static(bits) -> bool:
    """Whether ``bits`` is a static bit-width (a Python or NumPy int), not an array."""
    return isinstance(bits, (int, np.integer))


def _static_full_precision(bits) -> bool:
    """True only for a static full-precision bit-width: its quantizer returns the FP form alone."""
    return _is_static(bits) and bits >= FP_BITS


def signed_range(bits) -> tuple[jax.Array, jax.Array]:
    """LSQ signed integer range: ``(Qn, Qp) = (2^(b-1), 2^(b-1) - 1)``, codes in ``[-Qn, Qp]``."""
    half = _pow2(_as_bits(bits) - 1)
    return half, half - 1.0


def unsigned_range(bits) -> tuple[jax.Array, jax.Array]:
    """LSQ unsigned integer range: ``(Qn, Qp) = (0, 2^b - 1)``, codes in ``[0, Qp]``."""
    levels = _pow2(bits)
    return jnp.zeros_like(levels), levels - 1.0


def quant_range(bits, signed: bool) -> tuple[jax.Array, jax.Array]:
    """``(Qn, Qp)`` for a signed or unsigned LSQ grid."""
    return signed_range(bits) if signed else unsigned_range(bits)


# ----------------------------------------------------------------------------------------------
# Straight-through rounding and clipping.

@jax.custom_vjp
def ste_round(x: jax.Array) -> jax.Array:
    """Round half to even; the gradient passes straight through (d round(x)/dx := 1)."""
    return jnp.round(x)


ste_round.defvjp(lambda x: (jnp.round(x), None), lambda _, g: (g,))


def clip_inclusive(x: jax.Array, lower, upper) -> jax.Array:
    """``clip(x, lower, upper)`` whose gradient is 1 inside ``[lower, upper]``, boundaries included
    (as PyTorch's ``clamp``), and 0 outside. Gradients reach ``lower``/``upper`` only from the
    clipped elements, exactly as autodiff of min/max without ties."""
    inside = (x >= lower) & (x <= upper)
    return jnp.where(inside, x, jnp.clip(x, lower, upper))


# ----------------------------------------------------------------------------------------------
# LSQ (Esser et al., ICLR 2020).

@jax.custom_vjp
def _lsq(v, step, qn, qp, grad_scale):
    return jnp.round(jnp.clip(v / step, -qn, qp)) * step


def _lsq_fwd(v, step, qn, qp, grad_scale):
    x = v / step
    return jnp.round(jnp.clip(x, -qn, qp)) * step, (x, step, qn, qp, grad_scale)


def _sum_to_shape(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sum a broadcast result back to the shape of the operand that was broadcast."""
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 and x.shape[lead + i] != 1)
    return jnp.sum(x, axis=axes, keepdims=False).reshape(shape) if axes else x.reshape(shape)


def _lsq_bwd(res, g):
    x, step, qn, qp, grad_scale = res
    below = x <= -qn
    above = x >= qp
    inside = ~(below | above)
    # LSQ eq. (3): d v_hat / d s = -v/s + round(v/s) inside, -Qn below, Qp above.
    dstep_elem = jnp.where(below, -qn, jnp.where(above, qp, jnp.round(x) - x))
    dstep = _sum_to_shape(g * dstep_elem, jnp.shape(step)) * grad_scale
    zero = jnp.zeros_like
    return g * inside.astype(g.dtype), dstep.astype(step.dtype), zero(qn), zero(qp), zero(grad_scale)


_lsq.defvjp(_lsq_fwd, _lsq_bwd)


def lsq_grad_scale(num_elements, bits, signed: bool) -> jax.Array:
    """LSQ step-size gradient scale ``g = 1 / sqrt(N * Qp)``, N the elements sharing one step."""
    _, qp = quant_range(bits, signed)
    return jax.lax.rsqrt(jnp.asarray(num_elements, jnp.float32) * jnp.maximum(qp, 1.0))


def lsq_quantize(v: jax.Array, step: jax.Array, bits, *, signed: bool,
                 num_elements: int | None = None) -> jax.Array:
    """LSQ fake quantization ``v_hat = round(clip(v/s, -Qn, Qp)) * s``.

    Gradients (LSQ paper, eqs. 3 and 5): ``dv_hat/dv = 1`` for ``-Qn < v/s < Qp`` else 0;
    ``dv_hat/ds = round(v/s) - v/s`` inside, ``-Qn`` below, ``Qp`` above, multiplied by
    ``g = 1/sqrt(N*Qp)``. ``step`` is a scalar (per-tensor) or broadcastable to ``v``
    (per-channel); N defaults to the number of elements per step, ``v.size // step.size``.
    At ``bits >= 32`` the input passes through unchanged (and the step gets no gradient).
    """
    v = as_float32(v)
    step = jnp.asarray(step, v.dtype)
    if num_elements is None:
        num_elements = max(v.size // max(step.size, 1), 1)
    if _static_full_precision(bits):
        return v
    qn, qp = quant_range(bits, signed)
    quantized = _lsq(v, step, qn, qp, lsq_grad_scale(num_elements, bits, signed))
    return quantized if _is_static(bits) else jnp.where(is_full_precision(bits), v, quantized)


def lsq_codes(v: jax.Array, step: jax.Array, bits, *, signed: bool) -> jax.Array:
    """The integer codes ``round(clip(v/s, -Qn, Qp))`` as int32 (for export and integer kernels)."""
    v = as_float32(v)
    qn, qp = quant_range(bits, signed)
    return jnp.round(jnp.clip(v / step, -qn, qp)).astype(jnp.int32)


def lsq_init_step(v: jax.Array, bits, *, signed: bool, axis=None) -> jax.Array:
    """LSQ initial step ``s0 = 2 * mean|v| / sqrt(Qp)``; ``axis`` are the axes averaged over
    (None: per tensor; e.g. ``(0, 1, 2)`` for a per-output-channel HWIO kernel, keepdims)."""
    v = as_float32(v)
    _, qp = quant_range(bits, signed)
    mean_abs = jnp.mean(jnp.abs(v), axis=axis, keepdims=axis is not None)
    return jnp.maximum(2.0 * mean_abs / jnp.sqrt(jnp.maximum(qp, 1.0)), 1e-8)


# ----------------------------------------------------------------------------------------------
# DoReFa, as adapted by Any-Precision DNN (Yu et al., AAAI 2021; `models/quan_ops.py`).

def _quantize_unit(x: jax.Array, bits) -> jax.Array:
    """DoReFa ``qfn``: ``round(x * n) / n`` with ``n = 2^k - 1``, straight-through gradient."""
    n = _pow2(bits, x.dtype) - 1.0
    return ste_round(x * n) / n


def dorefa_weight(w: jax.Array, bits) -> jax.Array:
    """Any-Precision DoReFa weights: ``w' = tanh(w) / (2 max|tanh w|) + 1/2`` in [0, 1],
    ``w_q = (2 qfn(w', k) - 1) * E`` with ``E = stop_gradient(mean|w|)``; the max is not detached.

    At 32 bits: ``tanh(w) / max|tanh w| * E`` (the Any-Precision code's FP form, not plain w).
    """
    w = as_float32(w)
    scale = jax.lax.stop_gradient(jnp.mean(jnp.abs(w)))
    t = jnp.tanh(w)
    t_max = jnp.max(jnp.abs(t))
    if _static_full_precision(bits):
        return t / t_max * scale
    quantized = (2.0 * _quantize_unit(t / (2.0 * t_max) + 0.5, bits) - 1.0) * scale
    return quantized if _is_static(bits) else jnp.where(is_full_precision(bits), t / t_max * scale, quantized)


def dorefa_activation(x: jax.Array, bits) -> jax.Array:
    """Any-Precision DoReFa activations: ``qfn(clip(x, 0, 1), k)`` (fixed range, no learned clip);
    ReLU at 32 bits. Gradient 1 inside [0, 1] (boundaries included), 0 outside."""
    x = as_float32(x)
    if _static_full_precision(bits):
        return jax.nn.relu(x)
    quantized = _quantize_unit(clip_inclusive(x, 0.0, 1.0), bits)
    return quantized if _is_static(bits) else jnp.where(is_full_precision(bits), jax.nn.relu(x), quantized)


# ----------------------------------------------------------------------------------------------
# MBQuant interval quantizers (Zhong et al., Pattern Recognition 2024).

@jax.custom_vjp
def interval_unit(x: jax.Array, lower, upper, levels) -> jax.Array:
    """``round(n clip((x-l)/(u-l), 0, 1)) / n`` with ``n = levels``: MBQuant's interval
    quantizer on the unit grid. Straight-through rounding; the clip passes gradients only inside
    ``[0, 1]`` (boundaries included), so with ``t = (x-l)/(u-l)`` and ``g_in = g [0 <= t <= 1]``:
    ``dx = g_in/(u-l)``, ``dl = sum g_in (t-1)/(u-l)``, ``du = -sum g_in t/(u-l)``: the autodiff
    of the composition, written out so that the forward keeps only ``x`` (autodiff keeps ``t``
    and the clip masks as tensors) and the backward recomputes ``t``."""
    return _interval_unit_fwd(x, lower, upper, levels)[0]


def _interval_unit_fwd(x, lower, upper, levels):
    t = (x - lower) / (upper - lower)
    return jnp.round(jnp.clip(t, 0.0, 1.0) * levels) / levels, (x, lower, upper, levels)


def _interval_unit_bwd(res, g):
    x, lower, upper, levels = res
    width = upper - lower
    t = (x - lower) / width
    g_in = jnp.where((t >= 0.0) & (t <= 1.0), g, 0.0) / width
    return (_sum_to_shape(g_in, jnp.shape(x)), _sum_to_shape(g_in * (t - 1.0), jnp.shape(lower)),
            _sum_to_shape(-g_in * t, jnp.shape(upper)), jnp.zeros_like(levels))


interval_unit.defvjp(_interval_unit_fwd, _interval_unit_bwd)


def interval_weight(w: jax.Array, lower, upper) -> jax.Array:
    """MBQuant fixed 2-bit weights: ``w~ = clip((w-l)/(u-l), 0, 1)``,
    ``w_hat = 2 round(3 w~)/3 - 1`` in ``{-1, -1/3, 1/3, 1}`` (not rescaled: BN absorbs the scale).
    l and u get gradients only from unclipped elements (`interval_unit`)."""
    w = as_float32(w)
    return 2.0 * interval_unit(w, lower, upper, jnp.float32(3.0)) - 1.0


def interval_activation(x: jax.Array, lower, upper, bits) -> jax.Array:
    """MBQuant b-bit activations on ``[l, u]``: ``x_hat = round((2^b-1) x~) / (2^b-1)`` with
    ``x~ = clip((x-l)/(u-l), 0, 1)`` (`interval_unit`); values in [0, 1], not rescaled.
    Passthrough at 32 bits."""
    x = as_float32(x)
    if _static_full_precision(bits):
        return x
    quantized = interval_unit(x, lower, upper, _pow2(bits, x.dtype) - 1.0)
    return quantized if _is_static(bits) else jnp.where(is_full_precision(bits), x, quantized)


# ----------------------------------------------------------------------------------------------
# Vertical Layering (Wu et al., TPAMI 2023; our reading, see `jaxquant.methods.vertical`).

VERTICAL_CASCADES = ("floor", "round_clip", "round_clip_direct")


def _vertical_grid(x, bits, source_bits: int, cascade: str, rounding: str):
    """Codes and grid of the k-bit sub-network for ``x = w / s_B``.

    Returns ``(codes, level, lowest, highest, below, above, qp)``: ``level`` is the k-bit level
    in units of ``s_k = 2^(B-k) s_B``; ``below``/``above`` mark x outside the k-bit range.
    """
    k = jnp.minimum(_as_bits(bits), source_bits)
    scale_k = _pow2(source_bits - k)
    x_k = x / scale_k
    half_k = _pow2(k - 1)
    if cascade == "floor":
        # Offset-binary mid-rise: u_B = nearest level's code, then drop B-k LSBs.
        u = jnp.clip(jnp.floor(x + _pow2(source_bits - 1)), 0.0, _pow2(source_bits) - 1.0).astype(jnp.int32)
        codes = nesting.floor_cascade(u, source_bits, k)
        level = nesting.midrise_level(codes, k)
        highest = half_k - 0.5
        below, above = x_k < -half_k, x_k >= half_k
    else:
        # Two's-complement mid-tread: q_B = round(x) clipped, then the round-clip cascade.
        q = jnp.clip(jnp.round(x), -_pow2(source_bits - 1), _pow2(source_bits - 1) - 1.0).astype(jnp.int32)
        nest = nesting.round_clip_cascade if cascade == "round_clip" else nesting.round_clip_direct
        codes = nest(q, source_bits, k, rounding)
        level = codes.astype(jnp.float32)
        highest = half_k - 1.0
        below, above = x_k <= -half_k, x_k >= highest
    lowest = -half_k + 0.5 if cascade == "floor" else -half_k
    return codes, level, lowest, highest, below, above, x_k, scale_k


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _vertical(w, step, bits, grad_scale, source_bits, cascade, rounding):
    x = w / step
    _, level, *_, scale_k = _vertical_grid(x, bits.astype(jnp.int32), source_bits, cascade, rounding)
    return level * (step * scale_k)


def _vertical_fwd(w, step, bits, grad_scale, source_bits, cascade, rounding):
    return _vertical(w, step, bits, grad_scale, source_bits, cascade, rounding), (w, step, bits, grad_scale)


def _vertical_bwd(source_bits, cascade, rounding, res, g):
    w, step, bits, grad_scale = res
    x = w / step
    _, level, lowest, highest, below, above, x_k, scale_k = _vertical_grid(
        x, bits.astype(jnp.int32), source_bits, cascade, rounding)
    inside = ~(below | above)
    # LSQ's step gradient on the k-bit grid (level - x_k inside, the end levels outside),
    # chained through s_k = 2^(B-k) s_B.
    dstep_elem = jnp.where(below, lowest, jnp.where(above, highest, level - x_k)) * scale_k
    dstep = _sum_to_shape(g * dstep_elem, jnp.shape(step)) * grad_scale
    return g * inside.astype(g.dtype), dstep.astype(step.dtype), jnp.zeros_like(bits), jnp.zeros_like(grad_scale)


_vertical.defvjp(_vertical_fwd, _vertical_bwd)


def vertical_grad_scale(num_elements, bits, source_bits: int, cascade: str = "floor") -> jax.Array:
    """``g_k = 1 / sqrt(N * Qp_k)``, Qp_k the largest k-bit level: ``(2^k-1)/2`` mid-rise (floor),
    ``2^(k-1)-1`` mid-tread (round-clip), at least 1/2."""
    k = jnp.minimum(_as_bits(bits), source_bits)
    qp = _pow2(k - 1) - (0.5 if cascade == "floor" else 1.0)
    return jax.lax.rsqrt(jnp.asarray(num_elements, jnp.float32) * jnp.maximum(qp, 0.5))


def vertical_weight(w: jax.Array, step: jax.Array, bits, *, source_bits: int = 8, cascade: str = "floor",
                    rounding: str = "half_up", num_elements: int | None = None) -> jax.Array:
    """Vertical-Layering weights at k bits, derived from the B-bit source code by a cascade.

    ``cascade='floor'`` (default): offset-binary mid-rise codes ``u_B = clip(floor(w/s + 2^(B-1)),
    0, 2^B-1)``, ``u_k = u_B >> (B-k)``, ``w_k = (u_k - (2^k-1)/2) * 2^(B-k) s``: the k-bit model
    is the top k bit planes. ``'round_clip'``: mid-tread ``q_B = clip(round(w/s))`` then the
    sequential cascade ``q_{b-1} = clip(round(q_b/2))`` (``rounding``), ``w_k = q_k 2^(B-k) s``;
    ``'round_clip_direct'``: Double Rounding's one-shot ``clip(round(q_B / 2^(B-k)))``.

    Gradients (straight-through through the rounding and the cascade): ``dw_k/dw = 1`` inside the
    k-bit range, 0 outside; ``dw_k/ds = 2^(B-k) * (level_k - w/s_k)`` inside and the end level
    outside, times ``g_k = 1/sqrt(N Qp_k)`` (`vertical_grad_scale`). At 32 bits w passes through.
    """
    if cascade not in VERTICAL_CASCADES:
        raise ValueError(f"unknown cascade {cascade!r}; choose one of {VERTICAL_CASCADES}")
    w = as_float32(w)
    step = jnp.asarray(step, w.dtype)
    if num_elements is None:
        num_elements = max(w.size // max(step.size, 1), 1)
    if _static_full_precision(bits):
        return w
    bits_f = _as_bits(bits).astype(jnp.float32)
    quantized = _vertical(w, step, bits_f, vertical_grad_scale(num_elements, bits, source_bits, cascade),
                          source_bits, cascade, rounding)
    return quantized if _is_static(bits) else jnp.where(is_full_precision(bits), w, quantized)


def vertical_codes(w: jax.Array, step: jax.Array, bits, *, source_bits: int = 8, cascade: str = "floor",
                   rounding: str = "half_up") -> jax.Array:
    """The k-bit integer codes of `vertical_weight` (offset-binary for ``floor``, two's complement
    otherwise), int32. ``vertical_weight == level(codes) * 2^(B-k) * step`` exactly."""
    w = as_float32(w)
    codes, *_ = _vertical_grid(w / jnp.asarray(step, w.dtype), bits, source_bits, cascade, rounding)
    return codes


def midrise_dequantize(codes: jax.Array, step: jax.Array, bits) -> jax.Array:
    """``(u - (2^k-1)/2) * s_k`` for k-bit offset-binary codes u: equal, bit for bit, to
    `vertical_weight` (``cascade='floor'``) when ``s_k = 2^(B-k) s_B``."""
    return nesting.midrise_level(codes, bits) * step


# ----------------------------------------------------------------------------------------------
# Grids: every fake-quantized value is ``x_hat = n * s``, n integer-valued (bf16 compute).

INTERVAL_WEIGHT_GRID_SCALE = 1.0 / 3.0
"""The grid of `interval_weight`: ``2 round(3 w~)/3 - 1 = (2 code - 3) * 1/3``."""


def max_exact_bits(dtype) -> int:
    """The widest bit-width whose integer codes (``|n| <= 2^b - 1``) ``dtype`` holds exactly:
    its significand bits, ``nmant + 1`` (bfloat16: 8, float16: 11, float32: 24)."""
    return int(jnp.finfo(dtype).nmant) + 1


def _grid_scale(bits, scale) -> jax.Array:
    """``scale`` where quantized, 1 at full precision (a static or traced bit-width)."""
    if _static_full_precision(bits):
        return jnp.ones((), jnp.float32)
    scale = jnp.asarray(scale, jnp.float32)
    return scale if _is_static(bits) else jnp.where(is_full_precision(bits), 1.0, scale)


def lsq_grid_scale(step, bits) -> jax.Array:
    """`lsq_quantize`'s grid: ``v_hat = code * s``, s the step (1 at full precision)."""
    return _grid_scale(bits, step)


def unit_grid_scale(bits) -> jax.Array:
    """The grid of `dorefa_activation` and `interval_activation`: ``code / (2^b - 1)``, so
    ``s = 1 / (2^b - 1)`` (1 at full precision)."""
    return _grid_scale(bits, 1.0 / (_pow2(bits) - 1.0))


def dorefa_weight_grid_scale(w: jax.Array, bits) -> jax.Array:
    """`dorefa_weight`'s grid: ``(2 code/n - 1) E = (2 code - n) * E/n`` (an odd integer times
    ``s = E/n``), ``n = 2^b - 1``, ``E = stop_gradient(mean|w|)`` (1 at full precision)."""
    e = jax.lax.stop_gradient(jnp.mean(jnp.abs(as_float32(w))))
    return _grid_scale(bits, e / (_pow2(bits) - 1.0))


def vertical_grid_scale(step, bits, *, source_bits: int = 8, cascade: str = "floor") -> jax.Array:
    """`vertical_weight`'s grid, ``s_k = 2^(B-k) s``: ``floor`` (mid-rise) ``(u - (2^k-1)/2) s_k
    = (2u - (2^k-1)) * s_k/2``, so ``s = s_k/2``; the round-clip cascades ``q_k * s_k``, so
    ``s = s_k`` (1 at full precision)."""
    k = jnp.minimum(_as_bits(bits), source_bits)
    scale_k = jnp.asarray(step, jnp.float32) * _pow2(source_bits - k)
    return _grid_scale(bits, scale_k * 0.5 if cascade == "floor" else scale_k)


def grid_integers(x_hat: jax.Array, scale, bits) -> jax.Array:
    """The integer-valued ``n`` of a fake-quantized ``x_hat = n * s`` (float32), the operand a
    bfloat16 conv holds exactly (``|n| <= 256``; `max_exact_bits`).

    Value ``round(x_hat / s)``, snapped to the integer; gradient that of ``x_hat /
    stop_gradient(s)``, so ``conv(n_x, n_w) * stop_gradient(s_x s_w)`` has the gradients of
    ``conv(x_hat, w_hat)`` and a step size gets its gradient only through its quantizer.
    Full precision (``bits >= 32``; ``s`` is 1 there): ``x_hat`` unchanged, not snapped.
    """
    x_hat = as_float32(x_hat)
    if _static_full_precision(bits):
        return x_hat
    snapped = ste_round(x_hat / jax.lax.stop_gradient(jnp.asarray(scale, jnp.float32)))
    return snapped if _is_static(bits) else jnp.where(is_full_precision(bits), x_hat, snapped)

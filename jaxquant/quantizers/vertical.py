"""Vertical Layering's nested weights (Wu et al., TPAMI 2023): one B-bit source code per weight,
every k-bit sub-network's code derived from it by a cascade (the k-bit model is the top k bit
planes with ``floor``). Our reading of the paper: docs/methods/vertical.md.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxquant import nesting
from jaxquant.errors import BitWidthError, ConfigError
from jaxquant.quantizers import bins as _bins
from jaxquant.quantizers.base import FP_BITS, Quantizer
from jaxquant.quantizers.core import (
    as_bits,
    as_float32,
    check_bits,
    grid_scale_or_one,
    is_full_precision,
    is_static,
    pow2,
    signed_range,
    static_full_precision,
    sum_to_shape,
)
from jaxquant.quantizers.lsq import lsq_init_step

VERTICAL_BITS = tuple(range(1, 17)) + (FP_BITS,)

VERTICAL_CASCADES = ("floor", "round_clip", "round_clip_direct")


def _vertical_grid(x, bits, source_bits: int, cascade: str, rounding: str):
    """Codes and grid of the k-bit sub-network for ``x = w / s_B``.

    Returns ``(codes, level, lowest, highest, below, above, qp)``: ``level`` is the k-bit level
    in units of ``s_k = 2^(B-k) s_B``; ``below``/``above`` mark x outside the k-bit range.
    """
    k = jnp.minimum(as_bits(bits), source_bits)
    scale_k = pow2(source_bits - k)
    x_k = x / scale_k
    half_k = pow2(k - 1)
    if cascade == "floor":
        # Offset-binary mid-rise: u_B = nearest level's code, then drop B-k LSBs.
        u = jnp.clip(jnp.floor(x + pow2(source_bits - 1)), 0.0, pow2(source_bits) - 1.0).astype(
            jnp.int32
        )
        codes = nesting.floor_cascade(u, source_bits, k)
        level = nesting.midrise_level(codes, k)
        highest = half_k - 0.5
        below, above = x_k < -half_k, x_k >= half_k
    else:
        # Two's-complement mid-tread: q_B = round(x) clipped, then the round-clip cascade.
        q = jnp.clip(jnp.round(x), -pow2(source_bits - 1), pow2(source_bits - 1) - 1.0).astype(
            jnp.int32
        )
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
    _, level, *_, scale_k = _vertical_grid(
        x, bits.astype(jnp.int32), source_bits, cascade, rounding
    )
    return level * (step * scale_k)


def _vertical_fwd(w, step, bits, grad_scale, source_bits, cascade, rounding):
    return _vertical(w, step, bits, grad_scale, source_bits, cascade, rounding), (
        w,
        step,
        bits,
        grad_scale,
    )


def _vertical_bwd(source_bits, cascade, rounding, res, g):
    w, step, bits, grad_scale = res
    x = w / step
    _, level, lowest, highest, below, above, x_k, scale_k = _vertical_grid(
        x, bits.astype(jnp.int32), source_bits, cascade, rounding
    )
    inside = ~(below | above)
    # LSQ's step gradient on the k-bit grid (level - x_k inside, the end levels outside),
    # chained through s_k = 2^(B-k) s_B.
    dstep_elem = jnp.where(below, lowest, jnp.where(above, highest, level - x_k)) * scale_k
    dstep = sum_to_shape(g * dstep_elem, jnp.shape(step)) * grad_scale
    return (
        g * inside.astype(g.dtype),
        dstep.astype(step.dtype),
        jnp.zeros_like(bits),
        jnp.zeros_like(grad_scale),
    )


_vertical.defvjp(_vertical_fwd, _vertical_bwd)


def vertical_grad_scale(num_elements, bits, source_bits: int, cascade: str = "floor") -> jax.Array:
    """``g_k = 1 / sqrt(N * Qp_k)``, Qp_k the largest k-bit level: ``(2^k-1)/2`` mid-rise (floor),
    ``2^(k-1)-1`` mid-tread (round-clip), at least 1/2."""
    k = jnp.minimum(as_bits(bits), source_bits)
    qp = pow2(k - 1) - (0.5 if cascade == "floor" else 1.0)
    return jax.lax.rsqrt(jnp.asarray(num_elements, jnp.float32) * jnp.maximum(qp, 0.5))


def vertical_weight(
    w: jax.Array,
    step: jax.Array,
    bits,
    *,
    source_bits: int = 8,
    cascade: str = "floor",
    rounding: str = "half_up",
    num_elements: int | None = None,
) -> jax.Array:
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
    if static_full_precision(bits):
        return w
    bits_f = as_bits(bits).astype(jnp.float32)
    quantized = _vertical(
        w,
        step,
        bits_f,
        vertical_grad_scale(num_elements, bits, source_bits, cascade),
        source_bits,
        cascade,
        rounding,
    )
    return quantized if is_static(bits) else jnp.where(is_full_precision(bits), w, quantized)


def vertical_codes(
    w: jax.Array,
    step: jax.Array,
    bits,
    *,
    source_bits: int = 8,
    cascade: str = "floor",
    rounding: str = "half_up",
) -> jax.Array:
    """The k-bit integer codes of `vertical_weight` (offset-binary for ``floor``, two's complement
    otherwise), int32. ``vertical_weight == level(codes) * 2^(B-k) * step`` exactly."""
    w = as_float32(w)
    codes, *_ = _vertical_grid(w / jnp.asarray(step, w.dtype), bits, source_bits, cascade, rounding)
    return codes


def midrise_dequantize(codes: jax.Array, step: jax.Array, bits) -> jax.Array:
    """``(u - (2^k-1)/2) * s_k`` for k-bit offset-binary codes u: equal, bit for bit, to
    `vertical_weight` (``cascade='floor'``) when ``s_k = 2^(B-k) s_B``."""
    return nesting.midrise_level(codes, bits) * step


def vertical_grid_scale(step, bits, *, source_bits: int = 8, cascade: str = "floor") -> jax.Array:
    """`vertical_weight`'s grid, ``s_k = 2^(B-k) s``: ``floor`` (mid-rise) ``(u - (2^k-1)/2) s_k
    = (2u - (2^k-1)) * s_k/2``, so ``s = s_k/2``; the round-clip cascades ``q_k * s_k``, so
    ``s = s_k`` (1 at full precision)."""
    k = jnp.minimum(as_bits(bits), source_bits)
    scale_k = jnp.asarray(step, jnp.float32) * pow2(source_bits - k)
    return grid_scale_or_one(bits, scale_k * 0.5 if cascade == "floor" else scale_k)


def vertical_bins(
    w: jax.Array,
    step: jax.Array,
    bits,
    *,
    source_bits: int = 8,
    cascade: str = "floor",
    max_bits: int | None = None,
    units: str = "weight",
    stop_step_gradient: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array, int]:
    """Bins of Vertical-Layering weights at k bits: the k-bit codes of `vertical_codes`
    (offset-binary mid-rise for ``floor``, level ``(u - (2^k-1)/2) s_k``; two's-complement
    mid-tread otherwise, level ``q s_k``), with the k-bit step ``s_k = 2^(B-k) s_B``; code units
    divide by ``s_k``. ``step`` is the source step (scalar or per output channel); ``max_bits``
    (static, default B) caps k and sets the ``2^max_bits`` bins."""
    _bins.check_units(units)
    step = jnp.asarray(step, w.dtype)
    per_channel = step.ndim > 0 and step.size > 1
    max_bits = source_bits if max_bits is None else min(max_bits, source_bits)
    k = jnp.minimum(jnp.asarray(bits, jnp.int32), max_bits)
    codes = jax.lax.stop_gradient(
        vertical_codes(w, step, k, source_bits=source_bits, cascade=cascade)
    )
    half = signed_range(k)[0]  # 2^(k-1)
    if cascade == "floor":
        index, offset = codes, half - 0.5  # level = u - (2^k - 1)/2
    else:
        index, offset = codes + half.astype(jnp.int32), half  # level = q = index - 2^(k-1)
    index, num_bins = _bins.channel_bins(index, 2**max_bits, per_channel)
    step_used = jax.lax.stop_gradient(step) if stop_step_gradient else step
    step_k = step_used * jnp.ldexp(jnp.ones((), w.dtype), source_bits - k)
    levels_per_code = jnp.arange(2**max_bits, dtype=w.dtype) - offset.astype(w.dtype)
    values = w / step_k if units == "code" else w
    return (
        values,
        index,
        _bins.per_channel_levels(levels_per_code, step_k, per_channel, units),
        num_bins,
    )


@dataclasses.dataclass(frozen=True)
class Vertical(Quantizer):
    """`vertical_weight`: one learned source step at ``source_bits``, shared by every
    precision (LSQ's init at B bits); every precision's weights by ``cascade``."""

    source_bits: int = 8
    cascade: str = "floor"
    per_channel: bool = False
    name: ClassVar[str] = "vertical"
    supported_bits: ClassVar[tuple[int, ...]] = VERTICAL_BITS
    param_names: ClassVar[tuple[str, ...]] = ("step",)
    has_bins: ClassVar[bool] = True

    def __post_init__(self):
        if self.cascade not in VERTICAL_CASCADES:
            raise ConfigError(
                f"unknown cascade {self.cascade!r}; choose one of {VERTICAL_CASCADES}"
            )

    def validate(self, bits):
        check_bits((self.source_bits,), VERTICAL_BITS, self.name)
        bits = check_bits(bits, VERTICAL_BITS, self.name)
        for b in bits:
            if self.source_bits < b < FP_BITS:
                raise BitWidthError(
                    f"bit-width {b} is above the source bit-width {self.source_bits}; "
                    f"raise source_bits or drop {b}"
                )
        return bits

    def init(self, x, bits):
        axis = tuple(range(x.ndim - 1)) if self.per_channel else None
        step = lsq_init_step(x, self.source_bits, signed=True, axis=axis)
        return {"step": step.reshape((-1,) if self.per_channel else ())}

    def quantize(self, x, params, bits):
        return vertical_weight(
            x, params["step"], bits, source_bits=self.source_bits, cascade=self.cascade
        )

    def grid_scale(self, x, params, bits):
        return vertical_grid_scale(
            params["step"], bits, source_bits=self.source_bits, cascade=self.cascade
        )

    def code_bits(self, bits) -> int:
        return min(super().code_bits(bits), self.source_bits)

    def bins(self, x, params, bits, *, max_bits, units="weight", stop_step_gradient=False):
        return vertical_bins(
            x,
            params["step"],
            bits,
            source_bits=self.source_bits,
            cascade=self.cascade,
            max_bits=max_bits,
            units=units,
            stop_step_gradient=stop_step_gradient,
        )


@dataclasses.dataclass(frozen=True)
class StoredCodes(Quantizer):
    """The inference form of a Vertical-Layering layer (`jaxquant.load_vertical`): the kernel is
    stored as k-bit offset-binary codes ``codes`` with a step ``code_step`` (per output channel
    with ``per_channel``); weight ``(u - (2^k-1)/2) * step`` (`midrise_dequantize`)."""

    per_channel: bool = False
    name: ClassVar[str] = "codes"
    supported_bits: ClassVar[tuple[int, ...]] = VERTICAL_BITS

    def quantize(self, x, params, bits):
        raise ConfigError("weight='codes' is an inference form of QuantConv only")

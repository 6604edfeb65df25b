"""MBQuant's interval quantizers (Zhong et al., Pattern Recognition 2024).

Values are clipped to a learned interval ``[l, u]`` and rounded on the unit grid: fixed 2-bit
weights ``2 round(3 w~)/3 - 1`` and b-bit activations ``round((2^b-1) x~)/(2^b-1)``,
``~`` meaning ``clip((v-l)/(u-l), 0, 1)``. Not rescaled: the following BatchNorm absorbs it.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxquant.quantizers.base import INTEGER_BITS, Quantizer
from jaxquant.quantizers.core import (
    as_float32,
    is_full_precision,
    is_static,
    pow2,
    static_full_precision,
    sum_to_shape,
    unit_grid_scale,
)

ARCSINE_HALF_NORMAL = 1.0 / (1.0 - 2.0 / 3.141592653589793) ** 0.5
"""``1/sqrt(1 - 2/pi)``: the official activation init's ``3 std / sqrt(1 - 2/pi)`` factor."""


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
    return (
        sum_to_shape(g_in, jnp.shape(x)),
        sum_to_shape(g_in * (t - 1.0), jnp.shape(lower)),
        sum_to_shape(-g_in * t, jnp.shape(upper)),
        jnp.zeros_like(levels),
    )


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
    if static_full_precision(bits):
        return x
    quantized = interval_unit(x, lower, upper, pow2(bits, x.dtype) - 1.0)
    return quantized if is_static(bits) else jnp.where(is_full_precision(bits), x, quantized)


INTERVAL_WEIGHT_GRID_SCALE = 1.0 / 3.0
"""The grid of `interval_weight`: ``2 round(3 w~)/3 - 1 = (2 code - 3) * 1/3``."""


@dataclasses.dataclass(frozen=True)
class IntervalWeight(Quantizer):
    """`interval_weight`: fixed 2-bit weights on a learned ``[l, u]`` shared by every
    precision, initialised at ``-/+ 3 std(w)`` (MBQuant's single-branch case)."""

    name: ClassVar[str] = "interval_weight"
    supported_bits: ClassVar[tuple[int, ...]] = INTEGER_BITS
    param_names: ClassVar[tuple[str, ...]] = ("lower", "upper")

    def init(self, x, bits):
        spread = 3.0 * jnp.std(as_float32(x))
        return {"lower": -spread, "upper": spread}

    def quantize(self, x, params, bits):
        return interval_weight(x, params["lower"], params["upper"])

    def grid_scale(self, x, params, bits):
        return INTERVAL_WEIGHT_GRID_SCALE

    def effective_bits(self, bits):
        return 2  # 2 bits whatever the precision

    def code_bits(self, bits) -> int:
        return 2


@dataclasses.dataclass(frozen=True)
class IntervalActivation(Quantizer):
    """`interval_activation`: b-bit on a learned ``[l, u]`` per bit-width, initialised at
    ``l = min x``, ``u = max(3 std(x) / sqrt(1 - 2/pi), l + 1e-3)`` (the official init)."""

    name: ClassVar[str] = "interval"
    supported_bits: ClassVar[tuple[int, ...]] = INTEGER_BITS
    param_names: ClassVar[tuple[str, ...]] = ("lower", "upper")

    def init(self, x, bits):
        x = as_float32(x)
        lower = jnp.min(x)
        upper = jnp.maximum(3.0 * jnp.std(x, ddof=1) * ARCSINE_HALF_NORMAL, lower + 1e-3)
        return {"lower": jnp.full((len(bits),), lower), "upper": jnp.full((len(bits),), upper)}

    def at(self, params, precision):
        return {"lower": params["lower"][precision], "upper": params["upper"][precision]}

    def quantize(self, x, params, bits):
        return interval_activation(x, params["lower"], params["upper"], bits)

    def grid_scale(self, x, params, bits):
        return unit_grid_scale(bits)

    def for_signed_inputs(self):
        return self  # the interval is learned, from the inputs' minimum

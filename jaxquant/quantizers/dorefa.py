"""DoReFa quantizers as Any-Precision DNN adapts them (Yu et al., AAAI 2021).

Weights ``(2 qfn(tanh w / 2max|tanh w| + 1/2) - 1) * mean|w|``, activations
``qfn(clip(x, 0, 1))``, ``qfn(x) = round(x n)/n`` with ``n = 2^k - 1``; no learned parameters.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxquant.quantizers import bins as _bins
from jaxquant.quantizers.base import FP_BITS, Quantizer
from jaxquant.quantizers.core import (
    as_float32,
    clip_inclusive,
    grid_scale_or_one,
    is_full_precision,
    is_static,
    pow2,
    static_full_precision,
    ste_round,
    unit_grid_scale,
)

DOREFA_BITS = tuple(range(1, 17)) + (FP_BITS,)


def _quantize_unit(x: jax.Array, bits) -> jax.Array:
    """DoReFa ``qfn``: ``round(x * n) / n`` with ``n = 2^k - 1``, straight-through gradient."""
    n = pow2(bits, x.dtype) - 1.0
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
    if static_full_precision(bits):
        return t / t_max * scale
    quantized = (2.0 * _quantize_unit(t / (2.0 * t_max) + 0.5, bits) - 1.0) * scale
    return (
        quantized
        if is_static(bits)
        else jnp.where(is_full_precision(bits), t / t_max * scale, quantized)
    )


def dorefa_activation(x: jax.Array, bits) -> jax.Array:
    """Any-Precision DoReFa activations: ``qfn(clip(x, 0, 1), k)`` (fixed range, no learned clip);
    ReLU at 32 bits. Gradient 1 inside [0, 1] (boundaries included), 0 outside."""
    x = as_float32(x)
    if static_full_precision(bits):
        return jax.nn.relu(x)
    quantized = _quantize_unit(clip_inclusive(x, 0.0, 1.0), bits)
    return (
        quantized
        if is_static(bits)
        else jnp.where(is_full_precision(bits), jax.nn.relu(x), quantized)
    )


def dorefa_weight_grid_scale(w: jax.Array, bits) -> jax.Array:
    """`dorefa_weight`'s grid: ``(2 code/n - 1) E = (2 code - n) * E/n`` (an odd integer times
    ``s = E/n``), ``n = 2^b - 1``, ``E = stop_gradient(mean|w|)`` (1 at full precision)."""
    e = jax.lax.stop_gradient(jnp.mean(jnp.abs(as_float32(w))))
    return grid_scale_or_one(bits, e / (pow2(bits) - 1.0))


def dorefa_bins(
    w: jax.Array, bits, *, max_bits: int, units: str = "weight"
) -> tuple[jax.Array, jax.Array, jax.Array, int]:
    """Bins of Any-Precision's DoReFa weights. The quantizer rounds
    ``x = n (tanh(w) / (2 max|tanh w|) + 1/2)`` (``n = 2^k - 1``) to the code ``c`` and outputs
    ``(2c/n - 1) E``, ``E = stop_gradient(mean|w|)``. Code units: ``x`` against ``c``; weight
    units: the same affine map applied to both, ``tanh(w)/max|tanh w| * E`` (the code's FP form)
    against ``(2c/n - 1) E``. Gradients flow through tanh and the max, as in the quantizer;
    there is no step size (``stop_step_gradient`` does not apply).

    This is our extension: the paper regularises LSQ weights only.
    """
    _bins.check_units(units)
    bits = jnp.minimum(jnp.asarray(bits, jnp.int32), max_bits)
    n = jnp.ldexp(jnp.ones((), w.dtype), bits) - 1.0
    t = jnp.tanh(w)
    unit = t / (2.0 * jnp.max(jnp.abs(t))) + 0.5
    x = unit * n
    codes = jax.lax.stop_gradient(jnp.clip(jnp.round(x), 0.0, n)).astype(jnp.int32)
    levels = jnp.arange(2**max_bits, dtype=w.dtype)
    if units == "weight":
        scale = jax.lax.stop_gradient(jnp.mean(jnp.abs(w)))
        x, levels = (2.0 * unit - 1.0) * scale, (2.0 * levels / n - 1.0) * scale
    return x, codes, levels, 2**max_bits


@dataclasses.dataclass(frozen=True)
class DoReFaWeight(Quantizer):
    """`dorefa_weight`: per tensor, no learned parameters; its FP form is
    ``tanh(w)/max|tanh w| E``."""

    name: ClassVar[str] = "dorefa"
    supported_bits: ClassVar[tuple[int, ...]] = DOREFA_BITS
    has_bins: ClassVar[bool] = True

    def quantize(self, x, params, bits):
        return dorefa_weight(x, bits)

    def grid_scale(self, x, params, bits):
        return dorefa_weight_grid_scale(x, bits)

    def bins(self, x, params, bits, *, max_bits, units="weight", stop_step_gradient=False):
        return dorefa_bins(x, bits, max_bits=max_bits, units=units)


@dataclasses.dataclass(frozen=True)
class DoReFaActivation(Quantizer):
    """`dorefa_activation`: the fixed range [0, 1], no learned parameters; ReLU at 32 bits."""

    name: ClassVar[str] = "dorefa"
    supported_bits: ClassVar[tuple[int, ...]] = DOREFA_BITS

    def quantize(self, x, params, bits):
        return dorefa_activation(x, bits)

    def grid_scale(self, x, params, bits):
        return unit_grid_scale(bits)

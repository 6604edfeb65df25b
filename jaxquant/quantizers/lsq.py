"""LSQ: Learned Step Size Quantization (Esser et al., ICLR 2020).

``v_hat = round(clip(v/s, -Qn, Qp)) * s`` with a learned step s per bit-width; the step's
gradient is scaled by ``1/sqrt(N Qp)`` and it starts at ``2 mean|v| / sqrt(Qp)``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxquant.quantizers import bins as _bins
from jaxquant.quantizers.base import INTEGER_BITS, Quantizer
from jaxquant.quantizers.core import (
    as_float32,
    grid_scale_or_one,
    is_full_precision,
    is_static,
    quant_range,
    signed_range,
    static_full_precision,
    sum_to_shape,
)


@jax.custom_vjp
def _lsq(v, step, qn, qp, grad_scale):
    return jnp.round(jnp.clip(v / step, -qn, qp)) * step


def _lsq_fwd(v, step, qn, qp, grad_scale):
    x = v / step
    return jnp.round(jnp.clip(x, -qn, qp)) * step, (x, step, qn, qp, grad_scale)


def _lsq_bwd(res, g):
    x, step, qn, qp, grad_scale = res
    below = x <= -qn
    above = x >= qp
    inside = ~(below | above)
    # LSQ eq. (3): d v_hat / d s = -v/s + round(v/s) inside, -Qn below, Qp above.
    dstep_elem = jnp.where(below, -qn, jnp.where(above, qp, jnp.round(x) - x))
    dstep = sum_to_shape(g * dstep_elem, jnp.shape(step)) * grad_scale
    zero = jnp.zeros_like
    return (
        g * inside.astype(g.dtype),
        dstep.astype(step.dtype),
        zero(qn),
        zero(qp),
        zero(grad_scale),
    )


_lsq.defvjp(_lsq_fwd, _lsq_bwd)


def lsq_grad_scale(num_elements, bits, signed: bool) -> jax.Array:
    """LSQ step-size gradient scale ``g = 1 / sqrt(N * Qp)``, N the elements sharing one step."""
    _, qp = quant_range(bits, signed)
    return jax.lax.rsqrt(jnp.asarray(num_elements, jnp.float32) * jnp.maximum(qp, 1.0))


def lsq_quantize(
    v: jax.Array, step: jax.Array, bits, *, signed: bool, num_elements: int | None = None
) -> jax.Array:
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
    if static_full_precision(bits):
        return v
    qn, qp = quant_range(bits, signed)
    quantized = _lsq(v, step, qn, qp, lsq_grad_scale(num_elements, bits, signed))
    return quantized if is_static(bits) else jnp.where(is_full_precision(bits), v, quantized)


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


def lsq_grid_scale(step, bits) -> jax.Array:
    """`lsq_quantize`'s grid: ``v_hat = code * s``, s the step (1 at full precision)."""
    return grid_scale_or_one(bits, step)


def lsq_bins(
    w: jax.Array,
    step: jax.Array,
    bits,
    *,
    max_bits: int,
    units: str = "weight",
    stop_step_gradient: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array, int]:
    """Bins of LSQ signed weights: code ``round(clip(w/s, -Qn, Qp))``, level ``code * s``.

    ``step`` is a scalar, or one step per output channel (the last axis of ``w``; each channel is
    its own grid, so its bins are its own). ``bits`` may be traced, at most ``max_bits`` (static),
    which sets the ``2^max_bits`` bins per grid. Returns ``(values, bins, levels, num_bins)``.
    """
    _bins.check_units(units)
    step = jnp.asarray(step, w.dtype)
    per_channel = step.ndim > 0 and step.size > 1
    bits = jnp.minimum(jnp.asarray(bits, jnp.int32), max_bits)
    qn, _ = signed_range(bits)
    codes = jax.lax.stop_gradient(lsq_codes(w, step, bits, signed=True))
    index, num_bins = _bins.channel_bins(codes + qn.astype(jnp.int32), 2**max_bits, per_channel)
    step_used = jax.lax.stop_gradient(step) if stop_step_gradient else step
    levels_per_code = jnp.arange(2**max_bits, dtype=w.dtype) - qn.astype(w.dtype)
    values = w / step_used if units == "code" else w
    return (
        values,
        index,
        _bins.per_channel_levels(levels_per_code, step_used, per_channel, units),
        num_bins,
    )


@dataclasses.dataclass(frozen=True)
class LSQ(Quantizer):
    """LSQ with one learned step per bit-width (`lsq_quantize`).

    signed: codes in ``[-2^(b-1), 2^(b-1)-1]`` (weights, inputs that may be negative), else
      ``[0, 2^b-1]`` (post-ReLU activations).
    per_channel: one step per output channel (the last axis), for weights.
    per_example: N of the step gradient counts one example's elements (activations: the batch,
      the leading axis, does not count), else all elements sharing a step.
    """

    signed: bool = True
    per_channel: bool = False
    per_example: bool = False
    name: ClassVar[str] = "lsq"
    supported_bits: ClassVar[tuple[int, ...]] = INTEGER_BITS
    param_names: ClassVar[tuple[str, ...]] = ("step",)
    has_bins: ClassVar[bool] = True

    @classmethod
    def for_weights(cls, per_channel: bool = False) -> LSQ:
        """Signed weights, a step per tensor or per output channel."""
        return cls(signed=True, per_channel=per_channel)

    @classmethod
    def for_activations(cls, signed: bool = False) -> LSQ:
        """Activations (unsigned unless ``signed``), N of the step gradient per example."""
        return cls(signed=signed, per_example=True)

    def init(self, x, bits):
        """Steps of shape (P,), or (P, channels) per channel: `lsq_init_step` at each bit-width."""
        x = as_float32(x)
        axis = tuple(range(x.ndim - 1)) if self.per_channel else None
        shape = (-1,) if self.per_channel else ()
        all_bits = jnp.asarray(bits, jnp.int32)
        return {
            "step": jax.vmap(
                lambda b: lsq_init_step(x, b, signed=self.signed, axis=axis).reshape(shape)
            )(all_bits)
        }

    def at(self, params, precision):
        return {"step": params["step"][precision]}

    def quantize(self, x, params, bits):
        count = None
        if self.per_example:
            count = max(x.size // max(x.shape[0], 1), 1) if x.ndim > 1 else x.size
        return lsq_quantize(x, params["step"], bits, signed=self.signed, num_elements=count)

    def grid_scale(self, x, params, bits):
        return lsq_grid_scale(params["step"], bits)

    def bins(self, x, params, bits, *, max_bits, units="weight", stop_step_gradient=False):
        if not self.signed:
            raise NotImplementedError("LSQ bins are defined for signed (weight) grids")
        return lsq_bins(
            x,
            params["step"],
            bits,
            max_bits=max_bits,
            units=units,
            stop_step_gradient=stop_step_gradient,
        )

    def for_signed_inputs(self):
        return dataclasses.replace(self, signed=True)

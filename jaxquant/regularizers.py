"""Weight regularisers. Bin Regularization (Han et al., ICCV 2021): pull every quantization bin
of a weight tensor onto its level.

For one quantized weight tensor at bit-width b, each weight falls in the **bin** of its integer
code (the code the quantizer rounds it to; the assignment carries no gradient). With ``v_i`` the
weights of bin i, ``n_i = |v_i|`` and ``l_i`` its level (the value the quantizer outputs)::

    L_BR = sum over bins with n_i >= 1 of  (mean(v_i) - l_i)^2 + var(v_i)

``var`` is the population variance (divide by ``n_i``), a one-element bin contributes only the
first term (its variance is 0) and empty bins are skipped; the loss is summed over bins (each
bin weighs the same, whatever its population) and summed, or averaged, over the layers. Note
the identity ``(mean - l)^2 + var = mean_j (v_ij - l_i)^2``: BR is the per-bin mean squared
distance of the weights to their level, summed over non-empty bins.

**Our reading** (the paper's equation is known through one re-implementation, the digest's
section 2): bins by the LSQ integer code; population variance; weights only; sum over bins
and layers. The choices the paper leaves open are flags:

- ``units='weight'`` (the re-implementation's): weights ``w`` against levels ``code * s``;
  ``units='code'``: ``w / s`` against the integer codes, i.e. the weight-unit loss over ``s^2``
  (about 1e2-1e4 larger at the step sizes of small CNNs).
- ``stop_step_gradient``: whether BR's gradient reaches the step size ``s`` (through the levels
  in weight units, through ``w / s`` in code units).
- ``reduction``: ``sum`` (the re-implementation's) or ``mean`` over layers.

Everything has static shapes: the bins are segment sums over ``2^max_bits`` segments (the
largest bit-width of the model), so the bit-width can be traced and one compiled function
serves every bit-width. A full-precision bit-width (32) contributes 0.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from jaxquant import quantizers as q
from jaxquant.params import get_path, quantized_layer_paths

UNITS = ("weight", "code")
REDUCTIONS = ("sum", "mean")
WEIGHT_QUANTIZERS = ("lsq", "vertical", "dorefa")


# ----------------------------------------------------------------------------------------------
# The loss on given bins.

def bin_statistics(values: jax.Array, bins: jax.Array, num_bins: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(count, mean, variance)`` per bin, each of shape ``(num_bins,)``, of ``values`` grouped
    by the integer ``bins`` (same shape, in ``[0, num_bins)``). The variance is the population
    variance, computed in two passes (no ``E[v^2] - E[v]^2`` cancellation); empty bins get 0."""
    values, bins = jnp.ravel(values), jnp.ravel(bins)
    count = jax.ops.segment_sum(jnp.ones_like(values), bins, num_bins)
    denominator = jnp.maximum(count, 1.0)
    mean = jax.ops.segment_sum(values, bins, num_bins) / denominator
    variance = jax.ops.segment_sum(jnp.square(values - mean[bins]), bins, num_bins) / denominator
    return count, mean, variance


def bin_regularizer(values: jax.Array, bins: jax.Array, levels: jax.Array, num_bins: int) -> jax.Array:
    """``sum_i [(mean(v_i) - l_i)^2 + var(v_i)]`` over the non-empty bins i (see the module doc).

    ``values`` and ``bins`` have one entry per weight (bins in ``[0, num_bins)``, not
    differentiated), ``levels`` one per bin, in the same units as ``values``.
    """
    count, mean, variance = bin_statistics(values, jax.lax.stop_gradient(bins), num_bins)
    per_bin = jnp.square(mean - levels) + jnp.where(count >= 2, variance, 0.0)
    return jnp.sum(jnp.where(count >= 1, per_bin, 0.0))


# ----------------------------------------------------------------------------------------------
# Bins of each quantizer: (values, bins, levels, num_bins) in the chosen units.

def _check_units(units: str) -> None:
    if units not in UNITS:
        raise ValueError(f"unknown BR units {units!r}; choose one of {UNITS}")


def _channel_bins(codes_index: jax.Array, num_codes: int, per_channel: bool) -> tuple[jax.Array, int]:
    """A per-output-channel quantizer has one grid per channel (the last axis): bin ``c * K + j``."""
    if not per_channel:
        return codes_index, num_codes
    channels = codes_index.shape[-1]
    return codes_index + num_codes * jnp.arange(channels, dtype=codes_index.dtype), channels * num_codes


def _per_channel_levels(levels_per_code: jax.Array, step: jax.Array, per_channel: bool, units: str) -> jax.Array:
    """Levels of every bin: ``code`` in code units, ``code * s`` (per channel) in weight units."""
    if units == "code":
        return jnp.tile(levels_per_code, step.size) if per_channel else levels_per_code
    if per_channel:
        return (step[:, None] * levels_per_code[None, :]).reshape(-1)
    return levels_per_code * step


def lsq_bins(w: jax.Array, step: jax.Array, bits, *, max_bits: int, units: str = "weight",
             stop_step_gradient: bool = False) -> tuple[jax.Array, jax.Array, jax.Array, int]:
    """Bins of LSQ signed weights: code ``round(clip(w/s, -Qn, Qp))``, level ``code * s``.

    ``step`` is a scalar, or one step per output channel (the last axis of ``w``; each channel is
    its own grid, so its bins are its own). ``bits`` may be traced, at most ``max_bits`` (static),
    which sets the ``2^max_bits`` bins per grid. Returns ``(values, bins, levels, num_bins)``.
    """
    _check_units(units)
    step = jnp.asarray(step, w.dtype)
    per_channel = step.ndim > 0 and step.size > 1
    bits = jnp.minimum(jnp.asarray(bits, jnp.int32), max_bits)
    qn, _ = q.signed_range(bits)
    codes = jax.lax.stop_gradient(q.lsq_codes(w, step, bits, signed=True))
    index, num_bins = _channel_bins(codes + qn.astype(jnp.int32), 2 ** max_bits, per_channel)
    step_used = jax.lax.stop_gradient(step) if stop_step_gradient else step
    levels_per_code = jnp.arange(2 ** max_bits, dtype=w.dtype) - qn.astype(w.dtype)
    values = w / step_used if units == "code" else w
    return values, index, _per_channel_levels(levels_per_code, step_used, per_channel, units), num_bins


def vertical_bins(w: jax.Array, step: jax.Array, bits, *, source_bits: int = 8, cascade: str = "floor",
                  max_bits: int | None = None, units: str = "weight", stop_step_gradient: bool = False
                  ) -> tuple[jax.Array, jax.Array, jax.Array, int]:
    """Bins of Vertical-Layering weights at k bits: the k-bit codes of `quantizers.vertical_codes`
    (offset-binary mid-rise for ``floor``, level ``(u - (2^k-1)/2) s_k``; two's-complement
    mid-tread otherwise, level ``q s_k``), with the k-bit step ``s_k = 2^(B-k) s_B``; code units
    divide by ``s_k``. ``step`` is the source step (scalar or per output channel); ``max_bits``
    (static, default B) caps k and sets the ``2^max_bits`` bins."""
    _check_units(units)
    step = jnp.asarray(step, w.dtype)
    per_channel = step.ndim > 0 and step.size > 1
    max_bits = source_bits if max_bits is None else min(max_bits, source_bits)
    k = jnp.minimum(jnp.asarray(bits, jnp.int32), max_bits)
    codes = jax.lax.stop_gradient(q.vertical_codes(w, step, k, source_bits=source_bits, cascade=cascade))
    half = q.signed_range(k)[0]  # 2^(k-1)
    if cascade == "floor":
        index, offset = codes, half - 0.5      # level = u - (2^k - 1)/2
    else:
        index, offset = codes + half.astype(jnp.int32), half  # level = q = index - 2^(k-1)
    index, num_bins = _channel_bins(index, 2 ** max_bits, per_channel)
    step_used = jax.lax.stop_gradient(step) if stop_step_gradient else step
    step_k = step_used * jnp.ldexp(jnp.ones((), w.dtype), source_bits - k)
    levels_per_code = jnp.arange(2 ** max_bits, dtype=w.dtype) - offset.astype(w.dtype)
    values = w / step_k if units == "code" else w
    return values, index, _per_channel_levels(levels_per_code, step_k, per_channel, units), num_bins


def dorefa_bins(w: jax.Array, bits, *, max_bits: int, units: str = "weight"
                ) -> tuple[jax.Array, jax.Array, jax.Array, int]:
    """Bins of Any-Precision's DoReFa weights. The quantizer rounds
    ``x = n (tanh(w) / (2 max|tanh w|) + 1/2)`` (``n = 2^k - 1``) to the code ``c`` and outputs
    ``(2c/n - 1) E``, ``E = stop_gradient(mean|w|)``. Code units: ``x`` against ``c``; weight
    units: the same affine map applied to both, ``tanh(w)/max|tanh w| * E`` (the code's FP form)
    against ``(2c/n - 1) E``. Gradients flow through tanh and the max, as in the quantizer;
    there is no step size (``stop_step_gradient`` does not apply).

    This is our extension: the paper regularises LSQ weights only.
    """
    _check_units(units)
    bits = jnp.minimum(jnp.asarray(bits, jnp.int32), max_bits)
    n = jnp.ldexp(jnp.ones((), w.dtype), bits) - 1.0
    t = jnp.tanh(w)
    unit = t / (2.0 * jnp.max(jnp.abs(t))) + 0.5
    x = unit * n
    codes = jax.lax.stop_gradient(jnp.clip(jnp.round(x), 0.0, n)).astype(jnp.int32)
    levels = jnp.arange(2 ** max_bits, dtype=w.dtype)
    if units == "weight":
        scale = jax.lax.stop_gradient(jnp.mean(jnp.abs(w)))
        x, levels = (2.0 * unit - 1.0) * scale, (2.0 * levels / n - 1.0) * scale
    return x, codes, levels, 2 ** max_bits


def lsq_bin_regularizer(w: jax.Array, step: jax.Array, bits, *, max_bits: int, units: str = "weight",
                        stop_step_gradient: bool = False) -> jax.Array:
    """BR of one LSQ weight tensor at (possibly traced) ``bits`` <= ``max_bits``; 0 at 32 bits."""
    value = bin_regularizer(*lsq_bins(w, step, bits, max_bits=max_bits, units=units,
                                      stop_step_gradient=stop_step_gradient))
    return jnp.where(q.is_full_precision(bits), 0.0, value)


# ----------------------------------------------------------------------------------------------
# Over a model's parameters.

@dataclasses.dataclass(frozen=True)
class LayerQuantizer:
    """How one layer quantizes its ``kernel``: the layer's own bit-widths (a first/last layer at a
    fixed bit-width has one, used at every precision) and its weight quantizer."""
    bits: tuple[int, ...]
    weight: str = "lsq"        # lsq | vertical | dorefa
    source_bits: int = 8       # vertical
    cascade: str = "floor"     # vertical

    def __post_init__(self):
        if self.weight not in WEIGHT_QUANTIZERS:
            raise ValueError(f"BR does not apply to weight quantizer {self.weight!r}; "
                             f"it needs one of {WEIGHT_QUANTIZERS}")

    @property
    def max_bits(self) -> int:
        """The largest integer bit-width (0: the layer is full precision at every precision)."""
        integer = [b for b in self.bits if b < q.FP_BITS]
        top = max(integer) if integer else 0
        return min(top, self.source_bits) if self.weight == "vertical" else top


def lsq_layers(params, bits) -> dict[tuple[str, ...], LayerQuantizer]:
    """The LSQ-quantized layers of a params tree (a ``kernel`` beside a ``weight_step``) by path,
    each at the model's ``bits``."""
    return {path: LayerQuantizer(tuple(bits)) for path in quantized_layer_paths(params)}


def layer_bins(layer_params: Mapping[str, Any], layer: LayerQuantizer, precision, *, units: str = "weight",
               stop_step_gradient: bool = False) -> tuple[tuple[jax.Array, jax.Array, jax.Array, int], jax.Array]:
    """``((values, bins, levels, num_bins), bits)`` of one layer at a precision index (traced or
    not): the layer's own bit-width ``layer.bits[precision]`` (index 0 for a one-bit-width layer)."""
    index = precision if len(layer.bits) > 1 else 0
    bit_width = jnp.asarray(layer.bits, jnp.int32)[index]
    kernel = layer_params["kernel"]
    if layer.weight == "dorefa":
        return dorefa_bins(kernel, bit_width, max_bits=layer.max_bits, units=units), bit_width
    if layer.weight == "vertical":
        return vertical_bins(kernel, layer_params["weight_step"], bit_width, source_bits=layer.source_bits,
                             cascade=layer.cascade, max_bits=layer.max_bits, units=units,
                             stop_step_gradient=stop_step_gradient), bit_width
    return lsq_bins(kernel, layer_params["weight_step"][index], bit_width, max_bits=layer.max_bits, units=units,
                    stop_step_gradient=stop_step_gradient), bit_width


def bin_regularization(params, precision, bits=None, *, layers: Mapping[tuple[str, ...], LayerQuantizer] | None = None,
                       units: str = "weight", stop_step_gradient: bool = False, reduction: str = "sum") -> jax.Array:
    """BR of a whole model at precision index ``precision`` (may be traced): summed (or averaged,
    ``reduction='mean'``) over the quantized layers.

    ``layers`` maps each layer's path in ``params`` to its `LayerQuantizer`; by default every
    LSQ layer (`lsq_layers`: a ``kernel`` with a ``weight_step`` whose leading axis is the
    precision) at the model's ``bits``. Layers whose bit-width is full precision contribute 0.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown BR reduction {reduction!r}; choose one of {REDUCTIONS}")
    if layers is None:
        if bits is None:
            raise ValueError("pass the model's bits or the layers to regularise")
        layers = lsq_layers(params, bits)
    layers = {path: layer for path, layer in layers.items() if layer.max_bits > 0}
    total = jnp.zeros((), jnp.float32)
    for path, layer in layers.items():
        binned, bit_width = layer_bins(get_path(params, path), layer, precision, units=units,
                                       stop_step_gradient=stop_step_gradient)
        total = total + jnp.where(q.is_full_precision(bit_width), 0.0, bin_regularizer(*binned))
    return total / max(len(layers), 1) if reduction == "mean" else total

"""Weight regularisers. Bin Regularization (Han et al., ICCV 2021): pull every quantization bin
of a weight tensor onto its level. With ``v_i`` the weights whose integer code is i (the
assignment carries no gradient) and ``l_i`` the level of bin i (the value the quantizer outputs)::

    L_BR = sum over bins with n_i >= 1 of  (mean(v_i) - l_i)^2 + var(v_i)

with the population variance; by the identity ``(mean - l)^2 + var = mean_j (v_ij - l_i)^2`` it
is the per-bin mean squared distance to the level. Summed over bins, summed or averaged over
layers; the bins are segment sums over ``2^max_bits`` segments (static shapes, so the bit-width
can be traced); full precision contributes 0. Our reading of one re-implementation; its open
choices are flags (``units`` weight | code, ``stop_step_gradient``, ``reduction``).
Details: docs/methods/binreg.md
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from jaxquant import quantizers as q
from jaxquant.params import get_path, quantized_layer_paths
from jaxquant.quantizers import dorefa_bins, lsq_bins, vertical_bins  # noqa: F401  (each family's bins)
from jaxquant.quantizers.bins import UNITS  # noqa: F401  (re-exported)

REDUCTIONS = ("sum", "mean")


# ----------------------------------------------------------------------------------------------
# The loss on given bins.


def bin_statistics(
    values: jax.Array, bins: jax.Array, num_bins: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(count, mean, variance)`` per bin, each of shape ``(num_bins,)``, of ``values`` grouped
    by the integer ``bins`` (same shape, in ``[0, num_bins)``). The variance is the population
    variance, computed in two passes (no ``E[v^2] - E[v]^2`` cancellation); empty bins get 0."""
    values, bins = jnp.ravel(values), jnp.ravel(bins)
    count = jax.ops.segment_sum(jnp.ones_like(values), bins, num_bins)
    denominator = jnp.maximum(count, 1.0)
    mean = jax.ops.segment_sum(values, bins, num_bins) / denominator
    variance = jax.ops.segment_sum(jnp.square(values - mean[bins]), bins, num_bins) / denominator
    return count, mean, variance


def bin_regularizer(
    values: jax.Array, bins: jax.Array, levels: jax.Array, num_bins: int
) -> jax.Array:
    """``sum_i [(mean(v_i) - l_i)^2 + var(v_i)]`` over the non-empty bins i (see the module doc).

    ``values`` and ``bins`` have one entry per weight (bins in ``[0, num_bins)``, not
    differentiated), ``levels`` one per bin, in the same units as ``values``.
    """
    count, mean, variance = bin_statistics(values, jax.lax.stop_gradient(bins), num_bins)
    per_bin = jnp.square(mean - levels) + jnp.where(count >= 2, variance, 0.0)
    return jnp.sum(jnp.where(count >= 1, per_bin, 0.0))


# ----------------------------------------------------------------------------------------------
# Over quantizers and a model's parameters.


def lsq_bin_regularizer(
    w: jax.Array,
    step: jax.Array,
    bits,
    *,
    max_bits: int,
    units: str = "weight",
    stop_step_gradient: bool = False,
) -> jax.Array:
    """BR of one LSQ weight tensor at (possibly traced) ``bits`` <= ``max_bits``; 0 at 32 bits."""
    value = bin_regularizer(
        *lsq_bins(
            w, step, bits, max_bits=max_bits, units=units, stop_step_gradient=stop_step_gradient
        )
    )
    return jnp.where(q.is_full_precision(bits), 0.0, value)


@dataclasses.dataclass(frozen=True)
class LayerQuantizer:
    """How one layer quantizes its ``kernel``: the layer's own bit-widths (a first/last layer at a
    fixed bit-width has one, used at every precision) and its weight `Quantizer`, which must
    define bins (``has_bins``)."""

    bits: tuple[int, ...]
    weight: q.Quantizer = q.LSQ()

    def __post_init__(self):
        if not self.weight.has_bins:
            raise ValueError(
                f"BR does not apply to weight quantizer {self.weight!r}: it defines no bins"
            )

    @property
    def max_bits(self) -> int:
        """The widest integer code (0: the layer is full precision at every precision)."""
        return self.weight.code_bits(self.bits)


def lsq_layers(params, bits) -> dict[tuple[str, ...], LayerQuantizer]:
    """The LSQ-quantized layers of a params tree (a ``kernel`` beside a ``weight_step``) by path,
    each at the model's ``bits``."""
    return {path: LayerQuantizer(tuple(bits)) for path in quantized_layer_paths(params)}


def layer_bins(
    layer_params: Mapping[str, Any],
    layer: LayerQuantizer,
    precision,
    *,
    units: str = "weight",
    stop_step_gradient: bool = False,
) -> tuple[tuple[jax.Array, jax.Array, jax.Array, int], jax.Array]:
    """``((values, bins, levels, num_bins), bits)`` of one layer at a precision index (traced or
    not): the layer's own bit-width ``layer.bits[precision]`` (index 0 for a one-bit-width
    layer)."""
    index = precision if len(layer.bits) > 1 else 0
    bit_width = jnp.asarray(layer.bits, jnp.int32)[index]
    quantizer = layer.weight
    params = quantizer.at({n: layer_params[f"weight_{n}"] for n in quantizer.param_names}, index)
    return quantizer.bins(
        layer_params["kernel"],
        params,
        bit_width,
        max_bits=layer.max_bits,
        units=units,
        stop_step_gradient=stop_step_gradient,
    ), bit_width


def bin_regularization(
    params,
    precision,
    bits=None,
    *,
    layers: Mapping[tuple[str, ...], LayerQuantizer] | None = None,
    units: str = "weight",
    stop_step_gradient: bool = False,
    reduction: str = "sum",
) -> jax.Array:
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
        binned, bit_width = layer_bins(
            get_path(params, path),
            layer,
            precision,
            units=units,
            stop_step_gradient=stop_step_gradient,
        )
        total = total + jnp.where(q.is_full_precision(bit_width), 0.0, bin_regularizer(*binned))
    return total / max(len(layers), 1) if reduction == "mean" else total

"""Pieces shared by the models: layer factories and the first/last-layer policy.

Every piece keeps its input's dtype (the compute dtype follows the input: a bfloat16 image runs
the model in bfloat16, with float32 parameters, BatchNorm and accumulation; `jaxquant.layers`)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxquant.layers import FULL_PRECISION, PrecisionBatchNorm, QuantConv, QuantDense, QuantSpec
from jaxquant.quantizers import FullPrecision


def first_conv(
    features, kernel_size, strides, first_last_bits: int | None, spec: QuantSpec, name: str = "stem"
) -> QuantConv:
    """The stem conv: full precision (``first_last_bits=None``, the papers' default) or quantized
    at one fixed bit-width for every precision. Its input is the normalised image, so an LSQ
    input quantizer is signed; a DoReFa model leaves the image unquantized."""
    if first_last_bits is None:
        return QuantConv(
            features, kernel_size, strides, use_bias=False, spec=FULL_PRECISION, name=name
        )
    stem_spec = QuantSpec(spec.weight, spec.activation.for_signed_inputs() or FullPrecision())
    return QuantConv(
        features,
        kernel_size,
        strides,
        use_bias=False,
        bits=(first_last_bits,),
        spec=stem_spec,
        name=name,
    )


def last_dense(num_classes, first_last_bits: int | None, spec: QuantSpec, name: str = "classifier"):
    """The classifier: full precision by default, or quantized at one fixed bit-width."""
    if first_last_bits is None:
        return QuantDense(num_classes, spec=FULL_PRECISION, name=name)
    return QuantDense(num_classes, bits=(first_last_bits,), spec=spec, name=name)


def layer_factories(bits, spec: QuantSpec):
    """``conv(features, ...)`` and ``bn(name=...)`` partials for a model's quantized body."""
    conv = functools.partial(QuantConv, bits=tuple(bits), spec=spec)
    bn = functools.partial(PrecisionBatchNorm, num_precisions=len(bits))
    return conv, bn


relu = jax.nn.relu


def avg_pool_all(x: jax.Array) -> jax.Array:
    """Global average pooling (NHWC), summed in float32, in ``x``'s dtype."""
    return x.mean(axis=(1, 2), dtype=jnp.promote_types(x.dtype, jnp.float32)).astype(x.dtype)


max_pool = functools.partial(nn.max_pool, window_shape=(3, 3), strides=(2, 2), padding="SAME")


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, VALID (an odd last row/column is dropped), as a reshape and a max.

    Equal to ``nn.max_pool(x, (2, 2), (2, 2))`` in value; its gradient splits equally among tied
    maxima (frequent after quantization) instead of XLA's pick-one ``select_and_scatter``, so on
    the same ``x`` it does not depend on how a sharded batch is partitioned, and on CPU it runs
    3-4x faster. Which values tie can still change with the partitioning (BatchNorm's reduction
    order), so the sharding test uses a ResNet. Measurements: docs/models.md.
    """
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))

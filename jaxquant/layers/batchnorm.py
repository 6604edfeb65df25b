"""Switchable BatchNorm (`PrecisionBatchNorm`) and training BatchNorm with its backward
written out (`batch_norm_train`)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxquant import quantizers as q
from jaxquant.layers.quant import check_precision, check_precision_rows, layer_label


@jax.custom_vjp
def batch_norm_train(
    x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon
) -> tuple[jax.Array, ...]:
    """Training-mode BatchNorm over all axes but the last: ``(y, mean, var)`` with
    ``y = x_hat scale + bias``, ``x_hat = (x - mean) r``, ``r = 1/sqrt(var + eps)``, ``mean``
    and the biased ``var`` of the batch, computed in float32 (``y`` in ``x``'s dtype).

    The backward is written out (the autodiff of these formulas, in M = rows reduced):
    ``dx = r scale (g - mean(g) - x_hat mean(g x_hat)) + g_mean/M + g_var 2 (x - mean)/M``,
    ``dscale = sum(g x_hat)``, ``dbias = sum(g)``; it keeps only ``x`` (and the statistics) from
    the forward, where autodiff keeps ``x - mean`` and ``x_hat`` as tensors too."""
    return _batch_norm_train_fwd(x, scale, bias, epsilon)[0]


def batch_moments(x: jax.Array, average=lambda v: v) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and biased variance over all axes but the last, in float32;
    ``average`` combines each statistic across devices (e.g. a ``pmean``) before it is used."""
    x32 = q.as_float32(x)
    axes = tuple(range(x.ndim - 1))
    mean = average(jnp.mean(x32, axis=axes))
    return mean, average(jnp.mean(jnp.square(x32 - mean), axis=axes))


def normalize(x: jax.Array, mean, var, scale, bias, epsilon) -> jax.Array:
    """``(x - mean) / sqrt(var + eps) * scale + bias`` in float32, the result in ``x``'s dtype."""
    return ((q.as_float32(x) - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias).astype(x.dtype)


def _batch_norm_train_fwd(x, scale, bias, epsilon):
    mean, var = batch_moments(x)
    return (normalize(x, mean, var, scale, bias, epsilon), mean, var), (
        x,
        mean,
        var,
        scale,
        epsilon,
    )


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
        """`normalize` with this layer's epsilon."""
        return normalize(x, mean, var, scale, bias, self.epsilon)

    def _train(self, x, scale, bias):
        """``(y, mean, var)`` of the batch."""
        if self.axis_name is None:
            return batch_norm_train(x, scale, bias, jnp.float32(self.epsilon))
        # Statistics over every device: autodiff through pmean.
        mean, var = batch_moments(x, lambda v: jax.lax.pmean(v, self.axis_name))
        return self._normalize(x, mean, var, scale, bias), mean, var

    @nn.compact
    def __call__(self, x: jax.Array, precision, train: bool) -> jax.Array:
        return switchable_batch_norm(self, self, x, precision, train)


def switchable_batch_norm(holder: nn.Module, bn, x: jax.Array, precision, train: bool) -> jax.Array:
    """The body of `PrecisionBatchNorm` with its variables (``mean``, ``var``, ``scale``,
    ``bias``, each ``(P, C)``) created in ``holder``, a bound module inside its own call (a
    `PrecisionBatchNorm` itself, or an intercepted ``nn.BatchNorm``); ``bn`` gives the settings
    (``num_precisions``, ``momentum``, ``epsilon``, ``use_scale``, ``use_bias``) and the row
    access (``_num_channels``, ``_take``, ``_put``, ``_train``, ``_normalize``).

    A concrete ``precision`` outside ``0..num_precisions-1``, or stored variables without
    ``num_precisions`` rows (another model's), raise `PrecisionError`."""
    shape = (bn.num_precisions, bn._num_channels(x))
    owner = layer_label(holder)
    check_precision(precision, bn.num_precisions, f"{owner} ({bn.num_precisions} bit-widths)")
    for collection, name in (
        ("params", "scale"),
        ("params", "bias"),
        ("batch_stats", "mean"),
        ("batch_stats", "var"),
    ):
        if holder.has_variable(collection, name):
            got = np.shape(holder.get_variable(collection, name))
            check_precision_rows(owner, f"{collection} '{name}'", got, shape, bn.num_precisions)
    ra_mean = holder.variable("batch_stats", "mean", jnp.zeros, shape, jnp.float32)
    ra_var = holder.variable("batch_stats", "var", jnp.ones, shape, jnp.float32)
    scale = (
        holder.param("scale", nn.initializers.ones, shape)
        if bn.use_scale
        else jnp.ones(shape, jnp.float32)
    )
    bias = (
        holder.param("bias", nn.initializers.zeros, shape)
        if bn.use_bias
        else jnp.zeros(shape, jnp.float32)
    )
    scale, bias = bn._take(scale, precision), bn._take(bias, precision)
    if not train:
        mean, var = bn._take(ra_mean.value, precision), bn._take(ra_var.value, precision)
        return bn._normalize(x, mean, var, scale, bias)
    y, mean, var = bn._train(x, scale, bias)
    if not holder.is_initializing():
        m = bn.momentum
        ra_mean.value = bn._put(
            ra_mean.value, precision, m * bn._take(ra_mean.value, precision) + (1.0 - m) * mean
        )
        ra_var.value = bn._put(
            ra_var.value, precision, m * bn._take(ra_var.value, precision) + (1.0 - m) * var
        )
    return y

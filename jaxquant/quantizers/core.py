"""What every quantizer family shares: the full-precision convention, bit-width validation,
power-of-two and range arithmetic, straight-through rounding and clipping, and the exact grid.

The bit-width may be an array (traced): bounds such as ``Qp = 2**(b-1) - 1`` are computed
arithmetically, so one compiled function serves every bit-width. A bit-width of ``FP_BITS`` (32)
or more means full precision. A traced bit-width computes both the quantized and the
full-precision form and selects with ``jnp.where``; a static one (a Python or NumPy int, as the
unrolled multi-precision step passes) picks its branch in Python and computes only that one.
Quantizers compute in float32 (a bfloat16 input gives a float32 result). Every grid is
``x_hat = n * s`` with n integer-valued (`grid_integers` gives n), which is how a layer feeds a
bfloat16 conv exact operands.
"""

from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.errors import BitWidthError

FP_BITS = 32
"""A bit-width at or above this means full precision (no quantization)."""


def check_bits(bits: Iterable[int], allowed: tuple[int, ...], family: str) -> tuple[int, ...]:
    """Check a static tuple of bit-widths against the ``allowed`` ones of a quantizer family;
    return it as a tuple. Raises `BitWidthError` naming the offending value and the range."""
    bits = tuple(bits)
    if not bits:
        raise BitWidthError("no bit-widths given; pass at least one, e.g. bits=(2, 4, 8)")
    for b in bits:
        if not isinstance(b, int) or isinstance(b, bool) or b not in allowed:
            integer = [a for a in allowed if a < FP_BITS]
            choices = f"integers {min(integer)}..{max(integer)} or " if integer else ""
            raise BitWidthError(
                f"bit-width {b!r} is not supported by the {family} quantizer; use "
                f"{choices}{FP_BITS} for full precision"
            )
    if len(set(bits)) != len(bits):
        raise BitWidthError(f"bit-widths {bits} contain duplicates; list each bit-width once")
    return bits


def as_bits(bits) -> jax.Array:
    return jnp.asarray(bits, dtype=jnp.int32)


def pow2(exponent, dtype=jnp.float32) -> jax.Array:
    """Exactly ``2**exponent`` (``jnp.exp2`` is off by ulps on CPU from 2^13 on). Exponents
    are capped at 30: a full-precision bit-width (32) never uses its range."""
    return jnp.ldexp(jnp.ones((), dtype), jnp.minimum(as_bits(exponent), 30))


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
    return as_bits(bits) >= FP_BITS


def is_static(bits) -> bool:
    """Whether ``bits`` is a static bit-width (a Python or NumPy int), not an array."""
    return isinstance(bits, (int, np.integer))


def static_full_precision(bits) -> bool:
    """True only for a static full-precision bit-width: its quantizer returns the FP form alone."""
    return is_static(bits) and bits >= FP_BITS


def signed_range(bits) -> tuple[jax.Array, jax.Array]:
    """LSQ signed integer range: ``(Qn, Qp) = (2^(b-1), 2^(b-1) - 1)``, codes in ``[-Qn, Qp]``."""
    half = pow2(as_bits(bits) - 1)
    return half, half - 1.0


def unsigned_range(bits) -> tuple[jax.Array, jax.Array]:
    """LSQ unsigned integer range: ``(Qn, Qp) = (0, 2^b - 1)``, codes in ``[0, Qp]``."""
    levels = pow2(bits)
    return jnp.zeros_like(levels), levels - 1.0


def quant_range(bits, signed: bool) -> tuple[jax.Array, jax.Array]:
    """``(Qn, Qp)`` for a signed or unsigned LSQ grid."""
    return signed_range(bits) if signed else unsigned_range(bits)


def sum_to_shape(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sum a broadcast result back to the shape of the operand that was broadcast."""
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and x.shape[lead + i] != 1
    )
    return jnp.sum(x, axis=axes, keepdims=False).reshape(shape) if axes else x.reshape(shape)


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
# Grids: every fake-quantized value is ``x_hat = n * s``, n integer-valued (bf16 compute).


def max_exact_bits(dtype) -> int:
    """The widest bit-width whose integer codes (``|n| <= 2^b - 1``) ``dtype`` holds exactly:
    its significand bits, ``nmant + 1`` (bfloat16: 8, float16: 11, float32: 24)."""
    return int(jnp.finfo(dtype).nmant) + 1


def grid_scale_or_one(bits, scale) -> jax.Array:
    """``scale`` where quantized, 1 at full precision (a static or traced bit-width)."""
    if static_full_precision(bits):
        return jnp.ones((), jnp.float32)
    scale = jnp.asarray(scale, jnp.float32)
    return scale if is_static(bits) else jnp.where(is_full_precision(bits), 1.0, scale)


def unit_grid_scale(bits) -> jax.Array:
    """The grid of `dorefa_activation` and `interval_activation`: ``code / (2^b - 1)``, so
    ``s = 1 / (2^b - 1)`` (1 at full precision)."""
    return grid_scale_or_one(bits, 1.0 / (pow2(bits) - 1.0))


def grid_integers(x_hat: jax.Array, scale, bits) -> jax.Array:
    """The integer-valued ``n`` of a fake-quantized ``x_hat = n * s`` (float32), the operand a
    bfloat16 conv holds exactly (``|n| <= 256``; `max_exact_bits`).

    Value ``round(x_hat / s)``, snapped to the integer; gradient that of ``x_hat /
    stop_gradient(s)``, so ``conv(n_x, n_w) * stop_gradient(s_x s_w)`` has the gradients of
    ``conv(x_hat, w_hat)`` and a step size gets its gradient only through its quantizer.
    Full precision (``bits >= 32``; ``s`` is 1 there): ``x_hat`` unchanged, not snapped.
    """
    x_hat = as_float32(x_hat)
    if static_full_precision(bits):
        return x_hat
    snapped = ste_round(x_hat / jax.lax.stop_gradient(jnp.asarray(scale, jnp.float32)))
    return snapped if is_static(bits) else jnp.where(is_full_precision(bits), x_hat, snapped)

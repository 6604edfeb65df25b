"""Bit-width nesting on integer codes: cascades from a B-bit source code, and bit planes.

Two code conventions, both for signed quantities such as weights:

- **offset-binary, mid-rise** (Vertical Layering, our reading; the default): ``u in [0, 2^B-1]``
  stands for the level ``u - (2^B - 1)/2`` (times a step). Dropping the least significant bit,
  ``u_{b-1} = u_b >> 1`` with the step doubled, merges two neighbouring levels into their centre,
  so the *floor cascade* equals direct slicing ``u_k = u_B >> (B-k)`` and every dropped bit is
  one clean plane: the k-bit code is literally the top k bit planes of the B-bit code.
- **two's-complement, mid-tread** (Double Rounding / MatQuant style): ``q in [-2^(B-1),
  2^(B-1)-1]`` is the level itself. ``q_{b-1} = clip(round(q_b / 2))`` is the *round-clip
  cascade*, applied sequentially B -> B-1 -> ... -> k; the *direct* variant rounds once,
  ``q_k = clip(round(q_B / 2^(B-k)))``. The two disagree (93 of 256 int8 codes at 2 bits with
  round-half-up), and the residual of a step is in {-1, 0, 1}, so it is no bit plane.

The target bit-width may be traced (one compiled function serves every k); the source
bit-width B is static. Planes are ordered most significant first everywhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

ROUNDING_MODES = ("half_up", "half_even")


def _bits(bits) -> jax.Array:
    return jnp.asarray(bits, jnp.int32)


def _check_source(source_bits: int) -> int:
    if not isinstance(source_bits, (int, np.integer)) or not 1 <= source_bits <= 16:
        raise ValueError(f"source_bits must be a static int in 1..16, got {source_bits!r}")
    return int(source_bits)


# ----------------------------------------------------------------------------------------------
# Offset-binary codes, mid-rise levels, floor cascade.


def midrise_level(u: jax.Array, bits) -> jax.Array:
    """The mid-rise level of a b-bit offset-binary code: ``u - (2^b - 1)/2`` (float, in steps)."""
    half_span = (jnp.ldexp(jnp.ones((), jnp.float32), _bits(bits)) - 1.0) / 2.0
    return jnp.asarray(u, jnp.float32) - half_span


def floor_cascade(u: jax.Array, source_bits: int, bits) -> jax.Array:
    """The k-bit code of a B-bit offset-binary code: ``u >> (B - k)`` (k may be traced).

    Equal to applying ``u -> u >> 1`` B-k times (floor division by 2 composes). With the step
    ``s_k = 2^(B-k) s_B`` the k-bit level is the centre of the ``2^(B-k)`` merged B-bit levels.
    """
    source_bits = _check_source(source_bits)
    shift = jnp.clip(source_bits - _bits(bits), 0, source_bits)
    return jnp.right_shift(jnp.asarray(u, jnp.int32), shift)


# ----------------------------------------------------------------------------------------------
# Two's-complement codes, round-clip cascades.


def _round_half(x: jax.Array, rounding: str) -> jax.Array:
    if rounding == "half_up":
        return jnp.floor(x + 0.5)
    if rounding == "half_even":
        return jnp.round(x)
    raise ValueError(f"unknown rounding {rounding!r}; choose one of {ROUNDING_MODES}")


def _signed_clip(x: jax.Array, bits) -> jax.Array:
    half = jnp.left_shift(1, _bits(bits) - 1)
    return jnp.clip(x, -half, half - 1)


def round_clip_direct(q: jax.Array, source_bits: int, bits, rounding: str = "half_up") -> jax.Array:
    """Double Rounding's direct nesting:
    ``q_k = clip(round(q_B / 2^(B-k)), -2^(k-1), 2^(k-1)-1)``."""
    source_bits = _check_source(source_bits)
    scale = jnp.ldexp(jnp.ones((), jnp.float32), source_bits - _bits(bits))
    rounded = _round_half(jnp.asarray(q, jnp.float32) / scale, rounding).astype(jnp.int32)
    return _signed_clip(rounded, bits)


def round_clip_cascade(
    q: jax.Array, source_bits: int, bits, rounding: str = "half_up"
) -> jax.Array:
    """The sequential cascade ``q_{b-1} = clip(round(q_b / 2), -2^(b-2), 2^(b-2)-1)`` from B down
    to k. Written as a static loop over every step B -> B-1 -> ... -> 1 in which a step applies
    only while ``b > k``, so a traced k (and ``jax.vmap`` over k) needs no dynamic loop."""
    source_bits = _check_source(source_bits)
    k = _bits(bits)
    q = jnp.asarray(q, jnp.int32)
    for b in range(source_bits, 1, -1):  # the step b -> b-1
        halved = _signed_clip(
            _round_half(q.astype(jnp.float32) / 2.0, rounding).astype(jnp.int32), b - 1
        )
        q = jnp.where(b > k, halved, q)
    return q


def cascade_disagreements(source_bits: int, bits: int, rounding: str = "half_up") -> int:
    """How many of the 2^B signed B-bit codes the sequential round-clip cascade maps to another
    k-bit code than the direct round-clip (NumPy, exhaustive)."""
    codes = np.arange(-(2 ** (source_bits - 1)), 2 ** (source_bits - 1))
    sequential = np.asarray(round_clip_cascade(codes, source_bits, bits, rounding))
    direct = np.asarray(round_clip_direct(codes, source_bits, bits, rounding))
    return int(np.sum(sequential != direct))


# ----------------------------------------------------------------------------------------------
# Bit planes: the basic layer (top bits) and enhance layers (one plane per dropped bit).


def bit_planes(u: jax.Array, bits: int) -> jax.Array:
    """The ``bits`` planes of unsigned codes, most significant first: shape ``(bits, *u.shape)``,
    values 0/1 (uint8)."""
    u = jnp.asarray(u, jnp.int32)
    shifts = jnp.arange(bits - 1, -1, -1, dtype=jnp.int32).reshape((bits,) + (1,) * u.ndim)
    return (jnp.right_shift(u[None], shifts) & 1).astype(jnp.uint8)


def from_bit_planes(planes: jax.Array) -> jax.Array:
    """Inverse of `bit_planes`: ``sum_i 2^(n-1-i) plane_i`` as int32, for any number n of leading
    planes (the top n planes of a B-bit code give its n-bit floor-cascade code)."""
    planes = jnp.asarray(planes, jnp.int32)
    n = planes.shape[0]
    weights = jnp.left_shift(1, jnp.arange(n - 1, -1, -1, dtype=jnp.int32)).reshape(
        (n,) + (1,) * (planes.ndim - 1)
    )
    return jnp.sum(planes * weights, axis=0)


def split_layers(u: jax.Array, source_bits: int, basic_bits: int) -> tuple[jax.Array, jax.Array]:
    """Split B-bit codes into the **basic layer** (the ``basic_bits``-bit code ``u >> (B-b_min)``)
    and the **enhance layers** (the B-b_min dropped bits as planes, most significant first)."""
    source_bits = _check_source(source_bits)
    if not 1 <= basic_bits <= source_bits:
        raise ValueError(f"basic_bits must be in 1..{source_bits}, got {basic_bits}")
    u = jnp.asarray(u, jnp.int32)
    basic = jnp.right_shift(u, source_bits - basic_bits)
    enhance = bit_planes(u, source_bits)[basic_bits:]
    return basic, enhance


def stitch_layers(
    basic: jax.Array, enhance: jax.Array, num_enhance: int | None = None
) -> jax.Array:
    """Rebuild the ``(b_min + m)``-bit code from the basic layer and the first m enhance planes
    (all of them by default): ``u = (basic << m) | plane_1 << (m-1) | ... | plane_m``."""
    m = enhance.shape[0] if num_enhance is None else int(num_enhance)
    if not 0 <= m <= enhance.shape[0]:
        raise ValueError(f"num_enhance must be in 0..{enhance.shape[0]}, got {num_enhance}")
    u = jnp.asarray(basic, jnp.int32)
    for i in range(m):
        u = jnp.left_shift(u, 1) | jnp.asarray(enhance[i], jnp.int32)
    return u


# ----------------------------------------------------------------------------------------------
# Packing planes into bytes (eight weights per byte and plane).


def pack_planes(planes: np.ndarray) -> np.ndarray:
    """Pack 0/1 planes ``(n, *shape)`` into bytes ``(n, ceil(size/8))`` (big-endian bit order)."""
    planes = np.asarray(planes, np.uint8)
    return np.packbits(planes.reshape(planes.shape[0], -1), axis=1)


def unpack_planes(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `pack_planes` for planes of ``shape``."""
    size = int(np.prod(shape))
    packed = np.asarray(packed, np.uint8)
    return np.unpackbits(packed, axis=1, count=size).reshape((packed.shape[0],) + tuple(shape))

"""Bit-width nesting: cascades, bit planes, packing."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxquant import nesting


def _python_round_clip_cascade(q: int, source_bits: int, bits: int) -> int:
    """The sequential cascade with round-half-up, in plain Python."""
    for b in range(source_bits, bits, -1):
        half = 2 ** (b - 2)
        q = max(-half, min(half - 1, math.floor(q / 2 + 0.5)))
    return q


@pytest.mark.parametrize("source_bits", range(1, 9))
def test_stitch_split_is_bit_exact_for_every_code(source_bits):
    codes = jnp.arange(2**source_bits)
    for basic_bits in range(1, source_bits + 1):
        basic, enhance = nesting.split_layers(codes, source_bits, basic_bits)
        assert enhance.shape == (source_bits - basic_bits, codes.size)
        np.testing.assert_array_equal(nesting.stitch_layers(basic, enhance), codes)
        # The basic layer plus the first m planes is the (b_min + m)-bit floor-cascade code.
        for m in range(source_bits - basic_bits + 1):
            np.testing.assert_array_equal(
                nesting.stitch_layers(basic, enhance, m),
                nesting.floor_cascade(codes, source_bits, basic_bits + m),
            )


def test_floor_cascade_equals_sequential_lsb_drops_and_slicing():
    codes = jnp.arange(256)
    sequential = codes
    for k in range(7, 0, -1):
        sequential = sequential >> 1
        np.testing.assert_array_equal(nesting.floor_cascade(codes, 8, k), sequential)
        np.testing.assert_array_equal(
            nesting.floor_cascade(codes, 8, k), np.arange(256) // 2 ** (8 - k)
        )
    np.testing.assert_array_equal(nesting.floor_cascade(codes, 8, 8), codes)


def test_floor_cascade_serves_traced_bits_under_vmap():
    codes = jnp.arange(256)
    stacked = jax.jit(jax.vmap(lambda k: nesting.floor_cascade(codes, 8, k)))(jnp.arange(2, 9))
    for i, k in enumerate(range(2, 9)):
        np.testing.assert_array_equal(stacked[i], np.arange(256) >> (8 - k))


@pytest.mark.parametrize("k", range(1, 9))
def test_k_bit_level_is_centre_of_merged_source_levels(k):
    source = 8
    u8 = np.arange(256)
    uk = np.asarray(nesting.floor_cascade(u8, source, k))
    level8 = np.asarray(nesting.midrise_level(u8, source))  # in units of s_8
    levelk = np.asarray(nesting.midrise_level(uk, k)) * 2 ** (source - k)  # s_k = 2^(8-k) s_8
    for code in range(2**k):
        merged = level8[uk == code]
        assert merged.size == 2 ** (source - k)
        assert levelk[uk == code][0] == merged.mean()


def test_round_clip_cascade_disagrees_with_direct_rounding_on_93_codes():
    # Derived: with round-half-up, 8 -> 7 -> ... -> 2 differs from clip(round(q/64)) on 93 of 256.
    assert nesting.cascade_disagreements(8, 2, "half_up") == 93
    # With round-half-to-even (jnp.round) the same count is 30 (exhaustive, below).
    assert nesting.cascade_disagreements(8, 2, "half_even") == 30
    codes = np.arange(-128, 128)
    expected = [_python_round_clip_cascade(int(q), 8, 2) for q in codes]
    np.testing.assert_array_equal(nesting.round_clip_cascade(codes, 8, 2), expected)
    direct = [max(-2, min(1, math.floor(q / 64 + 0.5))) for q in codes]
    np.testing.assert_array_equal(nesting.round_clip_direct(codes, 8, 2), direct)
    assert sum(e != d for e, d in zip(expected, direct)) == 93


def test_round_clip_cascade_matches_python_at_every_traced_bit_width():
    codes = jnp.arange(-128, 128)
    fn = jax.jit(lambda k: nesting.round_clip_cascade(codes, 8, k))
    for k in range(1, 9):
        out = np.asarray(fn(k))
        assert out.min() >= -(2 ** (k - 1)) and out.max() <= 2 ** (k - 1) - 1
        np.testing.assert_array_equal(
            out, [_python_round_clip_cascade(int(q), 8, k) for q in codes]
        )


def test_round_clip_residual_is_not_a_bit_plane():
    q8 = np.arange(-128, 128)
    q7 = np.asarray(nesting.round_clip_cascade(q8, 8, 7))
    residual = q8 - 2 * q7
    assert set(np.unique(residual)) == {-1, 0, 1}
    # +1 appears only at the top code (the clip).
    assert list(q8[residual == 1]) == [127]


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 8), st.integers(1, 300), st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(bits, size, seed):
    codes = np.random.default_rng(seed).integers(0, 2**bits, size)
    planes = np.asarray(nesting.bit_planes(codes, bits))
    packed = nesting.pack_planes(planes)
    assert packed.shape == (bits, (size + 7) // 8) and packed.dtype == np.uint8
    np.testing.assert_array_equal(nesting.unpack_planes(packed, (size,)), planes)
    np.testing.assert_array_equal(nesting.from_bit_planes(planes), codes)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="rounding"):
        nesting.round_clip_direct(jnp.arange(4), 8, 2, rounding="stochastic")
    with pytest.raises(ValueError, match="basic_bits"):
        nesting.split_layers(jnp.arange(4), 8, 9)
    with pytest.raises(ValueError, match="source_bits"):
        nesting.floor_cascade(jnp.arange(4), 17, 2)

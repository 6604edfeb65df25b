"""BitSplit's weight optimisation against plain NumPy transcriptions of the official code's
``fwa``, ``ofwa`` and ``ofwa_rr`` (digest B2), and the properties the paper relies on."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxquant.errors import BitWidthError
from jaxquant.methods import bitsplit

# ---------------------------------------------------------------------------------------------
# NumPy references, written from the digest's description of the official code.


def fwa_reference(w, bits):
    qmax = 2 ** (bits - 1) - 1
    alpha = np.abs(w).max(1) / qmax
    while True:
        q = np.clip(np.round(w / alpha[:, None]), -qmax, qmax)
        new = (w * q).sum(1) / (q * q).sum(1)
        if np.linalg.norm(new - alpha) <= 1e-9:
            return np.clip(np.round(w / new[:, None]), -qmax, qmax), new
        alpha = new


def ofwa_rr_reference(x, y, planes, alpha, epochs):
    """The digest's loop, one coordinate at a time, in float64 (planes MSB first, integer
    weights)."""
    planes = planes.astype(np.float64).copy()
    alpha = alpha.astype(np.float64).copy()
    num_planes = planes.shape[0]
    c = 2.0 ** np.arange(num_planes - 1, -1, -1)
    gram = x.T @ x
    for _ in range(epochs):
        b = np.tensordot(c, planes, 1)
        xb = x @ b.T
        alpha = (y * xb).sum(0) / (xb * xb).sum(0)
        for i in range(num_planes):
            b_without = np.tensordot(c, planes, 1) - c[i] * planes[i]
            r = y - x @ (alpha[:, None] * b_without).T
            t = r.T @ x
            s = alpha * c[i]
            beta = planes[i]
            for n in range(x.shape[1]):
                beta[:, n] = 0
                g = 2 * (s * (beta @ gram[:, n]) - t[:, n])
                beta[:, n] = -np.sign(g)
                beta[np.abs(g) < s * gram[n, n], n] = 0
    return planes, alpha


def post_relu_problem(seed, rows=600, fan_in=36, out=8):
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.normal(size=(rows, fan_in)), 0).astype(np.float32)
    w = (rng.normal(size=(out, fan_in)) * 0.2).astype(np.float32)
    return x, w, x @ w.T


def output_error(x, y, codes, alpha):
    return float(np.sum((y - x @ (np.asarray(alpha)[:, None] * np.asarray(codes)).T) ** 2))


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_split_planes_are_ternary_msb_first_and_stitch_back(bits):
    qmax = 2 ** (bits - 1) - 1
    q = np.arange(-qmax, qmax + 1)
    planes = np.asarray(bitsplit.split(q, bits))
    assert planes.shape == (bits - 1, q.size)
    assert set(np.unique(planes)) <= {-1.0, 0.0, 1.0}
    np.testing.assert_array_equal(np.asarray(bitsplit.stitch(planes)), q)
    if bits == 4:  # the digest's example: 5 -> (1, 0, 1); -3 -> (0, -1, -1)
        np.testing.assert_array_equal(planes[:, q == 5].ravel(), [1, 0, 1])
        np.testing.assert_array_equal(planes[:, q == -3].ravel(), [0, -1, -1])


@settings(max_examples=30, deadline=None)
@given(
    bits=st.integers(2, 8),
    planes=st.lists(
        st.lists(st.sampled_from([-1.0, 0.0, 1.0]), min_size=7, max_size=7), min_size=7, max_size=7
    ),
)
def test_any_ternary_planes_stitch_onto_the_grid(bits, planes):
    """Independently optimised planes may disagree in sign; their stitch is still an M-bit code."""
    planes = np.asarray(planes)[: bits - 1]
    codes = np.asarray(bitsplit.stitch(planes))
    assert np.all(codes == np.round(codes)) and np.all(np.abs(codes) <= 2 ** (bits - 1) - 1)


def test_bit_widths_outside_2_to_16_are_refused():
    for bad in (1, 17, 3.5):
        with pytest.raises(BitWidthError, match="2..16"):
            bitsplit.check_bits(bad)


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_fwa_matches_the_code_and_is_a_fixed_point(bits):
    _, w, _ = post_relu_problem(0)
    codes, alpha = bitsplit.fwa(w, bits)
    ref_codes, ref_alpha = fwa_reference(w.astype(np.float64), bits)
    np.testing.assert_allclose(np.asarray(alpha), ref_alpha, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(codes), ref_codes)
    codes = np.asarray(codes)
    np.testing.assert_allclose(
        np.asarray(alpha), (w * codes).sum(1) / (codes * codes).sum(1), rtol=1e-5
    )


def test_round_to_nearest_uses_the_max_scale_per_channel():
    w = np.array([[0.5, -1.0, 0.26], [0.0, 0.0, 0.0]], np.float32)
    codes, alpha = bitsplit.round_to_nearest(w, 3)
    np.testing.assert_allclose(np.asarray(alpha), [1.0 / 3, 1.0])  # the zero row gets a harmless 1
    np.testing.assert_array_equal(np.asarray(codes), [[2, -3, 1], [0, 0, 0]])


def test_ofwa_never_increases_the_weight_error():
    _, w, _ = post_relu_problem(1)
    for bits in (3, 4):
        codes, alpha = bitsplit.fwa(w, bits)
        planes, alpha2 = bitsplit.ofwa(w, bitsplit.split(codes, bits), alpha)
        before = np.sum((w - np.asarray(alpha)[:, None] * np.asarray(codes)) ** 2)
        after = np.sum((w - np.asarray(alpha2)[:, None] * np.asarray(bitsplit.stitch(planes))) ** 2)
        assert after <= before * (1 + 1e-6)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_ofwa_rr_matches_the_code_loop(bits):
    x, w, y = post_relu_problem(2, rows=200, fan_in=18, out=5)
    codes, alpha = bitsplit.fwa(w, bits)
    planes = np.asarray(bitsplit.split(codes, bits))
    ref_planes, ref_alpha = ofwa_rr_reference(
        x.astype(np.float64), y.astype(np.float64), planes, np.asarray(alpha), epochs=3
    )
    for sequential in (True, False):
        got_planes, got_alpha, _ = bitsplit.ofwa_rr(
            x, y, planes, alpha, epochs=3, block=4, sequential=sequential
        )
        np.testing.assert_array_equal(np.asarray(got_planes), ref_planes)
        np.testing.assert_allclose(np.asarray(got_alpha), ref_alpha, rtol=1e-4)


@pytest.mark.parametrize("block", [1, 7, 64])
def test_blocked_sweep_makes_the_sequential_decisions(block):
    x, w, y = post_relu_problem(3, fan_in=45)
    codes, alpha = bitsplit.fwa(w, 4)
    planes = bitsplit.split(codes, 4)
    sequential = bitsplit.ofwa_rr(x, y, planes, alpha, epochs=5, sequential=True)
    blocked = bitsplit.ofwa_rr(x, y, planes, alpha, epochs=5, block=block)
    np.testing.assert_array_equal(np.asarray(blocked[0]), np.asarray(sequential[0]))
    np.testing.assert_allclose(np.asarray(blocked[2]), np.asarray(sequential[2]), rtol=1e-5)


@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_ofwa_rr_descends_stays_on_grid_and_beats_round_to_nearest(bits):
    x, w, y = post_relu_problem(4, rows=2000, fan_in=72, out=16)
    result = bitsplit.quantize_weight(w, bits, x, y, epochs=30)
    errors = np.asarray(result["errors"], np.float64)
    assert np.all(np.diff(errors) <= 1e-5 * errors[0]), errors  # never increases, epoch to epoch
    assert errors[-1] < errors[0]
    codes = np.asarray(result["codes"])
    qmax = 2 ** (bits - 1) - 1
    assert np.all(codes == np.round(codes)) and np.abs(codes).max() <= qmax
    np.testing.assert_allclose(
        np.asarray(result["weight"]), np.asarray(result["alpha"])[:, None] * codes
    )
    # The error the optimiser reports is the real output error on the rows.
    np.testing.assert_allclose(errors[-1], output_error(x, y, codes, result["alpha"]), rtol=1e-3)
    rtn_codes, rtn_alpha = bitsplit.round_to_nearest(w, bits)
    assert output_error(x, y, codes, result["alpha"]) < output_error(x, y, rtn_codes, rtn_alpha)


def test_a_channel_the_data_never_excites_keeps_a_finite_scale():
    """``||X b_m|| = 0`` would give the code a NaN alpha; here alpha stays what it was."""
    x, w, y = post_relu_problem(5, fan_in=12, out=3)
    x[:, :6] = 0.0  # inputs 0..5 are dead ...
    w[1, 6:] = 0.0  # ... and channel 1 only reads them
    y = x @ w.T
    result = bitsplit.quantize_weight(w, 3, x, y, epochs=4)
    assert np.all(np.isfinite(np.asarray(result["alpha"])))
    assert np.all(np.isfinite(np.asarray(result["errors"])))


def test_gram_statistics_reproduce_the_error_of_the_rows():
    x, w, y = post_relu_problem(6)
    codes, alpha = bitsplit.fwa(w, 4)
    stats = bitsplit.gram_statistics(x, y)
    np.testing.assert_allclose(
        float(bitsplit.reconstruction_error(*stats, codes, alpha)),
        output_error(x, y, codes, alpha),
        rtol=1e-4,
    )


def test_compiled_ofwa_rr_is_cached_per_shape():
    first = bitsplit.compiled_ofwa_rr(2, 4, 9, epochs=2, block=4)
    assert bitsplit.compiled_ofwa_rr(2, 4, 9, epochs=2, block=4) is first
    assert bitsplit.compiled_ofwa_rr(3, 4, 9, epochs=2, block=4) is not first
    planes = jnp.zeros((2, 4, 9))
    out = first(*bitsplit.gram_statistics(jnp.ones((5, 9)), jnp.ones((5, 4))), planes, jnp.ones(4))
    assert out[0].shape == (2, 4, 9)


# ---------------------------------------------------------------------------------------------
# Depthwise: the official code's ``ofwa_rr_dw``.


def ofwa_rr_dw_reference(x, y, planes, alpha, epochs):
    """The official depthwise loop as described: ``x`` ``[K, M, N]`` (channel m's own patch),
    ``y`` ``[K, M]``; a Gram matrix per channel, the ``ofwa_rr`` alternation for all channels,
    one coordinate at a time, in float64; a NaN alpha takes the previous alpha."""
    planes = planes.astype(np.float64).copy()
    alpha = alpha.astype(np.float64).copy()
    num_planes = planes.shape[0]
    c = 2.0 ** np.arange(num_planes - 1, -1, -1)
    gram = np.einsum("kmi,kmj->mij", x, x)
    for _ in range(epochs):
        b = np.tensordot(c, planes, 1)
        xb = np.einsum("kmn,mn->km", x, b)
        with np.errstate(invalid="ignore", divide="ignore"):
            new = (y * xb).sum(0) / (xb * xb).sum(0)
        alpha = np.where(np.isnan(new), alpha, new)
        for i in range(num_planes):
            b_without = np.tensordot(c, planes, 1) - c[i] * planes[i]
            r = y - np.einsum("kmn,mn->km", x, alpha[:, None] * b_without)
            t = np.einsum("km,kmn->mn", r, x)
            s = alpha * c[i]
            beta = planes[i]
            for n in range(x.shape[2]):
                beta[:, n] = 0
                g = 2 * (s * np.einsum("mj,mj->m", beta, gram[:, :, n]) - t[:, n])
                beta[:, n] = -np.sign(g)
                beta[np.abs(g) < s * gram[:, n, n], n] = 0
    return planes, alpha


def depthwise_problem(seed, rows=400, channels=6, taps=9):
    """Post-ReLU 3x3 patches per channel; channel 2's weights are all zero (its planes stay
    zero: the code's NaN alpha), channel 4 never sees a nonzero input."""
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.normal(size=(rows, channels, taps)), 0).astype(np.float32)
    w = (rng.normal(size=(channels, taps)) * 0.3).astype(np.float32)
    w[2] = 0.0
    x[:, 4] = 0.0
    return x, w, np.einsum("kmn,mn->km", x, w)


@pytest.mark.parametrize("bits", [3, 4, 5])
def test_ofwa_rr_dw_matches_the_code_loop_and_guards_the_nan_alpha(bits):
    x, w, y = depthwise_problem(7)
    codes, alpha = bitsplit.fwa(w, bits)
    planes, alpha = bitsplit.ofwa(w, bitsplit.split(codes, bits), alpha, epochs=5)
    planes, alpha = np.asarray(planes), np.asarray(alpha)
    assert not planes[:, 2].any()  # the all-zero channel starts (and stays) without a code
    ref_planes, ref_alpha = ofwa_rr_dw_reference(
        x.astype(np.float64), y.astype(np.float64), planes, alpha, epochs=4
    )
    got_planes, got_alpha, errors = bitsplit.ofwa_rr_dw(x, y, planes, alpha, epochs=4)
    np.testing.assert_array_equal(np.asarray(got_planes), ref_planes)
    np.testing.assert_allclose(np.asarray(got_alpha), ref_alpha, rtol=1e-4)
    assert np.all(np.isfinite(np.asarray(got_alpha))) and np.all(np.isfinite(np.asarray(errors)))
    assert not np.asarray(got_planes)[:, 2].any()
    np.testing.assert_allclose(float(got_alpha[2]), float(alpha[2]))  # the previous alpha
    np.testing.assert_allclose(float(got_alpha[4]), float(alpha[4]))  # never excited: likewise


def test_ofwa_rr_dw_is_ofwa_rr_on_each_channel_alone():
    x, w, y = depthwise_problem(8, channels=5)
    codes, alpha = bitsplit.fwa(w, 4)
    planes = bitsplit.split(codes, 4)
    dw_planes, dw_alpha, _ = bitsplit.ofwa_rr_dw(x, y, planes, alpha, epochs=5)
    for m in (0, 3):
        one = bitsplit.ofwa_rr(
            x[:, m], y[:, m : m + 1], planes[:, m : m + 1], alpha[m : m + 1], epochs=5
        )
        np.testing.assert_array_equal(np.asarray(one[0])[:, 0], np.asarray(dw_planes)[:, m])
        np.testing.assert_allclose(float(one[1][0]), float(dw_alpha[m]), rtol=1e-5)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_quantize_weight_on_depthwise_rows_descends_and_beats_round_to_nearest(bits):
    x, w, y = depthwise_problem(9, rows=1500, channels=12)
    result = bitsplit.quantize_weight(w, bits, x, y, epochs=20)
    errors = np.asarray(result["errors"], np.float64)
    assert np.all(np.diff(errors) <= 1e-5 * errors[0]), errors
    assert errors[-1] < errors[0]
    codes, alpha = np.asarray(result["codes"]), np.asarray(result["alpha"])
    assert np.all(codes == np.round(codes)) and np.abs(codes).max() <= 2 ** (bits - 1) - 1

    def output_error_dw(codes, alpha):
        return float(np.sum((y - np.einsum("kmn,mn->km", x, alpha[:, None] * codes)) ** 2))

    np.testing.assert_allclose(errors[-1], output_error_dw(codes, alpha), rtol=1e-3)
    rtn_codes, rtn_alpha = bitsplit.round_to_nearest(w, bits)
    assert output_error_dw(codes, alpha) < output_error_dw(
        np.asarray(rtn_codes), np.asarray(rtn_alpha)
    )

"""Quantizers as values: the name table, QuantSpec's names and objects, and each family's object
in a layer against its function."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from jaxquant import quantizers as q
from jaxquant.errors import BitWidthError, ConfigError
from jaxquant.layers import QuantConv, QuantDense, QuantSpec, bits_at, is_quantizer_param

X = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 5, 3)), jnp.float32)


def test_names_build_the_same_objects_as_the_types():
    assert QuantSpec() == QuantSpec("lsq", "lsq")
    assert QuantSpec("lsq", "lsq", per_channel=True) == QuantSpec(
        q.LSQ.for_weights(per_channel=True), q.LSQ.for_activations()
    )
    assert QuantSpec("dorefa", "dorefa") == QuantSpec(q.DoReFaWeight(), q.DoReFaActivation())
    spec = QuantSpec(
        "vertical", "lsq", source_bits=6, cascade="round_clip", signed_activations=True
    )
    assert spec.weight == q.Vertical(source_bits=6, cascade="round_clip")
    assert spec.activation == q.LSQ(signed=True, per_example=True)
    assert (spec.source_bits, spec.cascade, spec.signed_activations, spec.per_channel) == (
        6,
        "round_clip",
        True,
        False,
    )
    # Settings apply to objects that have the field, and are ignored by those that do not.
    assert QuantSpec(q.LSQ(), per_channel=True).weight.per_channel
    assert QuantSpec(q.DoReFaWeight(), per_channel=True).weight == q.DoReFaWeight()
    assert hash(QuantSpec()) == hash(QuantSpec("lsq", "lsq"))  # a Flax module field


def test_the_name_table():
    assert set(q.names("weight")) >= {"lsq", "dorefa", "vertical", "codes", "interval", "none"}
    assert set(q.names("activation")) >= {"lsq", "dorefa", "interval", "none"}
    assert q.weight_quantizer("vertical", source_bits=4) == q.Vertical(source_bits=4)
    with pytest.raises(ConfigError, match="unknown activation quantizer 'vertical'"):
        q.activation_quantizer("vertical")
    with pytest.raises(ConfigError, match="must be a Quantizer subclass"):
        q.register("bad", weight=object)
    with pytest.raises(BitWidthError, match="unknown quantizer"):
        q.validate_bits((2,), "nope")
    with pytest.raises(BitWidthError, match="above the source bit-width 4"):
        q.Vertical(source_bits=4).validate((2, 6))
    with pytest.raises(ConfigError, match="unknown cascade"):
        q.Vertical(cascade="ceil")


def test_quantizer_parameters_are_named_by_role_and_grouped():
    params = QuantConv(4, bits=(2, 8), spec=QuantSpec("lsq", "lsq")).init(jax.random.key(0), X, 0)
    assert set(params["params"]) == {"kernel", "weight_step", "act_step"}
    assert all(is_quantizer_param(n) for n in ("weight_step", "act_step", "act_alpha", "act_upper"))
    assert not any(is_quantizer_param(n) for n in ("kernel", "bias", "scale", "code_step"))


@pytest.mark.parametrize("bits", [2, 5, 32])
def test_interval_activation_object_in_a_conv_equals_the_function(bits):
    """MBQuant's interval activation quantizer, in a plain QuantConv: the layer's output is the
    conv of ``interval_activation(x, l, u, b)`` with the kernel; l and u start at the official
    init (min and ``3 std / sqrt(1 - 2/pi)``)."""
    spec = QuantSpec("none", "interval")
    layer = QuantConv(4, bits=(bits,), spec=spec)
    params = layer.init(jax.random.key(1), X, 0)["params"]
    lower, upper = float(jnp.min(X)), float(3 * jnp.std(X, ddof=1) * q.ARCSINE_HALF_NORMAL)
    assert_allclose(params["act_lower"], [lower], rtol=1e-6)
    assert_allclose(params["act_upper"], [upper], rtol=1e-6)
    xq = q.interval_activation(X, lower, upper, bits)
    expected = jax.lax.conv_general_dilated(
        xq, params["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    assert_allclose(layer.apply({"params": params}, X, 0), expected, rtol=1e-5, atol=1e-5)


def test_interval_weight_object_is_two_bit_at_every_precision():
    layer = QuantDense(3, use_bias=False, bits=(4, 8), spec=QuantSpec("interval", "none"))
    x = X.reshape(2, -1)
    params = layer.init(jax.random.key(2), x, 0)["params"]
    spread = 3 * float(jnp.std(params["kernel"]))
    assert_allclose([params["weight_lower"], params["weight_upper"]], [-spread, spread], rtol=1e-6)
    for p in (0, 1):
        w = q.interval_weight(params["kernel"], params["weight_lower"], params["weight_upper"])
        assert_allclose(layer.apply({"params": params}, x, p), x @ w, rtol=1e-5, atol=1e-5)
    assert q.IntervalWeight().code_bits((4, 8)) == 2


def test_stored_codes_are_an_inference_form_of_conv_only():
    layer = QuantDense(3, bits=(4,), spec=QuantSpec("codes", "lsq"))
    with pytest.raises(ConfigError, match="inference form of QuantConv only"):
        layer.init(jax.random.key(0), X.reshape(2, -1), 0)


def test_a_quantizer_without_a_grid_says_so_in_bfloat16():
    class NoGrid(q.Quantizer):
        def quantize(self, x, params, bits):
            return x

    layer = QuantDense(3, bits=(4,), spec=QuantSpec(NoGrid(), "none"))
    with pytest.raises(NotImplementedError, match="no integer grid; compute in float32"):
        layer.init(jax.random.key(0), X.reshape(2, -1).astype(jnp.bfloat16), 0)


# ----------------------------------------------------------------------------------------------
# Each family's object through the layer protocol (init at every bit-width, `at` a precision
# index, quantize at ``bits[p]``, grid_scale), with and without jax.jit (chex.variants): jitted,
# the precision index and the bit-width are traced and one trace serves every p; not jitted,
# they are Python ints. Expected values are the formulas in NumPy.

BITS = (2, 4, 8)
W = np.random.default_rng(3).normal(size=(3, 3, 2, 4)).astype(np.float32)  # HWIO
A = np.abs(np.random.default_rng(4).normal(size=(2, 5, 5, 4))).astype(np.float32) * 2


def np_lsq(v, s, qn, qp):
    return (np.round(np.clip(v / s, -qn, qp)) * s).astype(np.float32)


def np_unit(t, n):
    return (np.round(np.clip(t, 0, 1) * np.float32(n)) / np.float32(n)).astype(np.float32)


class QuantizerObjectsJittedAndNot(chex.TestCase):
    def _protocol(self, quantizer, x, cotangent=None):
        """``{p: (x_hat, grid scale, params at p, param gradients)}`` for every precision index,
        from ``quantizer.init(x, BITS)``; the gradients are of ``sum(cotangent * x_hat)``."""
        params = quantizer.init(jnp.asarray(x), BITS)

        def run(x, params, p):
            b = bits_at(BITS, p)
            quantize = lambda params: quantizer.quantize(x, quantizer.at(params, p), b)  # noqa: E731
            x_hat, vjp = jax.vjp(quantize, params)
            c = jnp.ones_like(x_hat) if cotangent is None else jnp.asarray(cotangent)
            return x_hat, quantizer.grid_scale(x, quantizer.at(params, p), b), vjp(c)[0]

        fn = self.variant(run)
        return params, {p: fn(jnp.asarray(x), params, p) for p in range(len(BITS))}

    @chex.variants(with_jit=True, without_jit=True)
    def test_lsq_weights_per_channel(self):
        params, out = self._protocol(q.LSQ.for_weights(per_channel=True), W)
        chex.assert_shape(params["step"], (len(BITS), W.shape[-1]))  # a step per bit and channel
        for p, (x_hat, scale, _) in out.items():
            qn, qp = 2 ** (BITS[p] - 1), 2 ** (BITS[p] - 1) - 1
            step = 2 * np.abs(W).mean(axis=(0, 1, 2)) / np.sqrt(qp)  # one step per channel
            assert_allclose(params["step"][p], step, rtol=1e-6)
            assert_array_equal(x_hat, np_lsq(W, np.asarray(params["step"][p]), qn, qp))
            assert_array_equal(scale, params["step"][p])

    @chex.variants(with_jit=True, without_jit=True)
    def test_lsq_activations_step_gradient_per_example(self):
        c = np.random.default_rng(5).normal(size=A.shape).astype(np.float32)
        params, out = self._protocol(q.LSQ.for_activations(), A, c)
        chex.assert_shape(params["step"], (len(BITS),))
        for p, (x_hat, scale, grads) in out.items():
            qp = 2 ** BITS[p] - 1
            s = np.asarray(params["step"][p])
            assert_allclose(s, 2 * np.abs(A).mean() / np.sqrt(qp), rtol=1e-6)
            assert_array_equal(x_hat, np_lsq(A, s, 0, qp))
            assert_array_equal(scale, s)
            x = A.astype(np.float64) / s  # LSQ eq. 3, N = one example's elements (5 * 5 * 4)
            element = np.where(x >= qp, qp, np.round(x) - x)
            expected = np.zeros(len(BITS))
            expected[p] = np.sum(c * element) / np.sqrt(100 * qp)
            assert_allclose(grads["step"], expected, rtol=1e-4, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_dorefa(self):
        _, weights = self._protocol(q.DoReFaWeight(), W)
        _, activations = self._protocol(q.DoReFaActivation(), A - 0.5)
        t = np.tanh(W.astype(np.float64))
        e = np.abs(W).mean()
        for p, b in enumerate(BITS):
            n = 2**b - 1
            x_hat, scale, _ = weights[p]
            expected = (2 * np.round((t / (2 * np.abs(t).max()) + 0.5) * n) / n - 1) * e
            assert_allclose(x_hat, expected, rtol=1e-5, atol=1e-6)
            assert_allclose(scale, e / n, rtol=1e-6)
            x_hat, scale, _ = activations[p]
            assert_allclose(x_hat, np_unit(A - 0.5, n), rtol=1e-6, atol=1e-7)
            assert_allclose(scale, 1 / n, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_intervals(self):
        params, activations = self._protocol(q.IntervalActivation(), A)
        chex.assert_shape([params["lower"], params["upper"]], (len(BITS),))  # per bit-width
        lower = A.min()
        upper = max(3 * np.std(A.astype(np.float64), ddof=1) * q.ARCSINE_HALF_NORMAL, lower + 1e-3)
        assert_allclose(params["lower"], [lower] * 3, rtol=1e-6)
        assert_allclose(params["upper"], [upper] * 3, rtol=1e-5)
        w_params, weights = self._protocol(q.IntervalWeight(), W)
        chex.assert_shape([w_params["lower"], w_params["upper"]], ())  # shared
        spread = 3 * np.std(W.astype(np.float64))
        assert_allclose([w_params["lower"], w_params["upper"]], [-spread, spread], rtol=1e-5)
        for p, b in enumerate(BITS):
            x_hat, scale, _ = activations[p]
            t = (A - params["lower"][p]) / (params["upper"][p] - params["lower"][p])
            assert_allclose(x_hat, np_unit(np.asarray(t), 2**b - 1), rtol=1e-6, atol=1e-6)
            assert_allclose(scale, 1 / (2**b - 1), rtol=1e-6)
            x_hat, scale, _ = weights[p]  # 2 bits at every precision
            t = (W - w_params["lower"]) / (w_params["upper"] - w_params["lower"])
            assert_allclose(x_hat, 2 * np_unit(np.asarray(t), 3) - 1, rtol=1e-6, atol=1e-6)
            assert_allclose(scale, 1 / 3, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_vertical(self):
        params, out = self._protocol(q.Vertical(source_bits=8), W)
        chex.assert_shape(params["step"], ())  # one source step shared by every bit-width
        s = np.float32(params["step"])
        assert_allclose(s, 2 * np.abs(W).mean() / np.sqrt(127), rtol=1e-6)  # LSQ's init at B
        u = np.clip(np.floor(W / s + np.float32(128)), 0, 255).astype(np.int64)
        for p, k in enumerate(BITS):
            x_hat, scale, _ = out[p]
            level = (u >> (8 - k)) - (2**k - 1) / 2  # the top k bit planes, mid-rise
            assert_allclose(x_hat, level * 2 ** (8 - k) * np.float64(s), rtol=1e-6, atol=0)
            assert_allclose(scale, s * 2 ** (8 - k) / 2, rtol=1e-6)

"""Quantizers as values: the name table, QuantSpec's names and objects, and each family's object
in a layer against its function."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose

from jaxquant import quantizers as q
from jaxquant.errors import BitWidthError, ConfigError
from jaxquant.layers import QuantConv, QuantDense, QuantSpec, is_quantizer_param

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

"""A static bit-width (a Python or NumPy int, as the unrolled multi-precision step passes) picks
the full-precision or quantized branch of each quantizer in Python: the same values and
gradients as the same bit-width passed as a traced array (which computes both branches and
selects with ``jnp.where``), with only one branch in the trace."""

from __future__ import annotations

import collections

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxquant import layers
from jaxquant import quantizers as q
from jaxquant.layers import QuantConv, QuantDense, QuantSpec

SHAPE = (3, 4, 5)


def _operands():
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], SHAPE)
    cotangent = jax.random.normal(keys[1], SHAPE)
    return x, cotangent


# Each case: (name, fn(x, params, bits), params: the other float operands, differentiated too).
CASES = [
    ("dorefa_activation", lambda x, p, b: q.dorefa_activation(x * 0.8 + 0.5, b), ()),
    ("dorefa_weight", lambda x, p, b: q.dorefa_weight(x, b), ()),
    ("lsq_signed", lambda x, p, b: q.lsq_quantize(x, p[0], b, signed=True), (jnp.float32(0.3),)),
    (
        "lsq_unsigned",
        lambda x, p, b: q.lsq_quantize(jax.nn.relu(x), p[0], b, signed=False, num_elements=20),
        (jnp.float32(0.2),),
    ),
    (
        "lsq_per_channel",
        lambda x, p, b: q.lsq_quantize(x, p[0], b, signed=True),
        (jnp.asarray([0.2, 0.3, 0.4, 0.5, 0.6], jnp.float32),),
    ),
    (
        "interval_activation",
        lambda x, p, b: q.interval_activation(x, p[0], p[1], b),
        (jnp.float32(-0.5), jnp.float32(1.2)),
    ),
    (
        "vertical_floor",
        lambda x, p, b: q.vertical_weight(x, p[0], b, source_bits=8),
        (jnp.float32(0.05),),
    ),
    (
        "vertical_round_clip",
        lambda x, p, b: q.vertical_weight(x, p[0], b, source_bits=8, cascade="round_clip"),
        (jnp.float32(0.05),),
    ),
]


def _value_and_grads(fn, x, params, cotangent, bits):
    def loss(x, params):
        out = fn(x, params, bits)
        return jnp.sum(out * cotangent), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(x, params)
    return out, grads


@pytest.mark.parametrize("name,fn,params", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("bits", [2, 4, q.FP_BITS])
def test_static_bits_equal_traced_bits(name, fn, params, bits):
    x, cotangent = _operands()
    traced = jax.jit(lambda x, params, b: _value_and_grads(fn, x, params, cotangent, b))(
        x, params, jnp.asarray(bits, jnp.int32)
    )
    for static in (bits, np.int32(bits)):
        result = jax.jit(lambda x, params: _value_and_grads(fn, x, params, cotangent, static))(
            x, params
        )
        chex.assert_trees_all_equal_shapes_and_dtypes(result, traced)
        chex.assert_trees_all_close(result, traced, rtol=1e-6, atol=1e-7)


def _primitives(fn, *args):
    """How often each primitive occurs in ``fn``'s trace, nested jaxprs (jit, custom_vjp)
    included."""
    names = collections.Counter()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            names[eqn.primitive.name] += 1
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    if hasattr(sub, "eqns"):
                        walk(sub)
                    elif hasattr(getattr(sub, "jaxpr", None), "eqns"):
                        walk(sub.jaxpr)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return names


def test_static_bits_trace_only_the_branch_used():
    x, _ = _operands()
    # Traced: both branches (ReLU; the quantizer's STE rounding, a custom_vjp) and the select.
    traced = _primitives(lambda x, b: q.dorefa_activation(x, b), x, jnp.int32(2))
    full = _primitives(lambda x: q.dorefa_activation(x, q.FP_BITS), x)
    quantized = _primitives(lambda x: q.dorefa_activation(x, 2), x)
    assert traced["round"] and traced["custom_vjp_call"]
    assert not (full["round"] or full["custom_vjp_call"] or full["select_n"])
    assert quantized["round"] and quantized.total() < traced.total()
    assert full["max"] == traced["max"] - quantized["max"]  # ReLU's max only in the FP branch
    lsq_full = _primitives(lambda x: q.lsq_quantize(x, 0.1, q.FP_BITS, signed=True), x)
    assert not (lsq_full["round"] or lsq_full["select_n"] or lsq_full["custom_vjp_call"])


def test_bits_at_is_a_python_int_for_a_static_precision():
    bits = (1, 2, 32)
    for p in (0, 2, np.int64(1), -1):
        got = layers.bits_at(bits, p)
        assert type(got) is int and got == bits[p]
    traced = jax.jit(lambda p: layers.bits_at(bits, p))(jnp.int32(2))
    assert isinstance(traced, jax.Array) and int(traced) == 32


@pytest.mark.parametrize(
    "spec", [QuantSpec("dorefa", "dorefa"), QuantSpec()], ids=["dorefa", "lsq"]
)
def test_layers_static_precision_equal_traced_precision(spec):
    """A QuantConv and QuantDense called with a Python-int precision (the unrolled step) give the
    values and parameter gradients of the same precision passed as an array (the vmapped step)."""
    bits = (2, 4, 32)
    x = jax.random.uniform(jax.random.key(3), (2, 6, 6, 3), minval=-0.5, maxval=1.5)

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, precision):
            y = QuantConv(4, bits=bits, spec=spec)(x, precision)
            return QuantDense(3, bits=bits, spec=spec)(y.reshape(y.shape[0], -1), precision)

    net = Net()
    variables = net.init(jax.random.key(0), x, 0)

    static, traced = {}, {}  # keyed by precision: a failing leaf's path names it
    for p in range(len(bits)):
        static[p] = jax.jit(
            lambda v: jax.value_and_grad(lambda v: jnp.sum(jnp.sin(net.apply(v, x, p))))(v)
        )(variables)
        traced[p] = jax.jit(
            lambda v, p: jax.value_and_grad(lambda v: jnp.sum(jnp.sin(net.apply(v, x, p))))(v)
        )(variables, jnp.int32(p))
    chex.assert_trees_all_close(static, traced, rtol=1e-5, atol=1e-6)

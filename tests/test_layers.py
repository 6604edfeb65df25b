"""Tests of the Flax layers in `jaxquant.layers`: quantized conv/dense, switchable BatchNorm and
the precision-batched convolution. Expected outputs are computed by hand in NumPy (quantization)
and with plain `jax.lax` ops (convolution), never by the layer under test."""

from __future__ import annotations

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from jaxquant.errors import BitWidthError, ConfigError, JaxquantError
from jaxquant.layers import (
    FULL_PRECISION,
    Lowering,
    PrecisionBatchNorm,
    QuantConv,
    QuantDense,
    QuantSpec,
    batch_norm_train,
    current_lowering,
    lowering,
    precision_conv,
)

BITS = (2, 4, 8)
SIGNED_QP = {2: 1, 4: 7, 8: 127}  # 2^(b-1) - 1, by hand
SIGNED_QN = {2: 2, 4: 8, 8: 128}  # 2^(b-1)
UNSIGNED_QP = {2: 3, 4: 15, 8: 255}  # 2^b - 1
LSQ = QuantSpec("lsq", "lsq")


def f32(x):
    return np.asarray(x, np.float32)


def np_quant(v, s, qn, qp):
    v, s = f32(v), f32(s)
    return (np.round(np.clip(v / s, np.float32(-qn), np.float32(qp))) * s).astype(np.float32)


def conv_nhwc(x, k, strides=(1, 1), padding="SAME"):
    return jax.lax.conv_general_dilated(
        jnp.asarray(x), jnp.asarray(k), strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _images(seed=0, shape=(2, 5, 5, 3)):
    return f32(np.random.default_rng(seed).normal(size=shape))


# ----------------------------------------------------------------------------------------------
# QuantConv / QuantDense with LSQ.


def test_quant_conv_lsq_steps_and_outputs():
    x = _images()
    model = QuantConv(features=4, kernel_size=(3, 3), bits=BITS, spec=LSQ)
    variables = model.init(jax.random.PRNGKey(0), jnp.asarray(x), 0)
    params = variables["params"]
    assert set(params) == {"kernel", "weight_step", "act_step"}
    kernel = np.asarray(params["kernel"])
    assert kernel.shape == (3, 3, 3, 4)
    w_step, a_step = np.asarray(params["weight_step"]), np.asarray(params["act_step"])
    assert w_step.shape == (3,) and a_step.shape == (3,)
    # s0 = 2 mean|v| / sqrt(Qp): signed grid for weights, unsigned for (post-ReLU) activations.
    for p, b in enumerate(BITS):
        assert_allclose(w_step[p], 2 * np.mean(np.abs(kernel)) / np.sqrt(SIGNED_QP[b]), rtol=1e-5)
        assert_allclose(a_step[p], 2 * np.mean(np.abs(x)) / np.sqrt(UNSIGNED_QP[b]), rtol=1e-5)
    # Output at each precision index equals quantize-then-conv by hand.
    apply = jax.jit(model.apply)
    for p, b in enumerate(BITS):
        xq = np_quant(x, a_step[p], 0, UNSIGNED_QP[b])
        kq = np_quant(kernel, w_step[p], SIGNED_QN[b], SIGNED_QP[b])
        expected = conv_nhwc(xq, kq)
        for precision in (p, jnp.asarray(p, jnp.int32)):
            out = apply(variables, jnp.asarray(x), precision)
            assert out.shape == (2, 5, 5, 4)
            assert_allclose(np.asarray(out), np.asarray(expected), rtol=1e-5, atol=1e-6)
    # Different precisions give different outputs (the index is really used).
    outs = [np.asarray(apply(variables, jnp.asarray(x), p)) for p in range(3)]
    assert not np.allclose(outs[0], outs[2])


def test_quant_conv_strides_padding_and_bias():
    x = _images(1, (1, 6, 6, 2))
    model = QuantConv(
        features=3,
        kernel_size=(3, 3),
        strides=(2, 2),
        padding="VALID",
        use_bias=True,
        bits=BITS,
        spec=LSQ,
    )
    variables = model.init(jax.random.PRNGKey(1), jnp.asarray(x), 0)
    params = dict(variables["params"])
    params["bias"] = jnp.asarray([0.5, -1.0, 2.0])
    variables = {"params": params}
    kernel = np.asarray(params["kernel"])
    for p, b in enumerate(BITS):
        xq = np_quant(x, params["act_step"][p], 0, UNSIGNED_QP[b])
        kq = np_quant(kernel, params["weight_step"][p], SIGNED_QN[b], SIGNED_QP[b])
        expected = np.asarray(conv_nhwc(xq, kq, (2, 2), "VALID")) + f32([0.5, -1.0, 2.0])
        out = model.apply(variables, jnp.asarray(x), p)
        assert out.shape == (1, 2, 2, 3)
        assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-6)


def test_quant_dense_lsq_steps_and_outputs():
    x = f32(np.random.default_rng(2).normal(size=(4, 6)))
    model = QuantDense(features=5, bits=BITS, spec=LSQ)
    variables = model.init(jax.random.PRNGKey(2), jnp.asarray(x), 0)
    params = dict(variables["params"])
    assert set(params) == {"kernel", "bias", "weight_step", "act_step"}
    kernel = np.asarray(params["kernel"])
    w_step, a_step = np.asarray(params["weight_step"]), np.asarray(params["act_step"])
    assert w_step.shape == (3,) and a_step.shape == (3,)
    for p, b in enumerate(BITS):
        assert_allclose(w_step[p], 2 * np.mean(np.abs(kernel)) / np.sqrt(SIGNED_QP[b]), rtol=1e-5)
        assert_allclose(a_step[p], 2 * np.mean(np.abs(x)) / np.sqrt(UNSIGNED_QP[b]), rtol=1e-5)
    bias = f32([0.1, 0.2, -0.3, 0.0, 1.0])
    params["bias"] = jnp.asarray(bias)
    for p, b in enumerate(BITS):
        xq = np_quant(x, a_step[p], 0, UNSIGNED_QP[b])
        kq = np_quant(kernel, w_step[p], SIGNED_QN[b], SIGNED_QP[b])
        out = model.apply({"params": params}, jnp.asarray(x), p)
        assert_allclose(np.asarray(out), xq @ kq + bias, rtol=1e-5, atol=1e-5)


def test_quant_dense_step_gradients_use_lsq_scale_and_only_their_row():
    """d loss / d act_step[p] = sum(dL/dx_hat * elem) / sqrt(N * Qp) with N = features of one
    example; weight step with N = kernel size; other rows of the steps get exactly 0."""
    rng = np.random.default_rng(3)
    x = f32(np.abs(rng.normal(size=(4, 6))))
    model = QuantDense(features=5, use_bias=False, bits=BITS, spec=LSQ)
    params = model.init(jax.random.PRNGKey(3), jnp.asarray(x), 0)["params"]
    kernel = np.asarray(params["kernel"], np.float64)
    c = f32(rng.normal(size=(4, 5)))
    for p, b in enumerate(BITS):
        grads = jax.grad(lambda prm: jnp.sum(model.apply({"params": prm}, jnp.asarray(x), p) * c))(
            params
        )
        sa, sw = float(params["act_step"][p]), float(params["weight_step"][p])
        xq = np_quant(x, sa, 0, UNSIGNED_QP[b]).astype(np.float64)
        kq = np_quant(kernel, sw, SIGNED_QN[b], SIGNED_QP[b]).astype(np.float64)
        # activation step
        g_x = c @ kq.T
        u = x / np.float32(sa)
        elem = np.where(u <= 0, 0.0, np.where(u >= UNSIGNED_QP[b], UNSIGNED_QP[b], np.round(u) - u))
        expected_a = np.sum(g_x * elem) / np.sqrt(6 * UNSIGNED_QP[b])
        # weight step
        g_k = xq.T @ c
        u = np.asarray(params["kernel"]) / np.float32(sw)
        qn, qp = SIGNED_QN[b], SIGNED_QP[b]
        elem = np.where(u <= -qn, -qn, np.where(u >= qp, qp, np.round(u) - u))
        expected_w = np.sum(g_k * elem) / np.sqrt(kernel.size * qp)
        ga, gw = np.asarray(grads["act_step"]), np.asarray(grads["weight_step"])
        assert_allclose(ga[p], expected_a, rtol=1e-4, atol=1e-6)
        assert_allclose(gw[p], expected_w, rtol=1e-4, atol=1e-6)
        others = [i for i in range(3) if i != p]
        assert_array_equal(ga[others], 0.0)
        assert_array_equal(gw[others], 0.0)


def test_per_channel_weight_step():
    x = _images(4, (1, 4, 4, 2))
    features = 5
    model = QuantConv(
        features=features,
        kernel_size=(3, 3),
        bits=BITS,
        spec=QuantSpec("lsq", "lsq", per_channel=True),
    )
    variables = model.init(jax.random.PRNGKey(4), jnp.asarray(x), 0)
    params = variables["params"]
    kernel = np.asarray(params["kernel"])
    w_step = np.asarray(params["weight_step"])
    assert w_step.shape[0] == 3 and w_step.shape[-1] == features and w_step.size == 3 * features
    # One step per output channel: s0[p, o] = 2 mean_{h,w,i} |k[..., o]| / sqrt(Qp).
    per_channel = w_step.reshape(3, features)
    mean_abs = np.mean(np.abs(kernel), axis=(0, 1, 2))
    for p, b in enumerate(BITS):
        assert_allclose(per_channel[p], 2 * mean_abs / np.sqrt(SIGNED_QP[b]), rtol=1e-5)
        xq = np_quant(x, params["act_step"][p], 0, UNSIGNED_QP[b])
        kq = np_quant(kernel, per_channel[p].reshape(1, 1, 1, features), SIGNED_QN[b], SIGNED_QP[b])
        out = model.apply(variables, jnp.asarray(x), p)
        assert_allclose(np.asarray(out), np.asarray(conv_nhwc(xq, kq)), rtol=1e-5, atol=1e-6)
    # Dense: one step per output feature as well.
    dense = QuantDense(features=features, bits=BITS, spec=QuantSpec("lsq", "lsq", per_channel=True))
    dparams = dense.init(jax.random.PRNGKey(5), jnp.ones((2, 3)), 0)["params"]
    assert dparams["weight_step"].shape == (3, features)


def test_per_channel_weight_step_shape_is_precisions_by_features():
    """Per-channel steps laid out as (P, features)."""
    x = jnp.ones((1, 4, 4, 2))
    model = QuantConv(features=5, bits=BITS, spec=QuantSpec("lsq", "lsq", per_channel=True))
    params = model.init(jax.random.PRNGKey(4), x, 0)["params"]
    assert params["weight_step"].shape == (3, 5)


def test_quant_conv_vmap_over_precision_matches_loop():
    x = jnp.asarray(_images(6, (2, 5, 5, 3)))
    for batching in ("unroll", "native"):
        with lowering(batching=batching):
            model = QuantConv(features=4, bits=BITS, spec=LSQ)
            params = model.init(jax.random.PRNGKey(6), x, 0)["params"]

            def loss(prm, p):
                return jnp.sum(model.apply({"params": prm}, x, p) ** 2)

            outs = jax.vmap(lambda p: model.apply({"params": params}, x, p))(jnp.arange(3))
            loop = jnp.stack([model.apply({"params": params}, x, p) for p in range(3)])
            assert_allclose(np.asarray(outs), np.asarray(loop), rtol=1e-5, atol=1e-5)
            vgrad = jax.grad(lambda prm: jnp.sum(jax.vmap(lambda p: loss(prm, p))(jnp.arange(3))))(
                params
            )
            lgrad = jax.grad(lambda prm: sum(loss(prm, p) for p in range(3)))(params)
            for name in ("kernel", "weight_step", "act_step"):
                assert_allclose(
                    np.asarray(vgrad[name]), np.asarray(lgrad[name]), rtol=1e-4, atol=1e-5
                )


def test_dorefa_and_full_precision_layers():
    x = f32(np.random.default_rng(7).normal(size=(3, 4)))
    # DoReFa: no quantizer params; kernel through dorefa_weight, input through clip/round.
    model = QuantDense(features=2, use_bias=False, bits=(2, 32), spec=QuantSpec("dorefa", "dorefa"))
    params = model.init(jax.random.PRNGKey(7), jnp.asarray(x), 0)["params"]
    assert set(params) == {"kernel"}
    k = np.asarray(params["kernel"], np.float64)
    t = np.tanh(k)
    m, e = np.max(np.abs(t)), np.mean(np.abs(k))
    kq = (2 * np.round((t / (2 * m) + 0.5) * 3) / 3 - 1) * e
    xq = np.round(np.clip(x, 0, 1) * 3) / 3
    assert_allclose(
        np.asarray(model.apply({"params": params}, jnp.asarray(x), 0)),
        xq @ kq,
        rtol=1e-5,
        atol=1e-6,
    )
    # 32 bits: relu input, FP DoReFa form for the kernel
    expected = np.maximum(x, 0) @ (t / m * e)
    assert_allclose(
        np.asarray(model.apply({"params": params}, jnp.asarray(x), 1)),
        expected,
        rtol=1e-5,
        atol=1e-6,
    )
    # Full precision spec: a plain dense layer.
    fp = QuantDense(features=2, use_bias=False, spec=FULL_PRECISION)
    fparams = fp.init(jax.random.PRNGKey(8), jnp.asarray(x), 0)["params"]
    assert set(fparams) == {"kernel"}
    assert_allclose(
        np.asarray(fp.apply({"params": fparams}, jnp.asarray(x), 0)),
        x @ np.asarray(fparams["kernel"]),
        rtol=1e-5,
        atol=1e-6,
    )


# ----------------------------------------------------------------------------------------------
# PrecisionBatchNorm.


def _bn_variables(rng, shape=(3, 4)):
    return {
        "params": {
            "scale": jnp.asarray(f32(rng.uniform(0.5, 2.0, size=shape))),
            "bias": jnp.asarray(f32(rng.normal(size=shape))),
        },
        "batch_stats": {
            "mean": jnp.asarray(f32(rng.normal(size=shape))),
            "var": jnp.asarray(f32(rng.uniform(0.5, 2.0, size=shape))),
        },
    }


def test_precision_batchnorm_init_shapes():
    bn = PrecisionBatchNorm(num_precisions=3)
    variables = bn.init(jax.random.PRNGKey(0), jnp.ones((2, 3, 3, 4)), 0, True)
    assert variables["params"]["scale"].shape == (3, 4)
    assert variables["params"]["bias"].shape == (3, 4)
    assert_array_equal(np.asarray(variables["batch_stats"]["mean"]), np.zeros((3, 4)))
    assert_array_equal(np.asarray(variables["batch_stats"]["var"]), np.ones((3, 4)))


def test_precision_batchnorm_train_updates_only_its_row():
    rng = np.random.default_rng(0)
    bn = PrecisionBatchNorm(num_precisions=3)
    variables = _bn_variables(rng)
    x = f32(rng.normal(size=(2, 3, 3, 4)) * 2 + 1)
    old_mean = np.asarray(variables["batch_stats"]["mean"])
    old_var = np.asarray(variables["batch_stats"]["var"])
    for precision in (1, jnp.asarray(1, jnp.int32)):
        y, updates = bn.apply(variables, jnp.asarray(x), precision, True, mutable=["batch_stats"])
        new_mean = np.asarray(updates["batch_stats"]["mean"])
        new_var = np.asarray(updates["batch_stats"]["var"])
        # Rows 0 and 2 bitwise unchanged.
        assert_array_equal(new_mean[[0, 2]], old_mean[[0, 2]])
        assert_array_equal(new_var[[0, 2]], old_var[[0, 2]])
        # Row 1: ra = 0.9 ra + 0.1 batch (biased variance).
        xd = x.astype(np.float64)
        bmean = xd.mean(axis=(0, 1, 2))
        bvar = ((xd - bmean) ** 2).mean(axis=(0, 1, 2))
        assert_allclose(new_mean[1], 0.9 * old_mean[1] + 0.1 * bmean, rtol=1e-5, atol=1e-6)
        assert_allclose(new_var[1], 0.9 * old_var[1] + 0.1 * bvar, rtol=1e-5, atol=1e-6)
        # Output normalised with the batch statistics and affine row 1.
        scale = np.asarray(variables["params"]["scale"])[1]
        bias = np.asarray(variables["params"]["bias"])[1]
        expected = (xd - bmean) / np.sqrt(bvar + 1e-5) * scale + bias
        assert_allclose(np.asarray(y), expected, rtol=1e-4, atol=1e-5)


def test_precision_batchnorm_train_under_jit_and_custom_momentum():
    rng = np.random.default_rng(1)
    bn = PrecisionBatchNorm(num_precisions=3, momentum=0.5)
    variables = _bn_variables(rng)
    x = f32(rng.normal(size=(8, 4)))
    fn = jax.jit(lambda v, x, p: bn.apply(v, x, p, True, mutable=["batch_stats"]))
    _, updates = fn(variables, jnp.asarray(x), jnp.asarray(2))
    old = np.asarray(variables["batch_stats"]["mean"])
    new = np.asarray(updates["batch_stats"]["mean"])
    assert_array_equal(new[:2], old[:2])
    assert_allclose(new[2], 0.5 * old[2] + 0.5 * x.astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)


def _np_batch_norm_loss(x, scale, bias, c, c_mean, c_var, eps=1e-5):
    """float64 NumPy: sum(c y) + sum(c_mean mean) + sum(c_var var) of training BatchNorm."""
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes)
    var = ((x - mean) ** 2).mean(axis=axes)
    y = (x - mean) / np.sqrt(var + eps) * scale + bias
    return (c * y).sum() + (c_mean * mean).sum() + (c_var * var).sum()


def _central_difference(fn, value, h=1e-6):
    grad = np.zeros_like(value)
    for index in np.ndindex(value.shape):
        up, down = value.copy(), value.copy()
        up[index] += h
        down[index] -= h
        grad[index] = (fn(up) - fn(down)) / (2 * h)
    return grad


def test_batch_norm_train_values_and_written_out_gradients_match_finite_differences():
    """`batch_norm_train`'s hand-written backward against float64 central differences of the
    NumPy formula, with cotangents on all three outputs (y, mean, var)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 3, 4)) * 2 + 1
    scale, bias = rng.uniform(0.5, 2.0, size=4), rng.normal(size=4)
    c, c_mean, c_var = rng.normal(size=x.shape), rng.normal(size=4), rng.normal(size=4)

    def loss(x, scale, bias):
        y, mean, var = batch_norm_train(x, scale, bias, jnp.float32(1e-5))
        return jnp.sum(y * f32(c)) + jnp.sum(mean * f32(c_mean)) + jnp.sum(var * f32(c_var))

    y, mean, var = batch_norm_train(
        jnp.asarray(f32(x)), jnp.asarray(f32(scale)), jnp.asarray(f32(bias)), jnp.float32(1e-5)
    )
    expected_mean, expected_var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    assert_allclose(np.asarray(mean), expected_mean, rtol=1e-5, atol=1e-6)
    assert_allclose(np.asarray(var), expected_var, rtol=1e-5, atol=1e-6)
    assert_allclose(
        np.asarray(y),
        (x - expected_mean) / np.sqrt(expected_var + 1e-5) * scale + bias,
        rtol=1e-4,
        atol=1e-5,
    )
    dx, dscale, dbias = jax.grad(loss, (0, 1, 2))(
        jnp.asarray(f32(x)), jnp.asarray(f32(scale)), jnp.asarray(f32(bias))
    )
    np_loss = functools.partial(_np_batch_norm_loss, c=c, c_mean=c_mean, c_var=c_var)
    assert_allclose(
        np.asarray(dx),
        _central_difference(lambda v: np_loss(v, scale, bias), x),
        rtol=1e-3,
        atol=1e-4,
    )
    assert_allclose(
        np.asarray(dscale),
        _central_difference(lambda v: np_loss(x, v, bias), scale),
        rtol=1e-3,
        atol=1e-4,
    )
    assert_allclose(
        np.asarray(dbias),
        _central_difference(lambda v: np_loss(x, scale, v), bias),
        rtol=1e-3,
        atol=1e-4,
    )


def test_precision_batchnorm_axis_name_equals_the_whole_batch():
    """With ``axis_name``, statistics are those of every device's rows together (here two
    vmapped "devices"): output and running averages equal one BatchNorm over the whole batch."""
    rng = np.random.default_rng(4)
    variables = _bn_variables(rng)
    x = jnp.asarray(f32(rng.normal(size=(2, 3, 5, 4)) * 3 + 1))  # (devices, rows, ..., C)
    synced = jax.vmap(
        lambda part: PrecisionBatchNorm(num_precisions=3, axis_name="devices").apply(
            variables, part, 1, True, mutable=["batch_stats"]
        ),
        axis_name="devices",
    )
    y, updates = synced(x)
    whole, whole_updates = PrecisionBatchNorm(num_precisions=3).apply(
        variables, x.reshape(6, 5, 4), 1, True, mutable=["batch_stats"]
    )
    assert_allclose(np.asarray(y).reshape(6, 5, 4), np.asarray(whole), rtol=1e-5, atol=1e-5)
    for name in ("mean", "var"):
        assert_allclose(
            np.asarray(updates["batch_stats"][name][0]),
            np.asarray(whole_updates["batch_stats"][name]),
            rtol=1e-5,
            atol=1e-6,
        )


def test_precision_batchnorm_eval_uses_row_p():
    rng = np.random.default_rng(2)
    bn = PrecisionBatchNorm(num_precisions=3)
    variables = _bn_variables(rng)
    x = f32(rng.normal(size=(2, 3, 3, 4)))
    stats = {k: np.asarray(v, np.float64) for k, v in variables["batch_stats"].items()}
    prm = {k: np.asarray(v, np.float64) for k, v in variables["params"].items()}
    for p in range(3):
        y = bn.apply(variables, jnp.asarray(x), p, False)
        expected = (x - stats["mean"][p]) / np.sqrt(stats["var"][p] + 1e-5) * prm["scale"][p] + prm[
            "bias"
        ][p]
        assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)
    # Eval does not touch the statistics.
    _, updates = bn.apply(variables, jnp.asarray(x), 1, False, mutable=["batch_stats"])
    assert_array_equal(
        np.asarray(updates["batch_stats"]["mean"]), np.asarray(variables["batch_stats"]["mean"])
    )
    assert_array_equal(
        np.asarray(updates["batch_stats"]["var"]), np.asarray(variables["batch_stats"]["var"])
    )


# ----------------------------------------------------------------------------------------------
# precision_conv.

P = 3


def _conv_data(seed=0, c_in=3, c_out=4):
    rng = np.random.default_rng(seed)
    xs = jnp.asarray(f32(rng.normal(size=(P, 2, 6, 6, c_in))))
    ks = jnp.asarray(f32(rng.normal(size=(P, 3, 3, c_in, c_out)) * 0.3))
    return xs, ks


@pytest.mark.parametrize("batching", ["unroll", "native"])
@pytest.mark.parametrize(
    "strides,padding", [((1, 1), "SAME"), ((2, 2), "VALID"), ((1, 1), [[1, 0], [0, 2]])]
)
def test_precision_conv_vmap_matches_loop(batching, strides, padding):
    xs, ks = _conv_data()
    pad = padding if isinstance(padding, str) else [tuple(p) for p in padding]

    def conv(x, k):
        return precision_conv(x, k, strides, padding, batching=batching)

    out = jax.vmap(conv)(xs, ks)
    loop = jnp.stack([conv_nhwc(xs[i], ks[i], strides, pad) for i in range(P)])
    assert out.shape == loop.shape
    assert_allclose(np.asarray(out), np.asarray(loop), rtol=1e-5, atol=1e-5)

    def vloss(xs, ks):
        return jnp.sum(jax.vmap(conv)(xs, ks) ** 2)

    def lloss(xs, ks):
        return sum(jnp.sum(conv_nhwc(xs[i], ks[i], strides, pad) ** 2) for i in range(P))

    vg = jax.grad(vloss, (0, 1))(xs, ks)
    lg = jax.grad(lloss, (0, 1))(xs, ks)
    for a, b in zip(vg, lg):
        assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    # Also under jit.
    vg_jit = jax.jit(jax.grad(vloss, (0, 1)))(xs, ks)
    for a, b in zip(vg_jit, lg):
        assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_precision_conv_unroll_and_native_agree():
    xs, ks = _conv_data(1)
    outs, grads = {}, {}
    for batching in ("unroll", "native"):
        conv = lambda x, k, b=batching: precision_conv(x, k, batching=b)  # noqa: E731
        outs[batching] = jax.vmap(conv)(xs, ks)
        grads[batching] = jax.grad(lambda xs, ks: jnp.sum(jax.vmap(conv)(xs, ks) ** 2), (0, 1))(
            xs, ks
        )
    assert_allclose(np.asarray(outs["unroll"]), np.asarray(outs["native"]), rtol=1e-5, atol=1e-5)
    for a, b in zip(grads["unroll"], grads["native"]):
        assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_precision_conv_unbatched_operands():
    xs, ks = _conv_data(2)
    x0, k0 = xs[0], ks[0]
    # No vmap at all: a plain conv, and its gradient.
    assert_allclose(
        np.asarray(precision_conv(x0, k0)), np.asarray(conv_nhwc(x0, k0)), rtol=1e-5, atol=1e-5
    )
    g = jax.grad(lambda k: jnp.sum(precision_conv(x0, k) ** 2))(k0)
    ge = jax.grad(lambda k: jnp.sum(conv_nhwc(x0, k) ** 2))(k0)
    assert_allclose(np.asarray(g), np.asarray(ge), rtol=1e-5, atol=1e-5)
    for batching in ("unroll", "native"):
        conv = lambda x, k, b=batching: precision_conv(x, k, batching=b)  # noqa: E731
        # Unbatched kernel, batched input.
        out = jax.vmap(conv, in_axes=(0, None))(xs, k0)
        loop = jnp.stack([conv_nhwc(xs[i], k0) for i in range(P)])
        assert_allclose(np.asarray(out), np.asarray(loop), rtol=1e-5, atol=1e-5)
        gx, gk = jax.grad(
            lambda xs, k: jnp.sum(jax.vmap(conv, in_axes=(0, None))(xs, k) ** 2), (0, 1)
        )(xs, k0)
        ex, ek = jax.grad(
            lambda xs, k: sum(jnp.sum(conv_nhwc(xs[i], k) ** 2) for i in range(P)), (0, 1)
        )(xs, k0)
        assert gk.shape == k0.shape
        assert_allclose(np.asarray(gx), np.asarray(ex), rtol=1e-5, atol=1e-5)
        assert_allclose(np.asarray(gk), np.asarray(ek), rtol=1e-5, atol=1e-4)
        # Batched kernel, unbatched input.
        out = jax.vmap(conv, in_axes=(None, 0))(x0, ks)
        loop = jnp.stack([conv_nhwc(x0, ks[i]) for i in range(P)])
        assert_allclose(np.asarray(out), np.asarray(loop), rtol=1e-5, atol=1e-5)
        gx, gk = jax.grad(
            lambda x, ks: jnp.sum(jax.vmap(conv, in_axes=(None, 0))(x, ks) ** 2), (0, 1)
        )(x0, ks)
        ex, ek = jax.grad(
            lambda x, ks: sum(jnp.sum(conv_nhwc(x, ks[i]) ** 2) for i in range(P)), (0, 1)
        )(x0, ks)
        assert gx.shape == x0.shape
        assert_allclose(np.asarray(gx), np.asarray(ex), rtol=1e-5, atol=1e-4)
        assert_allclose(np.asarray(gk), np.asarray(ek), rtol=1e-5, atol=1e-5)
    # A vmap over something the conv does not depend on.
    scales = jnp.arange(1.0, 4.0)
    out = jax.vmap(lambda a: precision_conv(x0, k0) * a)(scales)
    assert_allclose(
        np.asarray(out),
        np.asarray(conv_nhwc(x0, k0))[None] * np.arange(1.0, 4.0)[:, None, None, None, None],
        rtol=1e-5,
        atol=1e-5,
    )


def _conv_group_counts(closed_jaxpr):
    """(feature_group_count, batch_group_count) of every conv in a jaxpr, nested ones included."""
    text = str(closed_jaxpr)
    feature = [int(m) for m in re.findall(r"feature_group_count=(\d+)", text)]
    batch = [int(m) for m in re.findall(r"batch_group_count=(\d+)", text)]
    assert len(feature) == len(batch) == text.count("conv_general_dilated[")
    return list(zip(feature, batch))


def test_unroll_batching_emits_no_grouped_convs():
    xs, ks = _conv_data(3)

    def loss(xs, ks, batching):
        return jnp.sum(jax.vmap(lambda x, k: precision_conv(x, k, batching=batching))(xs, ks) ** 2)

    unroll = _conv_group_counts(
        jax.make_jaxpr(jax.grad(loss, (0, 1)), static_argnums=2)(xs, ks, "unroll")
    )
    assert unroll and all(c == (1, 1) for c in unroll)
    assert len(unroll) >= 3 * P  # forward + two backward convs per precision
    native = _conv_group_counts(
        jax.make_jaxpr(jax.grad(loss, (0, 1)), static_argnums=2)(xs, ks, "native")
    )
    assert any(c != (1, 1) for c in native)


def test_native_batching_is_one_grouped_conv_over_all_precisions():
    """XLA's batching of a conv whose input and kernel both carry the precision axis: ONE
    convolution with ``feature_group_count = P`` (forward), in the jaxpr and in the HLO."""
    xs, ks = _conv_data(2)
    for dtype in (jnp.float32, jnp.bfloat16):
        conv = jax.vmap(lambda x, k: precision_conv(x, k, batching="native"))
        forward = _conv_group_counts(jax.make_jaxpr(conv)(xs.astype(dtype), ks.astype(dtype)))
        assert forward == [(P, 1)], dtype
        hlo = jax.jit(conv).lower(xs.astype(dtype), ks.astype(dtype)).as_text()
        assert (
            len(re.findall(r"feature_group_count = 3\b", hlo)) == 1
            and hlo.count("convolution") >= 1
        )
        unroll = jax.vmap(lambda x, k: precision_conv(x, k, batching="unroll"))
        assert (
            _conv_group_counts(jax.make_jaxpr(unroll)(xs.astype(dtype), ks.astype(dtype)))
            == [(1, 1)] * P
        )


def test_auto_batching_and_weight_gradient_resolve_per_backend():
    from jaxquant.layers import (
        CONV_BATCHINGS,
        MultiBranchConv,
        resolve_conv_batching,
        resolve_weight_gradient,
    )
    from jaxquant.models import CifarResNet, MobileNetV2, MultiBranchCNN, ResNet, SmallCNN

    assert jax.default_backend() == "cpu"  # the suite runs on CPU
    assert resolve_conv_batching("auto") == resolve_conv_batching() == "unroll"
    assert resolve_weight_gradient("auto") == "im2col"
    for backend in ("gpu", "tpu", "cuda", "rocm"):
        assert resolve_conv_batching("auto", backend) == "native"
        assert resolve_weight_gradient("auto", backend) == "xla"
    for choice in ("unroll", "native"):
        assert (
            resolve_conv_batching(choice, "gpu") == resolve_conv_batching(choice, "cpu") == choice
        )
    for choice in ("im2col", "xla"):
        assert (
            resolve_weight_gradient(choice, "tpu")
            == resolve_weight_gradient(choice, "cpu")
            == choice
        )
    with pytest.raises(ConfigError, match="choose one of .*auto.*unroll.*native"):
        resolve_conv_batching("grouped")
    with pytest.raises(ConfigError, match="choose one of .*auto.*xla.*im2col"):
        resolve_weight_gradient("fft")
    assert CONV_BATCHINGS == ("auto", "unroll", "native")
    for model in (
        QuantConv,
        MultiBranchConv,
        SmallCNN,
        CifarResNet,
        ResNet,
        MobileNetV2,
        MultiBranchCNN,
    ):
        fields = {
            f.name for f in dataclasses.fields(model)
        }  # one setting, not a field of every model
        assert not fields & {"conv_batching", "weight_gradient"}, model.__name__
    assert current_lowering() == Lowering("auto", "auto")
    with lowering(batching="native") as setting:
        assert current_lowering() == setting == Lowering("native", "auto")
        with lowering(Lowering("unroll", "xla")):
            assert current_lowering() == Lowering("unroll", "xla")
        assert current_lowering() == setting
    assert current_lowering() == Lowering()
    # auto on CPU runs the unrolled rule: no grouped convs, forward or backward.
    xs, ks = _conv_data(3)
    loss = lambda xs, ks: jnp.sum(jax.vmap(lambda x, k: precision_conv(x, k))(xs, ks) ** 2)  # noqa: E731
    assert all(
        c == (1, 1) for c in _conv_group_counts(jax.make_jaxpr(jax.grad(loss, (0, 1)))(xs, ks))
    )


def test_precision_conv_invalid_batching():
    xs, ks = _conv_data()
    for bad in ("grouped", "", "UNROLL"):
        with pytest.raises(ConfigError):
            precision_conv(xs[0], ks[0], batching=bad)
    for bad in (dict(batching="loop"), dict(weight_gradient="fft")):
        with pytest.raises(ConfigError):
            Lowering(**bad)


# ----------------------------------------------------------------------------------------------
# QuantSpec.


def test_quant_spec_rejects_unknown_quantizers():
    for kwargs in (
        {"weight": "pact"},
        {"activation": "vertical"},
        {"weight": "LSQ"},
        {"activation": "pact"},
        {"weight": ""},
        {"weight": 3},
        {"activation": 1.5},
    ):
        with pytest.raises(ConfigError):
            QuantSpec(**kwargs)
    assert issubclass(ConfigError, JaxquantError) and issubclass(ConfigError, ValueError)
    for w in ("lsq", "dorefa", "none"):
        for a in ("lsq", "dorefa", "none"):
            QuantSpec(w, a)


def test_quant_spec_validate():
    assert LSQ.validate((2, 4, 8, 32)) == (2, 4, 8, 32)
    assert QuantSpec("dorefa", "dorefa").validate((1, 2, 32)) == (1, 2, 32)
    assert FULL_PRECISION.validate((4, 32)) == (4, 32)
    for bits in ((1,), (33,), (2, 2), ()):
        with pytest.raises(BitWidthError):
            LSQ.validate(bits)
    with pytest.raises(BitWidthError):  # the LSQ weight quantizer cannot do 1 bit
        QuantSpec("lsq", "dorefa").validate((1, 2))


@pytest.mark.parametrize(
    "n, size, cin, cout, k, stride, padding",
    [
        (5, 9, 3, 4, 3, 1, "SAME"),
        (6, 8, 4, 5, 1, 2, "SAME"),
        (7, 9, 2, 3, 3, 2, "SAME"),
        (4, 10, 3, 2, 3, 1, "VALID"),
        (3, 7, 2, 2, 7, 2, "SAME"),
        (4, 8, 2, 3, 3, 1, ((2, 0), (1, 1))),
    ],
)
def test_conv_weight_gradient_equals_xla_for_every_stride_padding_and_chunking(
    n, size, cin, cout, k, stride, padding
):
    from jaxquant.layers import conv_weight_gradient

    rng = np.random.default_rng(n * 100 + k)
    x = jnp.asarray(rng.normal(size=(n, size, size, cin)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(k, k, cin, cout)), jnp.float32)
    y, vjp = jax.vjp(
        lambda w: jax.lax.conv_general_dilated(
            x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        ),
        kernel,
    )
    g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    expected = vjp(g)[0]
    for cache_bytes in (1, 600, 2**21):  # one image per chunk, a ragged last chunk, one chunk
        got = conv_weight_gradient(
            x, g, kernel.shape, (stride, stride), padding, cache_bytes=cache_bytes
        )
        assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=5e-5)


def test_precision_conv_weight_gradient_modes_agree():
    x = jnp.asarray(_images(7, (4, 6, 6, 3)))
    kernel = jnp.asarray(_images(8, (3, 3, 3, 5)))
    grads = {
        mode: jax.grad(
            lambda x, w: jnp.sum(jnp.sin(precision_conv(x, w, (2, 2), "SAME", "unroll", mode))),
            argnums=(0, 1),
        )(x, kernel)
        for mode in ("xla", "im2col", "auto")
    }
    for mode in ("im2col", "auto"):
        for a, b in zip(grads[mode], grads["xla"]):
            assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError):
        precision_conv(x, kernel, weight_gradient="fft")

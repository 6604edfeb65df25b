"""Vertical Layering: the cascaded weight quantizer (`quantizers.vertical_weight`, `vertical_codes`,
`midrise_dequantize`) and the method (`jaxquant.methods.vertical`).

Expected values are written out by hand or computed in NumPy from the formulas (never by calling
the function under test). The floor cascade, source bits B, step s, ``x = w/s``:

    u_B = clip(floor(x + 2^(B-1)), 0, 2^B-1),  u_k = u_B >> (B-k),
    w_k = (u_k - (2^k-1)/2) * 2^(B-k) * s
    dw_k/dw = 1 for -2^(B-1) <= x < 2^(B-1), else 0
    dw_k/ds = g_k * 2^(B-k) * (level_k - x/2^(B-k)) inside, the end level +-(2^k-1)/2 outside,
    g_k = 1/sqrt(N Qp_k), Qp_k = (2^k-1)/2.

Round-clip (mid-tread): q_B = clip(round_half_even(x), -2^(B-1), 2^(B-1)-1), then
``q_{b-1} = clip(floor(q_b/2 + 1/2))`` step by step (or once, ``direct``), w_k = q_k 2^(B-k) s.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from jaxquant import quantizers as q
from jaxquant.errors import BitWidthError, ConfigError
from jaxquant.layers import QuantSpec
from jaxquant.methods import vertical

B = 8


def f32(x):
    return np.asarray(x, dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# NumPy references of the formulas.


def np_floor_codes(w, s, k, source=B):
    x = f32(w) / f32(s)
    u = np.clip(np.floor(x + np.float32(2 ** (source - 1))), 0, 2**source - 1).astype(np.int64)
    return u >> (source - k)


def np_floor_weight(w, s, k, source=B):
    level = np_floor_codes(w, s, k, source) - (2**k - 1) / 2
    return (level * 2 ** (source - k) * np.float64(f32(s))).astype(np.float32)


def np_round_clip_codes(w, s, k, direct=False, source=B):
    x = f32(w) / f32(s)
    code = np.clip(np.round(x), -(2 ** (source - 1)), 2 ** (source - 1) - 1).astype(np.int64)
    if direct:
        code = np.floor(code / 2 ** (source - k) + 0.5).astype(np.int64)
        return np.clip(code, -(2 ** (k - 1)), 2 ** (k - 1) - 1)
    for b in range(source, k, -1):  # the step b -> b-1
        code = np.clip(np.floor(code / 2 + 0.5).astype(np.int64), -(2 ** (b - 2)), 2 ** (b - 2) - 1)
    return code


# ----------------------------------------------------------------------------------------------
# Exact values on hand-made inputs.

# In units of the step; the step 0.5 is a power of two, so w / s reproduces them exactly.
X = [-300, -128, -127.5, -1, -0.5, -0.25, 0, 0.25, 0.5, 1, 5, 100.7, 127.5, 128, 300]
FLOOR_CODES = {  # u_B = clip(floor(x + 128), 0, 255) then >> (8-k), worked out by hand
    8: [0, 0, 0, 127, 127, 127, 128, 128, 128, 129, 133, 228, 255, 255, 255],
    4: [0, 0, 0, 7, 7, 7, 8, 8, 8, 8, 8, 14, 15, 15, 15],
    3: [0, 0, 0, 3, 3, 3, 4, 4, 4, 4, 4, 7, 7, 7, 7],
    2: [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3],
    1: [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1],
}
FLOOR_WEIGHTS = {  # (u_k - (2^k-1)/2) * 2^(8-k) * 0.5
    8: [
        -63.75,
        -63.75,
        -63.75,
        -0.25,
        -0.25,
        -0.25,
        0.25,
        0.25,
        0.25,
        0.75,
        2.75,
        50.25,
        63.75,
        63.75,
        63.75,
    ],
    4: [-60, -60, -60, -4, -4, -4, 4, 4, 4, 4, 4, 52, 60, 60, 60],
    3: [-56, -56, -56, -8, -8, -8, 8, 8, 8, 8, 8, 56, 56, 56, 56],
    2: [-48, -48, -48, -16, -16, -16, 16, 16, 16, 16, 16, 48, 48, 48, 48],
    1: [-32, -32, -32, -32, -32, -32, 32, 32, 32, 32, 32, 32, 32, 32, 32],
}


@pytest.mark.parametrize("k", [8, 4, 3, 2, 1])
def test_floor_cascade_values_by_hand(k):
    w = f32(X) * np.float32(0.5)
    assert_array_equal(q.vertical_codes(jnp.asarray(w), 0.5, k), FLOOR_CODES[k])
    assert_array_equal(q.vertical_weight(jnp.asarray(w), 0.5, k), f32(FLOOR_WEIGHTS[k]))
    # k bits are the top k bits of the 8-bit code.
    assert_array_equal(np.asarray(FLOOR_CODES[8]) >> (8 - k), FLOOR_CODES[k])


@pytest.mark.parametrize("source,k", [(8, k) for k in range(1, 9)] + [(6, k) for k in range(1, 7)])
def test_floor_cascade_matches_numpy_on_random_weights(source, k):
    rng = np.random.default_rng(k + 10 * source)
    s = np.float32(0.0371)
    w = f32(rng.normal(scale=2 ** (source - 1) * 0.6 * s, size=(5, 3, 2, 7)))
    got = np.asarray(q.vertical_weight(jnp.asarray(w), s, k, source_bits=source))
    assert_array_equal(got, np_floor_weight(w, s, k, source))
    assert_array_equal(
        q.vertical_codes(jnp.asarray(w), s, k, source_bits=source), np_floor_codes(w, s, k, source)
    )
    # The level set: 2^k mid-rise levels of step 2^(B-k) s, symmetric, no zero level.
    levels = np.float64(got) / (np.float64(s) * 2 ** (source - k))
    assert_allclose(levels, np.round(levels - 0.5) + 0.5, rtol=1e-6)  # odd multiples of 1/2
    assert np.abs(levels).max() <= (2**k - 1) / 2 * (1 + 1e-6)
    assert np.abs(levels).min() >= 0.5 * (1 - 1e-6)


# Round-clip on integers (s = 1); round-half-even at the source, half-up in the cascade.
RC_X = [37, -37, 127, -128, 200, -200, 0.5, 1.5, 2.5, 3, -3]
RC_CODES = {  # worked out by hand (see the module docstring)
    ("round_clip", 8): [37, -37, 127, -128, 127, -128, 0, 2, 2, 3, -3],
    ("round_clip_direct", 8): [37, -37, 127, -128, 127, -128, 0, 2, 2, 3, -3],
    # 37 -> 18.5:19 -> 9.5:10 -> 5 -> 2.5:3;  2 -> 1 -> 0.5:1 -> 1 -> 1;  -3 -> -1.5:-1 -> -0.5:0
    ("round_clip", 4): [3, -2, 7, -8, 7, -8, 0, 1, 1, 1, 0],
    # 37/16 = 2.3125:2;  127/16 = 7.94:8 -> clip 7;  2/16, 3/16 -> 0
    ("round_clip_direct", 4): [2, -2, 7, -8, 7, -8, 0, 0, 0, 0, 0],
    ("round_clip", 2): [1, 0, 1, -2, 1, -2, 0, 1, 1, 1, 0],
    ("round_clip_direct", 2): [1, -1, 1, -2, 1, -2, 0, 0, 0, 0, 0],
}


@pytest.mark.parametrize("cascade,k", sorted(RC_CODES))
def test_round_clip_values_by_hand(cascade, k):
    w = jnp.asarray(f32(RC_X))
    codes = RC_CODES[(cascade, k)]
    assert_array_equal(q.vertical_codes(w, 1.0, k, cascade=cascade), codes)
    assert_array_equal(q.vertical_weight(w, 1.0, k, cascade=cascade), f32(codes) * 2 ** (8 - k))
    assert_array_equal(np_round_clip_codes(RC_X, 1.0, k, direct=cascade.endswith("direct")), codes)


def test_round_clip_half_even_rounding_in_the_cascade():
    # 37 -> 18.5:18 -> 9 -> 4.5:4 -> 2 with ties to even (half-up gives 3).
    w = jnp.asarray(f32([37.0]))
    assert int(q.vertical_codes(w, 1.0, 4, cascade="round_clip", rounding="half_even")[0]) == 2
    assert int(q.vertical_codes(w, 1.0, 4, cascade="round_clip")[0]) == 3


@pytest.mark.parametrize("cascade", ["round_clip", "round_clip_direct"])
@pytest.mark.parametrize("k", [2, 3, 5, 8])
def test_round_clip_matches_numpy_on_random_weights(cascade, k):
    rng = np.random.default_rng(k)
    s = np.float32(0.043)
    w = f32(rng.normal(scale=80 * s, size=(300,)))
    codes = np_round_clip_codes(w, s, k, direct=cascade.endswith("direct"))
    assert_array_equal(q.vertical_codes(jnp.asarray(w), s, k, cascade=cascade), codes)
    expected = (codes * 2.0 ** (8 - k) * np.float64(s)).astype(np.float32)
    assert_array_equal(q.vertical_weight(jnp.asarray(w), s, k, cascade=cascade), expected)


@pytest.mark.parametrize("cascade", q.VERTICAL_CASCADES)
def test_full_precision_passes_weights_through_with_unit_gradient(cascade):
    w = jnp.asarray(f32([-1e3, -0.3, 0.0, 0.123456, 7.7, 1e3]))
    assert_array_equal(q.vertical_weight(w, 0.01, 32, cascade=cascade), w)
    dw, ds = jax.grad(
        lambda w, s: jnp.sum(q.vertical_weight(w, s, 32, cascade=cascade) * jnp.arange(6.0)),
        argnums=(0, 1),
    )(w, jnp.float32(0.01))
    assert_array_equal(dw, np.arange(6.0))
    assert float(ds) == 0.0


def test_unknown_cascade_raises():
    with pytest.raises(ValueError, match="unknown cascade"):
        q.vertical_weight(jnp.zeros(3), 1.0, 4, cascade="ceil")


# ----------------------------------------------------------------------------------------------
# Gradients against the closed form.


def np_expected_gradients(w, s, g, k, cascade):
    """(dL/dw, dL/ds) for L = sum(g * w_k), from the docstring's formulas, in float64."""
    w, g = np.float64(f32(w)), np.float64(g)
    x = f32(w) / f32(s)  # the quantizer's x, float32 as it computes it
    x_k = np.float64(x) / 2 ** (B - k)
    half = 2 ** (k - 1)
    if cascade == "floor":
        level = np_floor_codes(w, f32(s), k) - (2**k - 1) / 2
        below, above = x_k < -half, x_k >= half
        lowest, highest = -(2**k - 1) / 2, (2**k - 1) / 2
        qp = (2**k - 1) / 2
    else:
        level = np_round_clip_codes(w, f32(s), k, direct=cascade.endswith("direct")).astype(
            np.float64
        )
        below, above = x_k <= -half, x_k >= half - 1
        lowest, highest = -half, half - 1
        qp = max(half - 1, 0.5)
    inside = ~(below | above)
    n = w.size // np.size(s)
    element = np.where(below, lowest, np.where(above, highest, level - x_k)) * 2 ** (B - k)
    gk = 1.0 / np.sqrt(n * qp)
    ds = g * element
    ds = ds.reshape(-1, np.size(s)).sum(0) if np.ndim(s) else ds.sum()
    return g * inside, gk * ds


@pytest.mark.parametrize("k", [1, 2, 3, 4, 8])
def test_floor_gradients_match_the_closed_form(k):
    rng = np.random.default_rng(100 + k)
    s = np.float32(0.0625)  # a power of two: the boundary values below divide exactly
    # ~10% of the weights outside [-128 s, 128 s), and the boundaries themselves.
    w = f32(
        np.concatenate(
            [rng.normal(scale=80 * s, size=200), f32([-128.0, -128.5, 127.99, 128.0]) * s]
        )
    )
    g = f32(rng.normal(size=w.shape))
    loss = lambda w, s: jnp.sum(jnp.asarray(g) * q.vertical_weight(w, s, k))  # noqa: E731
    dw, ds = jax.grad(loss, argnums=(0, 1))(jnp.asarray(w), jnp.float32(s))
    expected_dw, expected_ds = np_expected_gradients(w, s, g, k, "floor")
    assert_array_equal(np.asarray(dw) != 0, expected_dw != 0)
    assert_array_equal(np.asarray(dw)[-4:] != 0, [True, False, True, False])  # [-128, 128) inside
    assert_allclose(dw, expected_dw, rtol=0, atol=0)
    assert 0 < np.sum(expected_dw == 0) < len(w) // 4
    assert_allclose(ds, expected_ds, rtol=2e-5, atol=1e-6 * np.abs(expected_ds).max())


@pytest.mark.parametrize("cascade", ["floor", "round_clip", "round_clip_direct"])
@pytest.mark.parametrize("k", [2, 5])
def test_per_channel_gradients_match_the_closed_form(cascade, k):
    rng = np.random.default_rng(7 * k)
    s = f32([0.02, 0.05, 0.1, 0.3])
    w = f32(rng.normal(scale=60, size=(3, 3, 2, 4)) * s)
    g = f32(rng.normal(size=w.shape))
    loss = lambda w, s: jnp.sum(jnp.asarray(g) * q.vertical_weight(w, s, k, cascade=cascade))  # noqa: E731
    dw, ds = jax.grad(loss, argnums=(0, 1))(jnp.asarray(w), jnp.asarray(s))
    expected_dw, expected_ds = np_expected_gradients(w, s, g, k, cascade)
    assert ds.shape == (4,)
    assert_allclose(dw, expected_dw, rtol=0, atol=0)
    assert_allclose(ds, expected_ds, rtol=2e-5, atol=1e-6 * np.abs(expected_ds).max())


def test_grad_scale_values():
    # g_k = 1/sqrt(N Qp_k): Qp = (2^k-1)/2 mid-rise, 2^(k-1)-1 (at least 1/2) mid-tread.
    assert_allclose(q.vertical_grad_scale(100, 3, 8), 1 / np.sqrt(100 * 3.5), rtol=1e-6)
    assert_allclose(q.vertical_grad_scale(100, 1, 8), 1 / np.sqrt(100 * 0.5), rtol=1e-6)
    assert_allclose(q.vertical_grad_scale(100, 32, 8), 1 / np.sqrt(100 * 127.5), rtol=1e-6)
    assert_allclose(
        q.vertical_grad_scale(100, 3, 8, "round_clip"), 1 / np.sqrt(100 * 3.0), rtol=1e-6
    )
    assert_allclose(
        q.vertical_grad_scale(100, 1, 8, "round_clip"), 1 / np.sqrt(100 * 0.5), rtol=1e-6
    )


# ----------------------------------------------------------------------------------------------
# Codes, dequantization, one compiled function for every k.


@pytest.mark.parametrize("k", [1, 2, 3, 4, 6, 8])
def test_codes_and_midrise_dequantize_reproduce_the_weights_bit_for_bit(k):
    rng = np.random.default_rng(k)
    s = f32([0.013, 0.2, 0.07])  # per output channel
    w = jnp.asarray(f32(rng.normal(scale=50, size=(3, 3, 4, 3)) * s))
    codes = q.vertical_codes(w, s, k)
    assert codes.dtype == jnp.int32
    assert int(codes.min()) >= 0 and int(codes.max()) <= 2**k - 1
    assert_array_equal(codes, np.asarray(q.vertical_codes(w, s, 8)) >> (8 - k))
    step_k = jnp.asarray(s) * np.float32(2.0 ** (8 - k))
    assert_array_equal(q.midrise_dequantize(codes, step_k, k), q.vertical_weight(w, s, k))


@pytest.mark.parametrize("cascade", q.VERTICAL_CASCADES)
def test_one_compiled_function_serves_every_bit_width(cascade):
    rng = np.random.default_rng(3)
    w = jnp.asarray(f32(rng.normal(scale=3.0, size=(64,))))
    s = jnp.float32(0.04)
    traces = []

    @jax.jit
    def run(w, s, k):
        traces.append(k)
        return q.vertical_weight(w, s, k, cascade=cascade), q.vertical_codes(
            w, s, k, cascade=cascade
        )

    for k in (1, 2, 3, 4, 5, 6, 7, 8, 32):
        weights, codes = run(w, s, jnp.int32(k))
        assert_array_equal(weights, q.vertical_weight(w, s, k, cascade=cascade))
        assert_array_equal(codes, q.vertical_codes(w, s, k, cascade=cascade))
    assert len(traces) == 1


@pytest.mark.parametrize("cascade", ["floor", "round_clip"])
def test_vmap_over_bits_equals_the_loop(cascade):
    rng = np.random.default_rng(4)
    w = jnp.asarray(f32(rng.normal(scale=3.0, size=(3, 3, 2, 5))))
    s = jnp.float32(0.03)
    g = jnp.asarray(f32(rng.normal(size=w.shape)))
    ks = (2, 3, 4, 8, 32)

    def loss(w, s, k):
        return jnp.sum(g * q.vertical_weight(w, s, k, cascade=cascade))

    @jax.jit
    def one(w, s, k):
        return (q.vertical_weight(w, s, k, cascade=cascade),) + jax.grad(loss, argnums=(0, 1))(
            w, s, k
        )

    weights, dw, ds = jax.vmap(one, in_axes=(None, None, 0))(w, s, jnp.asarray(ks))
    for i, k in enumerate(ks):
        weights_k, dw_k, ds_k = one(w, s, k)
        assert_array_equal(weights[i], weights_k)
        assert_array_equal(
            weights[i], np_floor_weight(w, s, k) if cascade == "floor" and k < 32 else weights_k
        )
        assert_array_equal(dw[i], dw_k)
        assert_allclose(ds[i], ds_k, rtol=1e-6)
    assert float(ds[-1]) == 0.0  # FP: the step gets nothing, the weights all of g
    assert_array_equal(dw[-1], g)


# ----------------------------------------------------------------------------------------------
# The method: a vertical trainer on digits.

PER_PRECISION_KEYS = {
    f"['{c}']['{layer}']['{leaf}']"
    for c, leaves in (("params", ("scale", "bias")), ("batch_stats", ("mean", "var")))
    for layer in ("stem_bn", "bn0", "bn1")
    for leaf in leaves
} | {"['params']['conv0']['act_step']", "['params']['conv1']['act_step']"}


def vertical_config(bits):
    """A tiny vertical SmallCNN whose optimizer is plain SGD with learning rate 1 for both groups,
    so one step's update is exactly minus the gradient."""
    from jaxquant.config import load_config

    config = load_config(None)
    config.method, config.widths, config.bits, config.distillation = (
        "vertical",
        (8, 8, 8),
        tuple(bits),
        "none",
    )
    config.batch_size = 32
    config.conv_weight_gradient = "xla"  # compiles faster; the im2col path has its own tests
    o = config.optimizer
    o.optimizer, o.learning_rate, o.momentum, o.weight_decay, o.schedule = (
        "sgd",
        1.0,
        0.0,
        0.0,
        "constant",
    )
    o.quantizer_optimizer, o.quantizer_learning_rate, o.quantizer_schedule = "sgd", 1.0, "constant"
    return config


@pytest.fixture(scope="module")
def digits():
    from jaxquant.data import load_digits

    return load_digits()


@pytest.fixture(scope="module")
def trainer_and_state(digits):
    from jaxquant.methods import build_trainer

    trainer = build_trainer(vertical_config((2, 4, 8, 32)), digits, 10)
    state = jax.jit(trainer.init)(jax.random.key(0), jnp.asarray(digits.train_images[:32]))
    return trainer, state


def test_vertical_model_layout(trainer_and_state):
    trainer, state = trainer_and_state
    spec = trainer.model.spec
    assert (spec.weight.name, spec.activation.name, spec.source_bits, spec.cascade) == (
        "vertical",
        "lsq",
        8,
        "floor",
    )
    for layer in ("conv0", "conv1"):
        assert (
            state.params[layer]["weight_step"].shape == ()
        )  # one shared source step, not per precision
        assert state.params[layer]["act_step"].shape == (4,)
    assert vertical.quantized_layers(state.params) == [("conv0",), ("conv1",)]


def test_train_step_and_every_precision_reaches_the_shared_weights(trainer_and_state, digits):
    """The real `train_step` (vmapped over the 4 precisions) with the loss weights traced, so one
    compiled step gives the update of each precision alone; with SGD at learning rate 1 the update
    is minus the gradient."""
    import dataclasses

    trainer, state = trainer_and_state
    images, labels = jnp.asarray(digits.train_images[:32]), jnp.asarray(digits.train_labels[:32])

    @jax.jit
    def step(state, weights):
        return dataclasses.replace(trainer, loss_weights=weights).train_step(
            state, images, labels, jax.random.key(1)
        )

    def gradient(weights):
        new, metrics = step(state, jnp.asarray(weights, jnp.float32))
        assert np.isfinite(float(metrics["loss"]))
        assert np.all(np.isfinite(np.asarray(metrics["loss_per_precision"])))
        return metrics, jax.tree_util.tree_map(
            lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
            state.params,
            new.params,
        )

    metrics, total = gradient(np.ones(4))
    assert_allclose(metrics["loss"], np.sum(metrics["loss_per_precision"]), rtol=1e-5)
    per = [gradient(np.eye(4)[i])[1] for i in range(4)]  # only 2, 4, 8, FP bits in the loss
    for layer in ("conv0", "conv1"):
        kernels = [g[layer]["kernel"] for g in per]
        assert all(
            np.abs(k).sum() > 0 for k in kernels
        )  # every precision reaches the shared kernel
        assert not np.allclose(
            kernels[0], kernels[2], rtol=0.05, atol=0
        )  # 2-bit and 8-bit pull differently
        assert not np.allclose(kernels[0], kernels[3], rtol=0.05, atol=0)
        scale = max(np.abs(k).max() for k in kernels)
        assert_allclose(total[layer]["kernel"], sum(kernels), rtol=0, atol=1e-4 * scale)
        steps = [float(g[layer]["weight_step"]) for g in per]
        assert steps[0] != 0 and steps[1] != 0 and steps[2] != 0
        assert steps[3] == 0.0  # FP weights do not use the source step
        assert_allclose(float(total[layer]["weight_step"]), sum(steps), rtol=1e-3, atol=1e-7)
        for i in range(4):  # each precision moves only its own activation step and BN row
            act = per[i][layer]["act_step"]
            assert np.all(np.delete(act, i) == 0)
            assert (act[i] != 0) == (i < 3)  # FP activations are not quantized
            bn_scale = per[i]["bn" + layer[-1]]["scale"]
            assert np.all(np.delete(bn_scale, i, axis=0) == 0) and np.abs(bn_scale[i]).sum() > 0


def test_evaluation_bits():
    assert vertical.evaluation_bits((2, 4, 8, 32), 8) == (2, 3, 4, 5, 6, 7, 8, 32)
    assert vertical.evaluation_bits((2, 4, 8), 8) == (2, 3, 4, 5, 6, 7, 8)
    assert vertical.evaluation_bits((2, 4), 6, lowest=1) == (1, 2, 3, 4, 5, 6)


def test_vertical_weights_at(trainer_and_state):
    trainer, state = trainer_and_state
    spec = trainer.model.spec
    frozen = vertical.vertical_weights_at(state.params, 3, spec)
    for layer in ("conv0", "conv1"):
        assert "weight_step" not in frozen[layer]
        assert_array_equal(frozen[layer]["act_step"], state.params[layer]["act_step"])
        expected = np_floor_weight(
            state.params[layer]["kernel"], state.params[layer]["weight_step"], 3
        )
        assert_array_equal(frozen[layer]["kernel"], expected)
    assert_array_equal(frozen["stem"]["kernel"], state.params["stem"]["kernel"])
    assert "weight_step" in state.params["conv0"]  # the input is not modified
    with pytest.raises(ConfigError):
        vertical.vertical_weights_at(state.params, 3, QuantSpec(weight="lsq", activation="lsq"))


# ----------------------------------------------------------------------------------------------
# Bit-widths that were not trained.


def test_source_precision():
    trained = (2, 4, 8)
    assert [vertical.source_precision(trained, k) for k in (1, 2, 3, 4, 5, 6, 7, 8)] == [
        0,
        0,
        1,
        1,
        2,
        2,
        2,
        2,
    ]
    assert vertical.source_precision((2, 4, 8, 32), 32) == 3
    assert vertical.source_precision((8, 2, 32), 5) == 0  # by value, not position
    assert vertical.source_precision((2, 4), 7) == 1  # none above: the nearest below
    with pytest.raises(BitWidthError, match="full precision"):
        vertical.source_precision(trained, 32)
    with pytest.raises(BitWidthError, match="no integer"):
        vertical.source_precision((32,), 4)


@pytest.fixture(scope="module")
def trained_248(trainer_and_state):
    """Variables of a model for bits (2, 4, 8) whose per-precision rows all differ (the first
    three rows of the (2, 4, 8, 32) state, perturbed)."""
    from jaxquant.config import with_bits
    from jaxquant.methods import build_model

    config = vertical_config((2, 4, 8))
    spec = vertical.quant_spec(config)
    build = lambda b: build_model(with_bits(config, b), 10, spec)  # noqa: E731
    per_precision = vertical.per_precision_leaves(build, (2, 4, 8), jnp.zeros((1, 8, 8, 1)))
    _, state = trainer_and_state
    rng = np.random.default_rng(0)

    def distinct(path, leaf):
        key = jax.tree_util.keystr(path)
        if key not in PER_PRECISION_KEYS:
            return leaf
        if key.endswith("['act_step']"):
            return jnp.asarray(f32([0.5, 0.7, 0.9]))
        return leaf[:3] + jnp.asarray(f32(rng.uniform(0.1, 1.0, size=(3,) + leaf.shape[1:])))

    variables = jax.tree_util.tree_map_with_path(
        distinct, {"params": state.params, "batch_stats": state.batch_stats}
    )
    return config, spec, build, per_precision, variables


def test_per_precision_leaves(trained_248):
    _, _, _, per_precision, _ = trained_248
    assert per_precision == PER_PRECISION_KEYS


def test_select_precisions_copies_trained_rows_and_borrows_for_untrained(trained_248):
    config, spec, build, per_precision, variables = trained_248
    target = (1, 2, 3, 4, 5, 6, 7, 8)
    selected = vertical.select_precisions(variables, per_precision, (2, 4, 8), target)
    source_row = {1: 0, 2: 0, 3: 1, 4: 1, 5: 2, 6: 2, 7: 2, 8: 2}
    act_ratio = {1: 3 / 1, 2: 1, 3: 15 / 7, 4: 1, 5: 255 / 31, 6: 255 / 63, 7: 255 / 127, 8: 1}
    flat_in = {
        jax.tree_util.keystr(p): np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path(variables)[0]
    }
    flat_out = {
        jax.tree_util.keystr(p): np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path(selected)[0]
    }
    assert flat_in.keys() == flat_out.keys()
    for key, value in flat_out.items():
        if key not in per_precision:
            assert_array_equal(value, flat_in[key])
            continue
        assert value.shape == (len(target),) + flat_in[key].shape[1:]
        for i, k in enumerate(target):
            row = flat_in[key][source_row[k]]
            if key.endswith("['act_step']"):
                if k in (2, 4, 8):
                    assert_array_equal(value[i], row)  # trained rows: exact copies
                else:
                    assert_allclose(value[i], row * act_ratio[k], rtol=1e-6)
            else:
                assert_array_equal(value[i], row)
    # 3 bits gets exactly the 4-bit BatchNorm and act_step * 15/7 (the same clipping range 15 s_4).
    assert_array_equal(
        selected["params"]["bn0"]["scale"][2], variables["params"]["bn0"]["scale"][1]
    )
    assert_array_equal(
        selected["batch_stats"]["bn1"]["var"][2], variables["batch_stats"]["bn1"]["var"][1]
    )
    assert_allclose(selected["params"]["conv0"]["act_step"][2] * 7, 0.7 * 15, rtol=1e-6)
    # The result has the shapes of the model built for the target bits.
    shapes = jax.eval_shape(
        lambda: build(target).init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), 0, train=True)
    )
    assert jax.tree_util.tree_map(lambda a: a.shape, shapes) == jax.tree_util.tree_map(
        jnp.shape, selected
    )


def test_recalibrate_batch_norm_moves_only_the_chosen_rows(trained_248, digits):
    from jaxquant.data import make_preprocess

    config, spec, build, per_precision, variables = trained_248
    target = (2, 3, 4, 8)
    selected = vertical.select_precisions(variables, per_precision, (2, 4, 8), target)
    preprocess = make_preprocess(digits.mean, digits.std)
    batches = [digits.train_images[:48], digits.train_images[48:96]]
    out = vertical.recalibrate_batch_norm(build(target), selected, batches, [1], preprocess)
    assert out["params"] is selected["params"]
    for layer in ("stem_bn", "bn0", "bn1"):
        for stat in ("mean", "var"):
            before = np.asarray(selected["batch_stats"][layer][stat])
            after = np.asarray(out["batch_stats"][layer][stat])
            assert_array_equal(np.delete(after, 1, axis=0), np.delete(before, 1, axis=0))
            assert np.all(after[1] != before[1])
    # The stem BN sees the FP stem conv: ra <- 0.9 ra + 0.1 batch, twice.
    kernel = selected["params"]["stem"]["kernel"]
    mean = np.float64(selected["batch_stats"]["stem_bn"]["mean"][1])
    var = np.float64(selected["batch_stats"]["stem_bn"]["var"][1])
    for images in batches:
        y = np.asarray(
            jax.lax.conv_general_dilated(
                preprocess(jnp.asarray(images), False, None),
                kernel,
                (1, 1),
                "SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            ),
            np.float64,
        )
        mean = 0.9 * mean + 0.1 * y.mean((0, 1, 2))
        var = 0.9 * var + 0.1 * y.var((0, 1, 2))
    assert_allclose(out["batch_stats"]["stem_bn"]["mean"][1], mean, rtol=1e-4, atol=1e-5)
    assert_allclose(out["batch_stats"]["stem_bn"]["var"][1], var, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# MSB slicing of a dedicated LSQ model.


def test_msb_sliced_weights_by_hand():
    # step 0.5: q_B = round(clip(w/0.5, -128, 127)) = [6, -6, 127, -128, 0, -1]
    kernel = jnp.asarray(f32([3.0, -3.0, 63.5, -64.0, 0.2, -0.3]))
    params = {
        "conv": {
            "kernel": kernel,
            "weight_step": jnp.asarray(f32([0.5, 9.9])),
            "act_step": jnp.ones(2),
        },
        "stem": {"kernel": kernel},
    }
    expected = {  # (q_B >> (8-k)) * 2^(8-k) * 0.5, arithmetic shift
        4: [0, -8, 56, -64, 0, -8],  # q >> 4 = [0, -1, 7, -8, 0, -1], times 8
        2: [0, -32, 32, -64, 0, -32],  # q >> 6 = [0, -1, 1, -2, 0, -1], times 32
        8: [3.0, -3.0, 63.5, -64.0, 0.0, -0.5],
    }
    for k, values in expected.items():
        sliced = vertical.msb_sliced_weights(params, k)
        assert_array_equal(sliced["conv"]["kernel"], f32(values))
        assert "weight_step" not in sliced["conv"]
        assert_array_equal(sliced["stem"]["kernel"], kernel)
    # centred: half a k-bit step up, (q_k + 1/2) * 2^(8-k) * 0.5
    assert_array_equal(
        vertical.msb_sliced_weights(params, 4, centred=True)["conv"]["kernel"],
        f32([4, -4, 60, -60, 4, -4]),
    )
    # rounded: clip(floor(q_B / 2^(8-k) + 1/2), -2^(k-1), 2^(k-1)-1) * 2^(8-k) * 0.5; k = 8 is the
    # model itself
    rounded = {
        4: [0, 0, 56, -64, 0, 0],
        2: [0, 0, 32, -64, 0, 0],
        8: [3.0, -3.0, 63.5, -64.0, 0.0, -0.5],
    }
    for k, values in rounded.items():
        assert_array_equal(
            vertical.msb_sliced_weights(params, k, rounded=True)["conv"]["kernel"], f32(values)
        )
    with pytest.raises(ConfigError):
        vertical.msb_sliced_weights(params, 4, centred=True, rounded=True)


def test_msb_sliced_weights_per_channel():
    # steps (P=2, C=2): only precision 0's row [0.5, 0.25] is used; channels on the last axis.
    kernel = jnp.asarray(f32([[3.0, 3.0], [-3.0, -3.0]]))  # q = [[6, 12], [-6, -12]]
    params = {
        "conv": {"kernel": kernel, "weight_step": jnp.asarray(f32([[0.5, 0.25], [7.0, 7.0]]))}
    }
    sliced = vertical.msb_sliced_weights(params, 5)  # q >> 3 = [[0, 1], [-1, -2]], times 8 s
    assert_array_equal(sliced["conv"]["kernel"], f32([[0, 2], [-4, -4]]))

"""bfloat16 compute (`jaxquant.layers`' module docstring): the compute dtype follows the input,
parameters stay float32, and a quantized conv/matmul takes the integer-valued ``n`` of
``x_hat = n * s`` (exact in bfloat16 up to 8 bits) with the scales applied after, in float32.

Float32 references are the same layers on ``x_bf16.astype(float32)``: the same input values, so
the quantizers pick the same codes and only bfloat16 rounding of conv results and cotangents
separates the two."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from jaxquant import layers
from jaxquant import quantizers as q
from jaxquant.errors import ConfigError
from jaxquant.layers import (
    FULL_PRECISION,
    MultiBranchConv,
    PrecisionBatchNorm,
    QuantConv,
    QuantDense,
    QuantSpec,
    conv_backward,
    conv_forward,
    conv_weight_gradient,
    precision_conv,
)
from jaxquant.methods import mbquant
from jaxquant.models import CifarResNet, SmallCNN

BF16 = jnp.bfloat16
BF16_RTOL = 2.0**-7  # two bfloat16 ulps


def _bf16_input(shape, seed=0, scale=1.0):
    """A bfloat16 input and the same values as float32."""
    x = jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, BF16)
    return x, x.astype(jnp.float32)


def _relative_error(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def _assert_float32_and_equal(tree, other):
    chex.assert_trees_all_equal(tree, other)  # the structure and every value
    chex.assert_type(jax.tree_util.tree_leaves((tree, other)), jnp.float32)


def _assert_integers_within(n, bound):
    n = np.asarray(n, np.float32)
    assert_array_equal(n, np.round(n))
    assert np.abs(n).max() <= bound


# ----------------------------------------------------------------------------------------------
# The grid of every quantizer family: x_hat = n * s, n integer, exact in bfloat16.


def _grids():
    """(family, bits, x_hat, s, bound on |n|) for every family and bit-width up to 8."""
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.normal(size=(3, 3, 4, 5)) * 0.1, jnp.float32)
    a = jnp.asarray(rng.normal(size=(2, 4, 4, 4)), jnp.float32)
    cases = []
    for b in range(2, 9):
        for signed, data in ((True, w), (False, jax.nn.relu(a))):
            step = q.lsq_init_step(data, b, signed=signed)
            cases.append(
                (
                    f"lsq-{'signed' if signed else 'unsigned'}",
                    b,
                    q.lsq_quantize(data, step, b, signed=signed),
                    q.lsq_grid_scale(step, b),
                    2**b - 1,
                )
            )
        cases.append(
            (
                "interval-activation",
                b,
                q.interval_activation(a, -0.5, 1.5, b),
                q.unit_grid_scale(b),
                2**b - 1,
            )
        )
    for b in range(1, 9):
        cases.append(
            ("dorefa-weight", b, q.dorefa_weight(w, b), q.dorefa_weight_grid_scale(w, b), 2**b - 1)
        )
        cases.append(
            ("dorefa-activation", b, q.dorefa_activation(a, b), q.unit_grid_scale(b), 2**b - 1)
        )
        step = q.lsq_init_step(w, 8, signed=True)
        for cascade in ("floor", "round_clip"):
            cases.append(
                (
                    f"vertical-{cascade}",
                    b,
                    q.vertical_weight(w, step, b, source_bits=8, cascade=cascade),
                    q.vertical_grid_scale(step, b, source_bits=8, cascade=cascade),
                    2**b - 1,
                )
            )
    lower, upper = jnp.float32(-0.2), jnp.float32(0.2)
    cases.append(
        ("interval-weight", 2, q.interval_weight(w, lower, upper), q.INTERVAL_WEIGHT_GRID_SCALE, 3)
    )
    return cases


def test_every_family_is_integers_on_its_grid_up_to_8_bits():
    families = set()
    for family, b, x_hat, s, bound in _grids():
        n = q.grid_integers(x_hat, s, b)
        _assert_integers_within(n, bound)
        assert_array_equal(
            np.asarray(n.astype(BF16).astype(jnp.float32)), np.asarray(n)
        )  # exact in bf16
        assert_allclose(
            np.asarray(n * s), np.asarray(x_hat), rtol=1e-6, atol=1e-7, err_msg=f"{family} {b}"
        )
        if family.startswith(("dorefa-weight", "vertical-floor", "interval-weight")) and b > 0:
            assert np.all(np.asarray(n) % 2 == 1), family  # odd integers: 2u - (2^k - 1)
        families.add(family)
    assert len(families) == 8


def test_grid_integers_pass_full_precision_through_traced_or_static():
    x = jnp.asarray([0.3, -1.7, 2.25], jnp.float32)
    for bits in (32, jnp.int32(32)):
        assert_array_equal(
            np.asarray(q.grid_integers(x, q.unit_grid_scale(bits), bits)), np.asarray(x)
        )
        assert float(q.lsq_grid_scale(jnp.float32(0.1), bits)) == 1.0
    traced = jax.jit(lambda b: q.grid_integers(x * 3.0, q.unit_grid_scale(b), b))
    assert_array_equal(
        np.asarray(traced(jnp.int32(2))), [3.0, -15.0, 20.0]
    )  # s = 1/3: round(3 * 3x)
    assert_array_equal(np.asarray(traced(jnp.int32(32))), np.asarray(x * 3.0))


def test_low_precision_quantizer_inputs_compute_in_float32():
    x, x32 = _bf16_input((64,), seed=3)
    step = jnp.float32(0.013)  # not a bf16 value: a bf16 step would move the grid
    got = q.lsq_quantize(x, step, 8, signed=True)
    assert got.dtype == jnp.float32
    assert_array_equal(np.asarray(got), np.asarray(q.lsq_quantize(x32, step, 8, signed=True)))
    for fn in (
        lambda v: q.dorefa_activation(v, 4),
        lambda v: q.dorefa_weight(v, 4),
        lambda v: q.interval_activation(v, -1.0, 1.0, 4),
        lambda v: q.interval_weight(v, -1.0, 1.0),
        lambda v: q.vertical_weight(v, step, 4),
    ):
        assert fn(x).dtype == jnp.float32
        assert_array_equal(np.asarray(fn(x)), np.asarray(fn(x32)))
    assert q.max_exact_bits(BF16) == 8 and q.max_exact_bits(jnp.float16) == 11


# The gradient algebra in float32: conv(grid_integers(x_hat), grid_integers(w_hat)) * sg(s_x s_w)
# has exactly the gradients of conv(x_hat, w_hat), step sizes included.


def _conv(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@pytest.mark.parametrize("family", ["lsq-per-channel", "dorefa", "vertical", "interval"])
def test_exact_grid_has_the_gradients_of_the_fake_quantized_conv(family):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 5, 5, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 4)) * 0.2, jnp.float32)
    b = 3

    def quantize(x, w, steps):
        if family == "lsq-per-channel":
            x_hat = q.lsq_quantize(x, steps[0], b, signed=True)
            w_hat = q.lsq_quantize(w, steps[1], b, signed=True)
            return x_hat, q.lsq_grid_scale(steps[0], b), w_hat, q.lsq_grid_scale(steps[1], b)
        if family == "dorefa":
            return (
                q.dorefa_activation(x, b),
                q.unit_grid_scale(b),
                q.dorefa_weight(w, b),
                q.dorefa_weight_grid_scale(w, b),
            )
        if family == "vertical":
            return (
                q.lsq_quantize(x, steps[0], b, signed=True),
                q.lsq_grid_scale(steps[0], b),
                q.vertical_weight(w, steps[1], b),
                q.vertical_grid_scale(steps[1], b),
            )
        return (
            q.interval_activation(x, steps[0], steps[0] + 2.5, b),
            q.unit_grid_scale(b),
            q.interval_weight(w, -steps[1], steps[1]),
            q.INTERVAL_WEIGHT_GRID_SCALE,
        )

    steps = {
        "lsq-per-channel": (jnp.float32(0.4), jnp.asarray([0.05, 0.07, 0.1, 0.2], jnp.float32)),
        "dorefa": (jnp.float32(0.0), jnp.float32(0.0)),
        "vertical": (jnp.float32(0.4), jnp.float32(0.011)),
        "interval": (jnp.float32(-0.7), jnp.float32(0.3)),
    }[family]
    probe = jnp.asarray(rng.normal(size=(2, 5, 5, 4)), jnp.float32)

    def fake_quant(x, w, steps):
        x_hat, _, w_hat, _ = quantize(x, w, steps)
        return jnp.sum(jnp.sin(_conv(x_hat, w_hat) + probe))

    def exact_grid(x, w, steps):
        x_hat, s_x, w_hat, s_w = quantize(x, w, steps)
        n_x, n_w = q.grid_integers(x_hat, s_x, b), q.grid_integers(w_hat, s_w, b)
        return jnp.sum(jnp.sin(_conv(n_x, n_w) * jax.lax.stop_gradient(s_x * s_w) + probe))

    assert_allclose(exact_grid(x, w, steps), fake_quant(x, w, steps), rtol=1e-5)
    want = jax.grad(fake_quant, (0, 1, 2))(x, w, steps)
    got = jax.grad(exact_grid, (0, 1, 2))(x, w, steps)
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Layers: bfloat16 conv operands are grid integers, outputs match float32.


@pytest.fixture
def recorded_operands(monkeypatch):
    """Every (x, kernel) `precision_conv` receives (under vmap, once per element), as NumPy
    arrays with their dtypes."""
    calls = []
    original = layers.precision_conv

    def recording(x, kernel, *args, **kwargs):
        jax.debug.callback(lambda a, b: calls.append((np.asarray(a), np.asarray(b))), x, kernel)
        return original(x, kernel, *args, **kwargs)

    monkeypatch.setattr(layers.conv, "precision_conv", recording)
    return calls


LAYER_CASES = {  # spec, bits (every supported bit-width up to 8, and full precision)
    "lsq": (QuantSpec("lsq", "lsq"), tuple(range(2, 9)) + (32,)),
    "lsq-signed-per-channel": (
        QuantSpec("lsq", "lsq", per_channel=True, signed_activations=True),
        tuple(range(2, 9)) + (32,),
    ),
    "dorefa": (QuantSpec("dorefa", "dorefa"), tuple(range(1, 9)) + (32,)),
    "vertical": (
        QuantSpec("vertical", "lsq"),
        tuple(range(2, 9)) + (32,),
    ),  # LSQ activations: 2 bits up
    "vertical-round-clip": (
        QuantSpec("vertical", "lsq", cascade="round_clip", signed_activations=True),
        (2, 4, 6, 8, 32),
    ),
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_quant_conv_bf16_operands_are_grid_integers_and_output_matches_f32(case, recorded_operands):
    spec, bits = LAYER_CASES[case]
    x, x32 = _bf16_input((2, 5, 5, 3), seed=4)
    model = QuantConv(4, bits=bits, spec=spec, use_bias=True)
    variables = model.init(jax.random.PRNGKey(0), x32, 0)
    _assert_float32_and_equal(
        variables, model.init(jax.random.PRNGKey(0), x, 0)
    )  # act_step from x as float32
    for p, b in enumerate(bits):
        y32 = model.apply(variables, x32, p)
        recorded_operands.clear()
        y = model.apply(variables, x, p)
        assert y.dtype == BF16 and y32.dtype == jnp.float32
        ((n_x, n_w),) = recorded_operands
        assert n_x.dtype == n_w.dtype == BF16
        if b == 32:  # full precision: the values themselves (DoReFa's FP input is ReLU(x))
            assert_array_equal(
                np.asarray(n_x),
                np.asarray(
                    jax.nn.relu(x) if isinstance(spec.activation, q.DoReFaActivation) else x
                ),
            )
            kernel = variables["params"]["kernel"]
            fp_kernel = (
                q.dorefa_weight(kernel, 32) if isinstance(spec.weight, q.DoReFaWeight) else kernel
            )
            assert_array_equal(np.asarray(n_w), np.asarray(fp_kernel.astype(BF16)))
        else:  # |n| <= 2^b - 1 on every grid
            _assert_integers_within(n_x, 2**b - 1)
            _assert_integers_within(n_w, 2**b - 1)
        assert_allclose(
            np.asarray(y, np.float32),
            np.asarray(y32),
            rtol=BF16_RTOL,
            atol=BF16_RTOL * float(np.abs(y32).max()),
            err_msg=f"{case} at {b} bits",
        )


def test_quant_dense_and_full_precision_conv_in_bf16():
    x, x32 = _bf16_input((3, 6), seed=5)
    for spec, bits in (
        (QuantSpec("lsq", "lsq", per_channel=True), (2, 5, 8, 32)),
        (FULL_PRECISION, (32,)),
    ):
        dense = QuantDense(4, bits=bits, spec=spec)
        variables = dense.init(jax.random.PRNGKey(1), x32, 0)
        for p in range(len(bits)):
            y, y32 = dense.apply(variables, x, p), dense.apply(variables, x32, p)
            assert y.dtype == BF16
            assert_allclose(
                np.asarray(y, np.float32),
                np.asarray(y32),
                rtol=BF16_RTOL,
                atol=BF16_RTOL * float(np.abs(y32).max()),
            )
    image, image32 = _bf16_input((2, 5, 5, 3), seed=6)
    stem = QuantConv(4, spec=FULL_PRECISION)
    variables = stem.init(jax.random.PRNGKey(2), image32, 0)
    y, y32 = stem.apply(variables, image, 0), stem.apply(variables, image32, 0)
    assert y.dtype == BF16
    assert_allclose(np.asarray(y, np.float32), np.asarray(y32), rtol=BF16_RTOL, atol=2e-2)


def test_multibranch_conv_bf16_operands_are_grid_integers(recorded_operands):
    bits = tuple(range(2, 9))  # MBQuant's bit-widths
    x, x32 = _bf16_input((2, 4, 4, mbquant.NUM_BRANCHES, 3), seed=7)
    model = MultiBranchConv(4, mbquant.branch_selection(bits), bits, partial_in=2, partial_out=3)
    variables = model.init(jax.random.PRNGKey(3), x32, 0)
    _assert_float32_and_equal(
        variables, model.init(jax.random.PRNGKey(3), x, 0)
    )  # intervals from x as float32
    masked = jax.jit(lambda x, p: model.apply(variables, x, p))
    for p, b in enumerate(bits):
        recorded_operands.clear()
        y = model.apply(variables, x, jnp.int32(p))  # an array index: the masked path
        assert len(recorded_operands) == mbquant.NUM_BRANCHES  # one conv per branch (vmap)
        for n_x, n_w in recorded_operands:
            assert n_x.dtype == n_w.dtype == BF16
            _assert_integers_within(n_w, 3)
            _assert_integers_within(n_x, 2**b - 1)
        y32 = masked(x32, p)
        assert y.dtype == BF16
        assert_allclose(
            np.asarray(y, np.float32),
            np.asarray(y32),
            rtol=BF16_RTOL,
            atol=BF16_RTOL * float(np.abs(y32).max()),
            err_msg=f"{b} bits",
        )
        static = model.apply(variables, x, p)  # a Python-int precision: the selected branches
        assert static.dtype == BF16
        assert_allclose(
            np.asarray(static, np.float32),
            np.asarray(y32),
            rtol=BF16_RTOL,
            atol=BF16_RTOL * float(np.abs(y32).max()),
            err_msg=f"{b} bits (static)",
        )


def test_bits_above_8_with_bf16_raise_config_error():
    x, x32 = _bf16_input((2, 4, 4, 3))
    for layer in (
        QuantConv(4, bits=(4, 9), spec=QuantSpec("lsq", "lsq")),
        QuantConv(4, bits=(16, 32), spec=QuantSpec("dorefa", "dorefa")),
        QuantDense(4, bits=(2, 12), spec=QuantSpec("lsq", "lsq")),
    ):
        variables = layer.init(jax.random.PRNGKey(0), x32, 0)  # float32 is fine at 9..16 bits
        with pytest.raises(
            ConfigError, match="bfloat16 carries integer codes exactly only up to 8 bits"
        ):
            layer.apply(variables, x, 0)  # even at a precision of 4 bits: the layer's tuple decides
    bits = (4, 10)  # the layer only needs a selection of two rows: MBQuant's (4, 6) tables
    branches, branches32 = _bf16_input((2, 4, 4, mbquant.NUM_BRANCHES, 3))
    model = MultiBranchConv(4, mbquant.branch_selection((4, 6)), bits)
    variables = model.init(jax.random.PRNGKey(0), branches32, 0)
    with pytest.raises(ConfigError, match="float32"):
        model.apply(variables, branches, 0)
    # Full precision and 8 bits are fine.
    QuantConv(4, bits=(8, 32), spec=QuantSpec("lsq", "lsq")).init(jax.random.PRNGKey(0), x, 0)


@pytest.mark.parametrize("case", ["lsq-signed-per-channel", "dorefa", "vertical"])
def test_bf16_gradients_are_close_to_float32(case):
    spec, _ = LAYER_CASES[case]
    bits = (2, 4, 8, 32)
    x, x32 = _bf16_input((2, 5, 5, 3), seed=8)
    model = QuantConv(4, bits=bits, spec=spec)
    params = model.init(jax.random.PRNGKey(4), x32, 0)["params"]
    probe = jnp.asarray(np.random.default_rng(9).normal(size=(2, 5, 5, 4)), jnp.float32)

    @jax.jit
    def grads(params, x):
        def loss(params, x):  # every precision at once (vmap), as the training step
            ys = jax.vmap(lambda p: model.apply({"params": params}, x, p))(jnp.arange(len(bits)))
            return jnp.sum(jnp.sin(ys.astype(jnp.float32) + probe))

        return jax.grad(loss, (0, 1))(params, x)

    (g, gx), (g32, gx32) = grads(params, x), grads(params, x32)
    moved = x32 * (
        1 + 2.0**-9 * jnp.asarray(np.random.default_rng(0).uniform(-1, 1, x.shape), jnp.float32)
    )
    g_moved, _ = grads(params, moved)
    assert gx.dtype == BF16 and gx32.dtype == jnp.float32
    assert _relative_error(gx, gx32) < 2e-2
    assert set(g) == set(g32) and g["kernel"].shape == params["kernel"].shape
    assert _relative_error(g["kernel"], g32["kernel"]) < 2e-2
    for name in g:
        assert g[name].dtype == jnp.float32
        # A step's gradient sums terms of both signs (round(v/s) - v/s) and cancels: at 2 bits
        # it moves by more than bf16 rounding when the float32 input moves by one bf16 rounding
        # (vertical: 10.1 -> -8.7). Bound: what that perturbation alone does, plus 2%.
        allowed = 2e-2 + 3 * _relative_error(g_moved[name], g32[name])
        assert _relative_error(g[name], g32[name]) < allowed, name


def test_model_init_from_bf16_is_float32():
    x, x32 = _bf16_input((2, 8, 8, 3), seed=10)
    model = CifarResNet(depth=8, bits=(2, 32), spec=QuantSpec("lsq", "lsq"), first_last_bits=8)
    v32 = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, 0, train=True))(x32)
    v16 = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, 0, train=True))(x)
    stem32, stem16 = v32["params"]["stem"], v16["params"]["stem"]
    _assert_float32_and_equal(
        stem32, stem16
    )  # the stem reads the same image: its act_step is equal
    assert jax.tree_util.tree_structure(v32) == jax.tree_util.tree_structure(v16)
    flat32, flat16 = jax.tree_util.tree_flatten_with_path(v32)[0], jax.tree_util.tree_leaves(v16)
    for (path, a), b in zip(flat32, flat16):
        assert a.dtype == b.dtype == jnp.float32
        if "act_step" not in jax.tree_util.keystr(path):  # later inputs differ by bf16 rounding
            assert_array_equal(np.asarray(a), np.asarray(b))
        else:
            assert_allclose(np.asarray(a), np.asarray(b), rtol=0.1)


def test_batchnorm_computes_in_float32_and_returns_bf16():
    x, x32 = _bf16_input((4, 3, 3, 5), seed=11, scale=3.0)
    bn = PrecisionBatchNorm(num_precisions=2)
    variables = bn.init(jax.random.PRNGKey(0), x32, 0, True)
    y, state = bn.apply(variables, x, 1, True, mutable=["batch_stats"])
    y32, state32 = bn.apply(variables, x32, 1, True, mutable=["batch_stats"])
    assert y.dtype == BF16
    assert_allclose(np.asarray(y, np.float32), np.asarray(y32), rtol=BF16_RTOL, atol=BF16_RTOL * 4)
    for name in ("mean", "var"):  # float32 statistics of the same values: equal
        assert state["batch_stats"][name].dtype == jnp.float32
        assert_array_equal(
            np.asarray(state["batch_stats"][name]), np.asarray(state32["batch_stats"][name])
        )
    assert bn.apply({"params": variables["params"], **state}, x, 1, False).dtype == BF16


# ----------------------------------------------------------------------------------------------
# Conv primitives with bfloat16 operands.


def test_conv_primitives_take_bf16_and_accumulate_in_float32():
    x, x32 = _bf16_input((2, 6, 6, 3), seed=12)
    k, k32 = _bf16_input((3, 3, 3, 4), seed=13)
    y = conv_forward(x, k, (2, 2), "SAME")
    assert y.dtype == jnp.float32
    assert "preferred_element_type=float32" in str(jax.make_jaxpr(conv_forward)(x, k))
    assert_allclose(
        np.asarray(y), np.asarray(conv_forward(x32, k32, (2, 2), "SAME")), rtol=1e-5, atol=1e-5
    )
    g = jnp.asarray(np.random.default_rng(14).normal(size=y.shape), jnp.float32)
    want = conv_backward(x32, k32, g.astype(BF16).astype(jnp.float32), (2, 2), "SAME", "xla")
    for mode in ("xla", "im2col"):
        dx, dk = conv_backward(x, k, g, (2, 2), "SAME", mode)
        assert dx.dtype == dk.dtype == BF16, mode
        assert_allclose(np.asarray(dx, np.float32), np.asarray(want[0]), rtol=BF16_RTOL, atol=2e-2)
        assert_allclose(np.asarray(dk, np.float32), np.asarray(want[1]), rtol=BF16_RTOL, atol=5e-2)
    dk = conv_weight_gradient(x, g, k.shape, (2, 2), "SAME", cache_bytes=600)  # several chunks
    assert dk.dtype == BF16
    assert_allclose(np.asarray(dk, np.float32), np.asarray(want[1]), rtol=BF16_RTOL, atol=5e-2)


@pytest.mark.parametrize("batching", ["unroll", "native"])
def test_precision_conv_vmap_and_grad_in_bf16(batching):
    xs, xs32 = _bf16_input((3, 2, 5, 5, 3), seed=15)
    ks, ks32 = _bf16_input((3, 3, 3, 3, 4), seed=16)

    def loss(xs, ks):
        ys = jax.vmap(lambda x, k: precision_conv(x, k, batching=batching))(xs, ks)
        assert ys.dtype == jnp.float32
        return jnp.sum(jnp.sin(ys))

    value, (gx, gk) = jax.jit(jax.value_and_grad(loss, (0, 1)))(xs, ks)
    value32, (gx32, gk32) = jax.jit(jax.value_and_grad(loss, (0, 1)))(xs32, ks32)
    assert gx.dtype == gk.dtype == BF16
    assert_allclose(float(value), float(value32), rtol=1e-4)
    assert _relative_error(gx, gx32) < 1e-2 and _relative_error(gk, gk32) < 1e-2


# ----------------------------------------------------------------------------------------------
# Whole models under jit.


def _model_step(model, bits, mode):
    """Logits of every precision and the gradient of their summed loss, by vmap or an unrolled
    loop of static precisions (as the training step's two modes)."""

    def loss(params, batch_stats, x):
        variables = {"params": params, "batch_stats": batch_stats}
        if mode == "vmap":
            logits = jax.vmap(
                lambda p: model.apply(variables, x, p, train=True, mutable=["batch_stats"])[0]
            )(jnp.arange(len(bits)))
        else:
            logits = jnp.stack(
                [
                    model.apply(variables, x, p, train=True, mutable=["batch_stats"])[0]
                    for p in range(len(bits))
                ]
            )
        logits = logits.astype(jnp.float32)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0] ** 2), logits

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


def _flat(tree):
    return np.concatenate(
        [np.ravel(np.asarray(leaf, np.float32)) for leaf in jax.tree_util.tree_leaves(tree)]
    )


@pytest.mark.parametrize("name", ["cifar_resnet", "small_cnn"])
def test_model_forward_backward_in_bf16_is_close_to_float32(name):
    """Finite, float32 gradients, and no further from the float32 step than the float32 step is
    from itself with its input moved by a bfloat16 rounding (``x (1 + u 2^-9)``): low-bit
    quantizers amplify any rounding (a code flips when an input crosses a boundary; measured on
    the ResNet at 2 bits: 26-31% of the logits for that input perturbation alone, 34% in bf16)."""
    bits = (2, 32) if name == "cifar_resnet" else (2, 8, 32)
    spec = QuantSpec("lsq", "lsq") if name == "cifar_resnet" else QuantSpec("dorefa", "dorefa")
    model = (
        CifarResNet(depth=8, bits=bits, spec=spec)
        if name == "cifar_resnet"
        else SmallCNN(bits=bits, spec=spec, widths=(8, 8, 8))
    )
    x, x32 = _bf16_input((4, 8, 8, 3), seed=17)
    variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(5), x, 0, train=True))(x32)
    step = _model_step(model, bits, "vmap")
    (loss, logits), grads = step(variables["params"], variables["batch_stats"], x)
    (loss32, logits32), grads32 = step(variables["params"], variables["batch_stats"], x32)
    moved = x32 * (
        1 + 2.0**-9 * jnp.asarray(np.random.default_rng(0).uniform(-1, 1, x.shape), jnp.float32)
    )
    (_, logits_moved), grads_moved = step(variables["params"], variables["batch_stats"], moved)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(_flat(grads)))
    assert logits.dtype == jnp.float32
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda g: g.dtype == jnp.float32, grads))
    for p in range(len(bits)):
        sensitivity = _relative_error(logits_moved[p], logits32[p])
        assert _relative_error(logits[p], logits32[p]) < 3 * sensitivity + 2e-2, bits[p]
    assert _relative_error(logits[-1], logits32[-1]) < 2e-2  # full precision: bf16 rounding only
    assert (
        _relative_error(_flat(grads), _flat(grads32))
        < 3 * _relative_error(_flat(grads_moved), _flat(grads32)) + 2e-2
    )


def test_vmap_and_unrolled_precisions_agree_in_bf16():
    bits = (2, 8, 32)
    model = SmallCNN(bits=bits, spec=QuantSpec("lsq", "lsq"), widths=(8, 8, 8))
    x, x32 = _bf16_input((4, 8, 8, 3), seed=18)
    variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(6), x, 0, train=True))(x32)
    (loss_v, logits_v), grads_v = _model_step(model, bits, "vmap")(
        variables["params"], variables["batch_stats"], x
    )
    (loss_u, logits_u), grads_u = _model_step(model, bits, "unroll")(
        variables["params"], variables["batch_stats"], x
    )
    assert logits_v.dtype == logits_u.dtype == jnp.float32
    assert _relative_error(logits_u, logits_v) < 1e-2
    assert_allclose(float(loss_u), float(loss_v), rtol=1e-2)
    assert _relative_error(_flat(grads_u), _flat(grads_v)) < 2e-2

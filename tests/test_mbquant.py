"""Tests of MBQuant's selection tables and BitOPs (`jaxquant.methods.mbquant`) and of the generic
`MultiBranchConv` (`jaxquant.layers`). Expected tables are transcribed from the official
MBQuant code's selection rules; expected layer outputs are built by hand
in NumPy (quantization) and plain ``jax.lax`` convolutions, never by the layer under test."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from jaxquant.errors import BitWidthError, ConfigError
from jaxquant.layers import MultiBranchConv
from jaxquant.methods import mbquant

G = mbquant.NUM_BRANCHES
ALL_BITS = tuple(range(2, 9))

# The digest's table (b: full branches, partial branch or None), amortised and naive. The naive
# rows for b >= 5 are our extension by the `_234` code's rule (start at branch 0).
AMORTISED = {
    2: ({0}, None),
    3: ({0}, 1),
    4: ({1, 2}, None),
    5: ({1, 2}, 3),
    6: ({1, 2, 3}, None),
    7: ({0, 1, 2}, 3),
    8: ({0, 1, 2, 3}, None),
}
NAIVE = {
    2: ({0}, None),
    3: ({0}, 1),
    4: ({0, 1}, None),
    5: ({0, 1}, 2),
    6: ({0, 1, 2}, None),
    7: ({0, 1, 2}, 3),
    8: ({0, 1, 2, 3}, None),
}
TABLES = {"amortised": AMORTISED, "naive": NAIVE}


# ----------------------------------------------------------------------------------------------
# Selection tables.


@pytest.mark.parametrize("selection", ["amortised", "naive"])
def test_selection_tables_match_the_digest(selection):
    for b, (full, partial) in TABLES[selection].items():
        assert set(np.flatnonzero(mbquant.FULL_BRANCHES[selection][b])) == full, b
        assert mbquant.PARTIAL_BRANCH[selection][b] == (-1 if partial is None else partial), b
    for b in (0, 1):  # rows below 2 select nothing
        assert (
            not mbquant.FULL_BRANCHES[selection][b].any()
            and mbquant.PARTIAL_BRANCH[selection][b] == -1
        )


@pytest.mark.parametrize("selection", ["amortised", "naive"])
def test_masks_gather_with_a_traced_bit_width(selection):
    bits = jnp.arange(2, 9)
    masks = jax.jit(jax.vmap(lambda b: mbquant.branch_mask(b, selection)))(bits)
    partial = jax.jit(jax.vmap(lambda b: mbquant.partial_branch(b, selection)))(bits)
    for i, b in enumerate(ALL_BITS):
        full, pb = TABLES[selection][b]
        assert_array_equal(masks[i], [1.0 if g in full else 0.0 for g in range(G)])
        assert int(partial[i]) == (-1 if pb is None else pb)


def test_position_weight_slots_are_the_official_codes():
    # Digest A3: which (branch, b, role) each weight slot quantizes in the official code.
    expected = {
        0: {
            (0, 2, "full"),
            (0, 3, "full"),
            (0, 7, "full"),
            (0, 8, "full"),
            (1, 4, "full"),
            (1, 5, "full"),
            (1, 6, "full"),
        },
        1: {
            (1, 3, "partial"),
            (1, 7, "full"),
            (1, 8, "full"),
            (2, 4, "full"),
            (2, 5, "full"),
            (2, 6, "full"),
        },
        2: {(2, 7, "full"), (2, 8, "full"), (3, 6, "full"), (3, 5, "partial")},
        3: {(3, 8, "full"), (3, 7, "partial")},
    }
    for weight_slots in ("position", "branch"):
        sel = mbquant.branch_selection(ALL_BITS, weight_slots=weight_slots)
        users = {}
        for i, b in enumerate(ALL_BITS):
            for g in range(G):
                if sel.full[i][g]:
                    users.setdefault(sel.full_weight_slot[i][g], set()).add((g, b, "full"))
            if sel.partial[i] >= 0:
                users.setdefault(sel.partial_weight_slot[i], set()).add(
                    (sel.partial[i], b, "partial")
                )
        if weight_slots == "position":
            assert users == expected
        else:  # clean: slot g holds only branch g, full or partial
            assert all({g for g, _, _ in roles} == {slot} for slot, roles in users.items())


def test_bad_bits_and_options_are_user_errors():
    for bad in ((9,), (1,), (), (2, 2), (32,)):
        with pytest.raises(BitWidthError):
            mbquant.validate_bits(bad)
    with pytest.raises(ConfigError):
        mbquant.branch_selection((2, 4), selection="greedy")
    with pytest.raises(ConfigError):
        mbquant.branch_selection((2, 4), weight_slots="filter")


# ----------------------------------------------------------------------------------------------
# BitOPs.


def test_bitops_of_one_conv_by_hand():
    conv = mbquant.BranchConvSpec(
        "c", positions=4 * 4, kernel=3, c_in=8, c_out=6, partial_in=4, partial_out=3
    )
    macs, pmacs = 16 * 9 * 8 * 6, 16 * 9 * 4 * 3
    assert mbquant.bitops([conv], 2) == macs * 2 * 2
    assert mbquant.bitops([conv], 3) == (macs + pmacs) * 2 * 3
    assert mbquant.bitops([conv], 7) == (3 * macs + pmacs) * 2 * 7
    assert mbquant.plain_bitops([conv], 5) == macs * 25


@pytest.mark.parametrize("selection", ["amortised", "naive"])
def test_cifar_resnet20_bitops_match_b_squared(selection):
    convs = mbquant.cifar_resnet_convs(mbquant.CIFAR_RESNET20_PARTIAL_WIDTHS)
    assert len(convs) == 18 + 2  # 18 3x3 convs and two 1x1 projection shortcuts
    for b, (ours, plain, ratio) in mbquant.bitops_table(convs, ALL_BITS, selection).items():
        assert plain == sum(c.macs for c in convs) * b * b
        if b % 2 == 0:
            assert ours == plain, b
        assert abs(ratio - 1.0) <= 0.02, (b, ratio)


def test_cifar_resnet20_partial_widths_are_the_derived_ones():
    assert mbquant.derive_partial_widths((16, 32, 64)) == mbquant.CIFAR_RESNET20_PARTIAL_WIDTHS
    assert (
        abs(
            mbquant.partial_fraction(
                mbquant.cifar_resnet_convs(mbquant.CIFAR_RESNET20_PARTIAL_WIDTHS)
            )
            - 0.5
        )
        < 0.01
    )


def test_resnet18_official_widths_reproduce_the_digests_cost():
    # Digest A2: BitOPs 0.991 / 0.994 / 0.996 of b*b at b = 3 / 5 / 7.
    table = mbquant.bitops_table(mbquant.resnet18_convs(mbquant.RESNET18_PARTIAL_WIDTHS))
    assert [round(table[b][2], 3) for b in (3, 5, 7)] == [0.991, 0.994, 0.996]


@pytest.mark.parametrize(
    "widths, partial_widths, image_size, stem_pool",
    [
        ((32, 64, 64), (), 8, False),  # the digits default
        ((6, 8, 6), (3,), 8, False),  # explicit partial widths
        (
            (4, 6, 6, 6, 6),
            (),
            28,
            True,
        ),  # stem pool, 14 -> 7 -> 3 (VALID pool) -> 3 (no pool below 4x4)
    ],
)
def test_multibranch_cnn_convs_match_the_model(widths, partial_widths, image_size, stem_pool):
    import flax.linen as nn

    from jaxquant.models.multibranch import MultiBranchCNN

    bits = (2, 3)
    model = MultiBranchCNN(
        num_classes=3,
        bits=bits,
        selection=mbquant.branch_selection(bits),
        widths=widths,
        partial_widths=partial_widths,
        stem_pool=stem_pool,
    )
    # what each MultiBranchConv was built with and what it output, recorded while tracing init
    seen = {}

    def record(call, args, kwargs, context):
        out = call(*args, **kwargs)
        if isinstance(context.module, MultiBranchConv) and context.method_name == "__call__":
            m = context.module
            seen[m.name] = (
                out.shape[1] * out.shape[2],
                tuple(m.kernel_size),
                m.partial_in,
                m.partial_out,
            )
        return out

    with nn.intercept_methods(record):
        params = jax.eval_shape(
            model.init, jax.random.key(0), jnp.zeros((1, image_size, image_size, 1)), 0
        )["params"]
    convs = mbquant.multibranch_cnn_convs(widths, partial_widths, image_size, stem_pool)
    assert [c.name for c in convs] == sorted(seen) == [f"conv{i}" for i in range(len(widths) - 1)]
    for c in convs:
        assert params[c.name]["kernel"].shape == (G, c.kernel, c.kernel, c.c_in, c.c_out), c.name
        assert seen[c.name] == (c.positions, (c.kernel, c.kernel), c.partial_in, c.partial_out), (
            c.name
        )


def test_multibranch_cnn_default_widths_cost_exactly_b_squared():
    convs = mbquant.multibranch_cnn_convs((32, 64, 64))
    assert mbquant.partial_fraction(convs) == 0.5
    for selection in ("amortised", "naive"):
        for b, (ours, plain, ratio) in mbquant.bitops_table(convs, ALL_BITS, selection).items():
            assert ours == plain and ratio == 1.0, (selection, b)
    with pytest.raises(ConfigError):
        mbquant.multibranch_cnn_convs((32, 64, 64), partial_widths=(65,))


def test_branch_positions_put_the_partial_last():
    assert mbquant.branch_positions(5) == {1: 0, 2: 1, 3: 2}
    assert mbquant.branch_positions(4, "naive") == {0: 0, 1: 1}


def test_the_printed_derivation(capsys):
    mbquant.main()
    printed = capsys.readouterr().out
    assert f"derived partial widths {mbquant.CIFAR_RESNET20_PARTIAL_WIDTHS}" in printed
    assert " 3       364,727,040       363,331,584  1.0038" in printed  # CIFAR ResNet-20, b = 3
    assert printed.count("ratio") == 6  # ResNet-20 twice, ResNet-18, ResNet-50, MobileNetV1 twice


# ----------------------------------------------------------------------------------------------
# MultiBranchConv.

C_IN, FEATURES, P_IN, P_OUT = 5, 6, 3, 4


def np_weight(w, lower, upper):
    t = np.clip((np.float32(w) - np.float32(lower)) / (np.float32(upper) - np.float32(lower)), 0, 1)
    return (2 * np.round(3 * t) / 3 - 1).astype(np.float32)


def np_act(x, lower, upper, b):
    n = 2.0**b - 1
    t = np.clip((np.float32(x) - np.float32(lower)) / (np.float32(upper) - np.float32(lower)), 0, 1)
    return (np.round(n * t) / n).astype(np.float32)


def lax_conv(x, w, strides):
    return np.asarray(
        jax.lax.conv_general_dilated(
            jnp.asarray(x),
            jnp.asarray(w),
            strides,
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
    )


def build(weight_slots="branch", selection="amortised", strides=(1, 1), bits=ALL_BITS, seed=0):
    sel = mbquant.branch_selection(bits, selection, weight_slots)
    layer = MultiBranchConv(
        FEATURES, sel, bits, partial_in=P_IN, partial_out=P_OUT, strides=strides
    )
    rng = np.random.default_rng(seed)
    x = jnp.asarray(np.maximum(rng.normal(size=(2, 6, 6, G, C_IN)), 0.0), jnp.float32)
    params = layer.init(jax.random.PRNGKey(seed), x, 0)["params"]
    # Distinct intervals per slot, so a wrong slot shows in the output.
    params = dict(params)
    params["weight_upper"] = jnp.asarray(rng.uniform(0.02, 0.08, G), jnp.float32)
    params["weight_lower"] = -jnp.asarray(rng.uniform(0.02, 0.08, G), jnp.float32)
    params["act_lower"] = jnp.asarray(rng.uniform(-0.2, 0.1, (len(bits), G + 1)), jnp.float32)
    params["act_upper"] = jnp.asarray(rng.uniform(0.8, 2.0, (len(bits), G + 1)), jnp.float32)
    return layer, {"params": params}, x


def reference(variables, x, b, index, weight_slots, selection, strides):
    """The b-bit output as a hand-built sum over the selected branches, each in its own slot."""
    p = variables["params"]
    kernel, wl, wu, al, au = (
        np.asarray(p[k])
        for k in ("kernel", "weight_lower", "weight_upper", "act_lower", "act_upper")
    )
    x = np.asarray(x)
    full, pb = TABLES[selection][b]
    order = sorted(full)
    n, h, w = x.shape[0], -(-x.shape[1] // strides[0]), -(-x.shape[2] // strides[1])
    out = np.zeros((n, h, w, G, FEATURES), np.float32)
    for g in order:
        slot = g if weight_slots == "branch" else order.index(g)
        out[..., g, :] = lax_conv(
            np_act(x[..., g, :], al[index, g], au[index, g], b),
            np_weight(kernel[g], wl[slot], wu[slot]),
            strides,
        )
    if pb is not None:
        slot = pb if weight_slots == "branch" else len(order)
        out[..., pb, :P_OUT] = lax_conv(
            np_act(x[..., pb, :P_IN], al[index, G], au[index, G], b),
            np_weight(kernel[pb][:, :, :P_IN, :P_OUT], wl[slot], wu[slot]),
            strides,
        )
    return out


@pytest.mark.parametrize(
    "weight_slots,selection,strides",
    [
        ("branch", "amortised", (1, 1)),
        ("position", "amortised", (2, 2)),
        ("branch", "naive", (1, 1)),
    ],
)
def test_output_is_the_sum_over_selected_branches(weight_slots, selection, strides):
    layer, variables, x = build(weight_slots, selection, strides)
    apply = jax.jit(layer.apply)
    for index, b in enumerate(ALL_BITS):
        got = np.asarray(apply(variables, x, index))
        assert_allclose(
            got,
            reference(variables, x, b, index, weight_slots, selection, strides),
            rtol=1e-5,
            atol=1e-5,
            err_msg=f"b={b}",
        )
        full, pb = TABLES[selection][b]
        for g in set(range(G)) - full - {pb}:
            assert not got[..., g, :].any(), (b, g)  # deselected branches are exactly zero


def test_vmap_over_precisions_equals_the_loop():
    layer, variables, x = build()
    stacked = jax.jit(jax.vmap(lambda p: layer.apply(variables, x, p)))(jnp.arange(len(ALL_BITS)))
    for index in range(len(ALL_BITS)):
        assert_allclose(stacked[index], layer.apply(variables, x, index), rtol=1e-6, atol=1e-6)


def test_deselected_branches_get_exactly_zero_gradient():
    layer, variables, x = build()
    cotangent = jnp.asarray(
        np.random.default_rng(1).normal(size=(2, 6, 6, G, FEATURES)), jnp.float32
    )

    def loss(params, p):
        return jnp.sum(layer.apply({"params": params}, x, p) * cotangent)

    grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(
        variables["params"], jnp.arange(len(ALL_BITS))
    )
    for index, b in enumerate(ALL_BITS):
        dk = np.asarray(grads["kernel"][index])
        full, pb = TABLES["amortised"][b]
        for g in range(G):
            if g in full:
                assert np.abs(dk[g]).sum() > 0, (b, g)
            elif g == pb:
                assert np.abs(dk[g][:, :, :P_IN, :P_OUT]).sum() > 0, (b, g)
                outside = dk[g].copy()
                outside[:, :, :P_IN, :P_OUT] = 0
                assert not outside.any(), (b, g)
            else:
                assert not dk[g].any(), (b, g)
        da_upper = np.asarray(grads["act_upper"][index])
        other_rows = np.delete(np.asarray(grads["act_upper"][index]), index, axis=0)
        assert (
            not other_rows.any() and da_upper[index].any()
        )  # only this precision's intervals learn


def test_one_trace_serves_every_precision():
    layer, variables, x = build()
    traces = []

    @jax.jit
    def forward(p):
        traces.append(1)
        return layer.apply(variables, x, p)

    outputs = [forward(jnp.int32(i)) for i in range(len(ALL_BITS))]
    assert len(traces) == 1
    assert len({float(jnp.sum(o)) for o in outputs}) == len(ALL_BITS)


def test_default_init_is_torchs_grouped_kaiming_and_three_sigma_intervals():
    sel = mbquant.branch_selection((2, 4))
    layer = MultiBranchConv(64, sel, (2, 4))
    x = jnp.asarray(
        np.maximum(np.random.default_rng(0).normal(size=(4, 8, 8, G, 64)), 0), jnp.float32
    )
    params = layer.init(jax.random.PRNGKey(0), x, 0)["params"]
    kernel = np.asarray(params["kernel"])
    assert kernel.shape == (G, 3, 3, 64, 64)
    assert_allclose(kernel.std(), np.sqrt(2.0 / (G * 64 * 9)), rtol=0.03)  # 0.0295, digest: 0.0294
    assert_allclose(params["weight_upper"], 3 * kernel.reshape(G, -1).std(axis=1), rtol=1e-5)
    assert_allclose(params["weight_lower"], -params["weight_upper"])
    assert params["act_lower"].shape == params["act_upper"].shape == (2, G + 1)
    assert_allclose(
        params["act_upper"][0, 0],
        3 * np.std(np.asarray(x)[..., 0, :], ddof=1) / np.sqrt(1 - 2 / np.pi),
        rtol=1e-4,
    )


def test_layer_rejects_mismatched_inputs():
    sel = mbquant.branch_selection((2, 4))
    with pytest.raises(ConfigError):
        MultiBranchConv(4, sel, (2, 4)).init(jax.random.PRNGKey(0), jnp.ones((1, 4, 4, 3, 2)), 0)
    with pytest.raises(ConfigError):
        MultiBranchConv(4, sel, (2, 4, 8)).init(jax.random.PRNGKey(0), jnp.ones((1, 4, 4, G, 2)), 0)
    with pytest.raises(ConfigError):
        MultiBranchConv(4, sel, (2, 4), partial_in=3).init(
            jax.random.PRNGKey(0), jnp.ones((1, 4, 4, G, 2)), 0
        )

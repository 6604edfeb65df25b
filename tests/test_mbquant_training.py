"""MBQuant's training pieces: the branch-skipping static path of `MultiBranchConv`, the
data-dependent interval init (`mbquant.initialize_intervals`), and the method's defaults
(distillation 'auto' -> 'largest')."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from jaxquant.configs.base import base_config
from jaxquant.data import load_dataset
from jaxquant.errors import ConfigError
from jaxquant.layers import INTERVAL_INIT, BranchSelection, MultiBranchConv
from jaxquant.methods import build_trainer, mbquant, resolve_distillation, resolve_precision_mode
from jaxquant.training import fit

ALL_BITS = tuple(range(2, 9))
G = mbquant.NUM_BRANCHES
HALF_NORMAL = 1.0 / np.sqrt(1.0 - 2.0 / np.pi)


def _conv(
    bits=ALL_BITS, weight_slots="branch", std="chunk", skip=True, features=6, p_in=3, p_out=4
):
    sel = mbquant.branch_selection(bits, "amortised", weight_slots, std)
    return MultiBranchConv(
        features, sel, bits, partial_in=p_in, partial_out=p_out, skip_deselected=skip
    )


def _relu_input(seed=0, shape=(3, 5, 5, G, 5)):
    return jax.nn.relu(jax.random.normal(jax.random.key(seed), shape))


@pytest.mark.parametrize("weight_slots,grad_bits", [("branch", (3, 6)), ("position", (5,))])
def test_static_precision_computes_only_selected_branches_and_equals_masked_path(
    weight_slots, grad_bits
):
    """Values at every b, gradients at ``grad_bits`` (a partial from each parent kind; compiles
    are the cost of this test)."""
    x = _relu_input()
    skip, masked = _conv(weight_slots=weight_slots), _conv(weight_slots=weight_slots, skip=False)
    variables = masked.init(jax.random.key(1), x, len(ALL_BITS) - 1)
    for p, b in enumerate(ALL_BITS):
        y_skip, y_masked = skip.apply(variables, x, p), masked.apply(variables, x, p)
        assert_allclose(y_skip, y_masked, atol=1e-5, err_msg=f"b={b}")
        sel = skip.selection
        for g in range(G):  # deselected slots are exact zeros
            if not sel.full[p][g] and sel.partial[p] != g:
                assert not np.any(np.asarray(y_skip[..., g, :]))
        if b not in grad_bits:
            continue

        def grad(model):
            return jax.grad(lambda v: jnp.sum(jnp.sin(model.apply({"params": v}, x, p))))(
                variables["params"]
            )

        g_skip, g_masked = grad(skip), grad(masked)
        for (path, a), (_, m) in zip(
            jax.tree_util.tree_leaves_with_path(g_skip),
            jax.tree_util.tree_leaves_with_path(g_masked),
        ):
            assert_allclose(
                a, m, rtol=1e-5, atol=1e-4, err_msg=f"b={b} {jax.tree_util.keystr(path)}"
            )


def test_static_precision_runs_fewer_convs():
    """The jaxpr of the static 2-bit network holds one conv, the 8-bit one four, 3-bit two."""
    x = _relu_input()
    model = _conv()
    variables = model.init(jax.random.key(1), x, len(ALL_BITS) - 1)

    def count_convs(p):
        jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x, p))(variables)
        return str(jaxpr).count("conv_general_dilated")

    assert [count_convs(ALL_BITS.index(b)) for b in (2, 3, 4, 8)] == [1, 2, 2, 4]


def _fresh_intervals(model, variables, x, p):
    _, updates = model.apply(variables, x, p, mutable=[INTERVAL_INIT])
    return updates[INTERVAL_INIT]


@pytest.mark.parametrize("b", [2, 5, 8])
def test_interval_init_activation_slots_follow_the_formula(b):
    """u = 3 std(x_chunk) / sqrt(1 - 2/pi) (unbiased std), l = min(x_chunk), only for the slots
    bit-width b uses; the partial's slot G reads the first p_in channels of its parent."""
    x = _relu_input(seed=2) + 0.05
    model = _conv()
    variables = model.init(jax.random.key(1), x, 0)
    p = ALL_BITS.index(b)
    fresh = _fresh_intervals(model, variables, x, p)
    old_lower, old_upper = variables["params"]["act_lower"], variables["params"]["act_upper"]
    xn = np.asarray(x)
    sel = model.selection
    for slot in range(G + 1):
        if slot < G:
            used, chunk = sel.full[p][slot], xn[..., slot, :]
        else:
            used, chunk = sel.partial[p] >= 0, xn[..., max(sel.partial[p], 0), :3]
        if used:
            assert_allclose(
                fresh["act_upper"][p, slot], 3 * chunk.std(ddof=1) * HALF_NORMAL, rtol=1e-5
            )
            assert_allclose(fresh["act_lower"][p, slot], chunk.min(), rtol=1e-6)
        else:
            assert fresh["act_upper"][p, slot] == old_upper[p, slot]
            assert fresh["act_lower"][p, slot] == old_lower[p, slot]
    # other precisions' rows are untouched
    others = [i for i in range(len(ALL_BITS)) if i != p]
    assert_array_equal(np.asarray(fresh["act_upper"])[others], np.asarray(old_upper)[others])


def test_interval_init_weight_slots_chunk_and_filter():
    x = _relu_input()
    p5 = ALL_BITS.index(5)  # amortised b=5: full {1, 2}, partial slice of branch 3
    # clean, per-branch slots: every used full branch gets 3 std of its own kernel; the partial's
    # slot (its parent's, branch 3) is left to the branch
    model = _conv()
    variables = model.init(jax.random.key(1), x, 0)
    kernel = np.asarray(variables["params"]["kernel"])
    before = np.asarray(variables["params"]["weight_upper"])
    fresh = _fresh_intervals(model, variables, x, p5)
    want = before.copy()
    want[1], want[2] = 3 * kernel[1].std(), 3 * kernel[2].std()
    assert_allclose(fresh["weight_upper"], want, rtol=1e-5)
    assert_allclose(fresh["weight_lower"], -want, rtol=1e-5)
    # clean, position slots: slot 0 <- branch 1, slot 1 <- branch 2, slot 2 <- the partial slice
    model = _conv(weight_slots="position")
    fresh = _fresh_intervals(model, variables, x, p5)
    assert_allclose(
        fresh["weight_upper"][:3],
        [3 * kernel[1].std(), 3 * kernel[2].std(), 3 * kernel[3, :, :, :3, :4].std()],
        rtol=1e-5,
    )
    # the official code: slot s <- output filter s of the (G*C_out, C_in, kh, kw) weight; the
    # partial's slot <- the slice
    model = _conv(weight_slots="position", std="filter")
    fresh = _fresh_intervals(model, variables, x, p5)
    torch_rows = np.moveaxis(kernel, -1, 1).reshape(G * 6, -1)  # branch-major output filters
    assert_allclose(
        fresh["weight_upper"][:3],
        [3 * torch_rows[0].std(), 3 * torch_rows[1].std(), 3 * kernel[3, :, :, :3, :4].std()],
        rtol=1e-5,
    )


def test_weight_interval_std_is_checked():
    with pytest.raises(ConfigError, match="weight_interval_std"):
        BranchSelection(
            full=((True, False),),
            partial=(-1,),
            full_weight_slot=((0, 1),),
            partial_weight_slot=(0,),
            weight_interval_std="median",
        )


def _cnn_config(**overrides):
    c = base_config()
    c.method, c.model, c.widths, c.bits, c.epochs, c.batch_size = (
        "mbquant",
        "small_cnn",
        (8, 8, 8),
        (2, 3, 4, 8),
        1,
        64,
    )
    for k, v in overrides.items():
        setattr(c, k, v)
    return c


def test_initialize_intervals_uses_each_bit_widths_own_batch_in_ascending_order():
    """After the init, the first conv's activation slots of bit-width b are the formula on the
    stem output of batch #rank(b) (the stem is FP, so its output does not depend on b), and the
    BatchNorm statistics of every bit-width moved."""
    dataset = load_dataset("digits")
    config = _cnn_config(bits=(8, 2, 4))  # not sorted: the init still goes 2, 4, 8
    trainer = build_trainer(config, dataset, 10)
    state = trainer.init(jax.random.key(0), jnp.asarray(dataset.train_images[:64]))
    batches = [dataset.train_images[i * 64 : (i + 1) * 64] for i in range(3)]
    new = mbquant.initialize_intervals(trainer, state, batches, jax.random.key(3))
    params = new.params
    for rank, b in enumerate((2, 4, 8)):
        p = config.bits.index(b)
        x = trainer.preprocess(
            jnp.asarray(batches[rank]), True, jax.random.key(0)
        )  # no augmentation: key unused
        _, inter = trainer.model.apply(
            {"params": params, "batch_stats": new.batch_stats},
            x,
            p,
            train=True,
            mutable=["batch_stats"],  # batch statistics, as in the init pass
            capture_intermediates=lambda m, _: m.name == "stem_bn",
        )
        stem = np.asarray(jax.nn.relu(inter["intermediates"]["stem_bn"]["__call__"][0]))
        sel = trainer.model.selection
        for g in range(G):
            if sel.full[p][g]:
                assert_allclose(
                    params["conv0"]["act_upper"][p, g],
                    3 * stem.std(ddof=1) * HALF_NORMAL,
                    rtol=2e-3,
                )
    moved = jax.tree_util.tree_map(
        lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
        state.batch_stats["stem_bn"],
        new.batch_stats["stem_bn"],
    )
    assert all(jax.tree_util.tree_leaves(moved))
    # only interval parameters changed
    flat_old = flax.traverse_util.flatten_dict(state.params)
    flat_new = flax.traverse_util.flatten_dict(params)
    changed = {k[-1] for k in flat_old if not np.array_equal(flat_old[k], flat_new[k])}
    assert changed and changed <= {"act_lower", "act_upper", "weight_lower", "weight_upper"}


def test_mbquant_defaults_distillation_largest_and_interval_init(tmp_path):
    config = _cnn_config()
    assert config.distillation == "auto" and resolve_distillation(config) == "largest"
    dataset = load_dataset("digits")
    trainer = build_trainer(config, dataset, 10)
    assert (
        trainer.distillation == "largest"
        and trainer.init_from_batches is mbquant.initialize_intervals
    )
    assert config.precision_mode == "auto" and trainer.precision_mode == "unroll"
    assert resolve_precision_mode(_cnn_config(method="anyprecision")) == "unroll"  # on CPU
    assert resolve_precision_mode(_cnn_config(method="anyprecision"), backend="gpu") == "vmap"
    assert resolve_precision_mode(_cnn_config(), backend="tpu") == "unroll"  # mbquant's own
    assert resolve_precision_mode(_cnn_config(precision_mode="vmap")) == "vmap"
    assert resolve_distillation(_cnn_config(method="anyprecision")) == "recursive"
    assert resolve_distillation(_cnn_config(distillation="none")) == "none"
    assert build_trainer(_cnn_config(interval_init="none"), dataset, 10).init_from_batches is None
    with pytest.raises(ConfigError, match="interval_init"):
        build_trainer(_cnn_config(interval_init="later"), dataset, 10)
    # a fresh fit runs the init; the run still trains to finite losses at every bit-width
    state = fit(
        trainer, dataset, workdir=str(tmp_path), seed=0, epochs=1, batch_size=64, progress=False
    )
    assert np.isfinite(np.asarray(jax.tree_util.tree_leaves(state.params)[0])).all()

"""Bin Regularization: the regulariser against a plain NumPy loop, its traced bit-width and its
gradient; the schedules and the training term; the bins of every quantizer against its output;
the bin statistics, the `jaxquant bins` command and the plot on tiny digits runs."""

import functools
import importlib.util
import json
import pathlib
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_user_error

from jaxquant import cli
from jaxquant import quantizers as q
from jaxquant import regularizers as r
from jaxquant.config import load_config
from jaxquant.configs.base import base_config
from jaxquant.data import NORMALIZATION, NUM_CLASSES, ArrayDataset
from jaxquant.errors import ConfigError
from jaxquant.methods import binreg, build_trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# The regulariser against a plain loop.


def numpy_bin_regularizer(values, bins, levels):
    """Sum over non-empty bins of (mean - level)^2 + population variance (only the first term for
    a one-element bin), by a loop over the bins."""
    total = 0.0
    for b in np.unique(bins):
        members = values[bins == b]
        total += (members.mean() - levels[b]) ** 2
        if len(members) >= 2:
            total += members.var()
    return total


def numpy_lsq_reference(w, step, bits, units, per_channel):
    """Bins and levels of LSQ written out: codes round(clip(w/s)), one grid per channel."""
    qn, qp = 2 ** (bits - 1), 2 ** (bits - 1) - 1
    steps = np.broadcast_to(step, w.shape)
    codes = np.round(np.clip(w / steps, -qn, qp)).astype(int)
    channel = (
        np.broadcast_to(np.arange(w.shape[-1]), w.shape) if per_channel else np.zeros(w.shape, int)
    )
    bins = (channel * 1000 + codes).ravel()
    level_of = {
        c * 1000 + k: (k * (step[c] if per_channel else step) if units == "weight" else k)
        for c in range(w.shape[-1])
        for k in range(-qn, qp + 1)
    }
    values = (w / steps if units == "code" else w).ravel()
    return numpy_bin_regularizer(values, bins, level_of), codes


def special_tensor(bits, step, rng, per_channel, channels=4):
    """Weights in bins 0 and 1 (uniform in [-0.4, 1.4] steps), plus one weight alone in the lowest
    bin of the grid (of each channel's grid when per channel): empty bins in between and
    one-element bins."""
    w = rng.uniform(-0.4, 1.4, size=(3, 3, 2, channels)) * step
    lowest = -(2 ** (bits - 1)) * np.broadcast_to(step, (channels,))
    if per_channel:
        w[0, 0, 0] = lowest
    else:
        w[0, 0, 0, 0] = lowest[0]
    return w.astype(np.float32)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("units", ["weight", "code"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_lsq_bin_regularizer_matches_a_numpy_loop(bits, units, per_channel):
    rng = np.random.default_rng(bits)
    step = rng.uniform(0.02, 0.08, 4).astype(np.float32) if per_channel else np.float32(0.05)
    special = special_tensor(bits, step, rng, per_channel)
    for w in (special, (rng.normal(size=(3, 3, 2, 4)) * 0.1).astype(np.float32)):
        expected, _ = numpy_lsq_reference(
            w.astype(np.float64), np.asarray(step, np.float64), bits, units, per_channel
        )
        got = r.lsq_bin_regularizer(
            jnp.asarray(w), jnp.asarray(step), bits, max_bits=4, units=units
        )
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-9)
    # The special tensor really has a one-element bin and an empty bin (in channel 0's grid).
    _, codes = numpy_lsq_reference(
        special.astype(np.float64), np.asarray(step, np.float64), bits, units, per_channel
    )
    grid = codes[..., 0] if per_channel else codes
    counts = np.bincount((grid + 2 ** (bits - 1)).ravel(), minlength=2**bits).tolist()
    assert 1 in counts and 0 in counts


def test_bins_on_their_levels_cost_nothing_and_full_precision_is_zero():
    step = 0.05
    w = jnp.asarray(np.array([-2, -1, 0, 0, 1, 1, 1], np.float32) * step)
    assert float(r.lsq_bin_regularizer(w, step, 2, max_bits=2)) == pytest.approx(0.0, abs=1e-12)
    w = jnp.asarray(np.random.default_rng(0).normal(size=50).astype(np.float32) * 0.1)
    assert float(r.lsq_bin_regularizer(w, step, 32, max_bits=4)) == 0.0
    # The identity of the module docstring: (mean - l)^2 + var = mean (v - l)^2 per bin.
    values, bins, levels, n = r.lsq_bins(w, step, 3, max_bits=3)
    per_bin = [
        np.mean((np.asarray(values)[np.asarray(bins) == b] - np.asarray(levels)[b]) ** 2)
        for b in np.unique(np.asarray(bins))
    ]
    np.testing.assert_allclose(r.bin_regularizer(values, bins, levels, n), sum(per_bin), rtol=1e-5)


def test_traced_bit_width_compiles_once_for_every_bit_width():
    traces = []
    w = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3, 4, 8)).astype(np.float32) * 0.1)

    @jax.jit
    def br(bits):
        traces.append(bits)
        return r.lsq_bin_regularizer(w, 0.04, bits, max_bits=8)

    for b in (2, 3, 4, 8, 32):
        assert float(br(jnp.int32(b))) == pytest.approx(
            float(r.lsq_bin_regularizer(w, 0.04, b, max_bits=8)), rel=1e-6
        )
    assert len(traces) == 1


@pytest.mark.parametrize("units", ["weight", "code"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_gradient_matches_central_differences_in_float64(units, per_channel):
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        w = jnp.asarray(rng.normal(size=(3, 3, 2, 3)) * 0.1)
        step = jnp.asarray(rng.uniform(0.04, 0.06, 3)) if per_channel else jnp.asarray(0.05)

        @functools.partial(jax.jit, static_argnames="stop")
        def f(w, s, stop=False):
            return r.lsq_bin_regularizer(w, s, 3, max_bits=4, units=units, stop_step_gradient=stop)

        gw, gs = jax.jit(jax.grad(f, argnums=(0, 1)))(w, step)
        eps = 1e-6
        for _ in range(3):  # random directions in (w, s): <grad, d> against a central difference
            dw, ds = jnp.asarray(rng.normal(size=w.shape)), jnp.asarray(rng.normal(size=step.shape))
            numeric = (f(w + eps * dw, step + eps * ds) - f(w - eps * dw, step - eps * ds)) / (
                2 * eps
            )
            analytic = jnp.sum(gw * dw) + jnp.sum(gs * ds)
            np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)
        assert np.all(np.asarray(gs) != 0)
        # stop_step_gradient: nothing reaches the step, the weights' gradient is unchanged.
        gw_stop, gs_stop = jax.jit(jax.grad(lambda w, s: f(w, s, True), argnums=(0, 1)))(w, step)
        assert np.all(np.asarray(gs_stop) == 0)
        np.testing.assert_allclose(gw_stop, gw, rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# Every quantizer's bins map to exactly its output.


def test_lsq_vertical_and_dorefa_bins_sit_on_the_quantizer_output():
    rng = np.random.default_rng(3)
    w = jnp.asarray(rng.normal(size=(3, 3, 4, 6)).astype(np.float32) * 0.1)
    for bits in (2, 5):
        values, bins, levels, _ = r.lsq_bins(w, 0.03, bits, max_bits=8)
        np.testing.assert_allclose(
            levels[bins], q.lsq_quantize(w, 0.03, bits, signed=True), atol=1e-7
        )
        assert np.array_equal(values, w)
        steps = jnp.asarray(rng.uniform(0.02, 0.04, 6).astype(np.float32))
        values, bins, levels, n = r.lsq_bins(w, steps, bits, max_bits=8, units="code")
        assert n == 6 * 256
        np.testing.assert_allclose(
            levels[bins] * steps, q.lsq_quantize(w, steps, bits, signed=True), atol=1e-7
        )
        for cascade in ("floor", "round_clip"):
            values, bins, levels, _ = r.vertical_bins(
                w, 0.004, bits, source_bits=8, cascade=cascade
            )
            np.testing.assert_allclose(
                levels[bins], q.vertical_weight(w, 0.004, bits, cascade=cascade), atol=1e-7
            )
        values, bins, levels, _ = r.dorefa_bins(w, bits, max_bits=8)
        np.testing.assert_allclose(levels[bins], q.dorefa_weight(w, bits), atol=1e-6)
        np.testing.assert_allclose(values, q.dorefa_weight(w, 32), atol=1e-6)  # the FP form


def test_bin_regularization_walks_lsq_layers_per_precision():
    rng = np.random.default_rng(4)
    kernel = lambda *shape: (rng.normal(size=shape) * 0.1).astype(np.float32)  # noqa: E731
    params = {
        "stem": {"kernel": kernel(3, 3, 1, 8)},  # full precision: not a quantized layer
        "conv0": {
            "kernel": kernel(3, 3, 8, 8),
            "weight_step": np.asarray([0.08, 0.02, 0.01], np.float32),
            "act_step": np.ones(3, np.float32),
        },
        "block": {
            "conv1": {
                "kernel": kernel(3, 3, 8, 8),
                "weight_step": np.asarray([0.09, 0.03, 0.01], np.float32),
            }
        },
        "classifier": {"kernel": kernel(8, 10), "weight_step": np.asarray([0.05], np.float32)},
    }
    bits = (2, 4, 32)
    assert set(r.lsq_layers(params, bits)) == {("conv0",), ("block", "conv1"), ("classifier",)}
    layers = {
        ("conv0",): r.LayerQuantizer(bits),
        ("block", "conv1"): r.LayerQuantizer(bits),
        ("classifier",): r.LayerQuantizer((8,)),
    }  # a last layer at a fixed 8 bits

    def numpy_br(path, index, layer_bits):
        layer = r.get_path(params, path)
        if layer_bits >= 32:
            return 0.0
        return numpy_lsq_reference(
            layer["kernel"].astype(np.float64),
            float(layer["weight_step"][index]),
            layer_bits,
            "weight",
            False,
        )[0]

    classifier = numpy_br(("classifier",), 0, 8)
    expected = [
        numpy_br(("conv0",), p, b) + numpy_br(("block", "conv1"), p, b) + classifier
        for p, b in enumerate(bits)
    ]

    @jax.jit
    def all_precisions(params):
        per = jax.vmap(lambda p: r.bin_regularization(params, p, layers=layers))(jnp.arange(3))
        mean = jax.vmap(lambda p: r.bin_regularization(params, p, layers=layers, reduction="mean"))(
            jnp.arange(3)
        )
        default = r.bin_regularization(params, 0, bits)  # every LSQ layer at the model's bits
        return per, mean, default

    per, mean, default = all_precisions(params)
    np.testing.assert_allclose(per, expected, rtol=1e-5)
    np.testing.assert_allclose(mean, np.asarray(expected) / 3, rtol=1e-5)
    assert expected[2] == pytest.approx(classifier)  # at 32 bits only the fixed 8-bit layer counts
    default_expected = expected[0] - classifier + numpy_br(("classifier",), 0, 2)
    np.testing.assert_allclose(default, default_expected, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Schedules and the training term.


def test_schedules():
    weight = lambda schedule, step, **kw: float(
        binreg.schedule_weight(
            step,
            lam=0.5,
            schedule=schedule,  # noqa: E731
            steps_per_epoch=10,
            **kw,
        )
    )
    assert [weight("joint", s) for s in (0, 5, 99)] == [0.5, 0.5, 0.5]
    assert [weight("two_stage", s, start_epochs=3) for s in (0, 29, 30, 89)] == [0.0, 0.0, 0.5, 0.5]
    assert [weight("alternating", s, alternate_epochs=1) for s in (0, 9, 10, 19, 20, 35)] == [
        0,
        0,
        0.5,
        0.5,
        0,
        0.5,
    ]
    assert [weight("alternating", s, alternate_epochs=0.1) for s in (0, 1, 2, 3)] == [
        0,
        0.5,
        0,
        0.5,
    ]
    config = base_config()
    config.method, config.epochs = "binreg", 90
    assert binreg.resolve_lambda(config) == 0.5 and binreg.resolve_start_epochs(config) == 30.0
    config.method = "lsq"
    assert binreg.resolve_lambda(config) == 0.0


def tiny_dataset(shape=(8, 8, 1), n=8):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (n,) + shape).astype(np.float32)
    labels = rng.integers(0, 10, n).astype(np.int32)
    mean, std = NORMALIZATION["digits"]
    return ArrayDataset("digits", images, labels, images, labels, NUM_CLASSES["digits"], mean, std)


def tiny_config(method="binreg", **overrides):
    config = base_config()
    config.method, config.bits, config.widths, config.epochs = method, (2, 4), (4, 8), 3
    config.distillation = "none"
    for key, value in overrides.items():  # binreg__schedule=... sets config.binreg.schedule
        section, _, leaf = key.partition("__")
        if leaf:
            config[section][leaf] = value
        else:
            config[key] = value
    return config


def test_train_step_adds_lambda_times_br_and_reports_it():
    dataset = tiny_dataset()
    images, labels = jnp.asarray(dataset.train_images), jnp.asarray(dataset.train_labels)
    trainer = build_trainer(
        tiny_config(binreg__schedule="two_stage", binreg__start_epochs=1.0),
        dataset,
        steps_per_epoch=2,
    )
    state = jax.jit(trainer.init)(jax.random.key(0), images)
    step = jax.jit(trainer.train_step)
    _, during_ce = step(state, images, labels, jax.random.key(1))  # step 0 < 2: CE only
    _, during_br = step(
        state.replace(step=jnp.asarray(2, jnp.int32)), images, labels, jax.random.key(1)
    )
    assert (
        float(during_ce["regularizer_weight"]) == 0.0
        and float(during_br["regularizer_weight"]) == 0.5
    )
    np.testing.assert_allclose(
        during_ce["loss"], np.sum(during_ce["loss_per_precision"]), rtol=1e-6
    )
    layers = binreg.model_layers(trainer.model, images[:1])
    br = [float(r.bin_regularization(state.params, p, layers=layers)) for p in range(2)]
    assert min(br) > 0
    np.testing.assert_allclose(during_br["regularizer_per_precision"], br, rtol=1e-5)
    np.testing.assert_allclose(
        during_br["loss"], np.sum(during_br["loss_per_precision"]) + 0.5 * sum(br), rtol=1e-5
    )
    np.testing.assert_allclose(
        during_br["loss_per_precision"], during_ce["loss_per_precision"], rtol=1e-6
    )


@pytest.mark.parametrize("method", ["vertical", "anyprecision"])
def test_binreg_lambda_applies_to_multi_precision_methods(method):
    dataset = tiny_dataset()
    images = jnp.asarray(dataset.train_images)
    trainer = build_trainer(
        tiny_config(method=method, bits=(2, 4, 32), binreg__lambda_=0.5, binreg__schedule="joint"),
        dataset,
        steps_per_epoch=2,
    )
    assert trainer.regularizer is not None
    state = trainer.init(jax.random.key(0), images)
    reg = trainer.regularization(state.params, state.step)
    values = np.asarray(reg["regularizer_per_precision"])
    assert (
        values.shape == (3,) and np.all(values[:2] > 0) and values[2] == 0.0
    )  # FP contributes nothing
    layers = binreg.model_layers(trainer.model, images[:1])
    assert {layer.weight.name for layer in layers.values()} == {
        "vertical" if method == "vertical" else "dorefa"
    }
    assert (
        build_trainer(tiny_config(method=method), dataset, steps_per_epoch=2).regularizer is None
    )  # default off


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(method="mbquant", binreg__lambda_=0.5), "does not apply to method 'mbquant'"),
        (dict(binreg__schedule="cyclic"), "unknown binreg.schedule"),
        (dict(binreg__units="bits"), "unknown binreg.units"),
        (dict(binreg__layer_reduction="max"), "unknown binreg.layer_reduction"),
        (dict(binreg__start_epochs=3.0), "leaves no epoch of BR"),
        (
            dict(binreg__schedule="alternating", binreg__alternate_epochs=0.0),
            "positive block length",
        ),
        (
            dict(binreg__schedule="alternating_steps_br", binreg__alternate_epochs=-1.0),
            "positive block length",
        ),
        (dict(binreg__lambda_=-0.5), "use a weight >= 0"),
        (dict(bits=(32,)), "found no quantized weights"),
    ],
)
def test_configs_br_cannot_run_are_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build_trainer(tiny_config(**overrides), tiny_dataset(), steps_per_epoch=2)


def test_alternating_steps_br_phases_switch_at_the_block_boundary():
    """Blocks of round(1.5 * 2) = 3 steps, step sizes by CE first, then the weights by BR."""
    config = tiny_config(
        binreg__schedule="alternating_steps_br", binreg__alternate_epochs=1.5, binreg__lambda_=0.5
    )
    task_weight, trainable = binreg.make_phases(config, steps_per_epoch=2)
    steps = range(9)
    br = [False, False, False, True, True, True, False, False, False]
    assert [float(task_weight(t)) for t in steps] == [0.0 if b else 1.0 for b in br]
    assert [bool(trainable(t)["model"]) for t in steps] == br
    assert [bool(trainable(t)["quantizer"]) for t in steps] == [not b for b in br]
    weight = functools.partial(
        binreg.schedule_weight,
        lam=0.5,
        schedule="alternating_steps_br",
        steps_per_epoch=2,
        alternate_epochs=1.5,
    )
    assert [float(weight(t)) for t in steps] == [0.5 if b else 0.0 for b in br]
    assert "alternate the step sizes by CE and the weights by BR" in binreg.describe(config)
    # The other schedules, and BR off (the lsq baseline), keep the one-phase trainer.
    assert binreg.make_phases(tiny_config(binreg__schedule="alternating"), 2) == (None, None)
    assert binreg.make_phases(
        tiny_config(method="lsq", binreg__schedule="alternating_steps_br"), 2
    ) == (None, None)


def _groups(params):
    """``(weights, step sizes)``: the leaves of the optimizer's model and quantizer groups."""
    from jaxquant.layers import is_quantizer_param

    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    weights, steps = {}, {}
    for path, leaf in flat:
        name = jax.tree_util.keystr(path)
        (steps if is_quantizer_param(path[-1].key) else weights)[name] = np.asarray(leaf)
    return weights, steps


def _float_leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]


def test_alternating_steps_br_moves_the_steps_by_ce_then_the_weights_by_br_alone():
    """Two steps per block (steps_per_epoch 2, blocks of 1 epoch): steps 0-1 move only the step
    sizes, steps 2-3 only the weights, by -lr * grad(lambda * BR) with momentum over BR's
    gradients alone, and step 4 is back to the step sizes."""
    lr, lam, momentum = 0.1, 0.5, 0.9
    config = tiny_config(
        binreg__schedule="alternating_steps_br",
        binreg__alternate_epochs=1.0,
        binreg__lambda_=lam,
        optimizer__optimizer="sgd",
        optimizer__learning_rate=lr,
        optimizer__momentum=momentum,
        optimizer__weight_decay=0.0,
        optimizer__schedule="constant",
        optimizer__quantizer_schedule="constant",
    )
    dataset = tiny_dataset()
    images, labels = jnp.asarray(dataset.train_images), jnp.asarray(dataset.train_labels)
    trainer = build_trainer(config, dataset, steps_per_epoch=2)
    step = jax.jit(trainer.train_step)
    states, metrics = [jax.jit(trainer.init)(jax.random.key(0), images)], []
    for _ in range(5):
        state, m = step(states[-1], images, labels, jax.random.key(1))
        states.append(state)
        metrics.append(m)
    weights, steps = zip(*(_groups(s.params) for s in states))

    def br_gradient(params):  # of lambda * sum_p BR, on the weights
        grad = jax.grad(
            lambda p: lam * sum(trainer.regularizer(p, i) for i in range(len(trainer.bits)))
        )(params)
        return _groups(grad)[0]

    def same(a, b):
        return all(np.array_equal(a[k], b[k]) for k in a)

    def all_moved(a, b):
        return all(not np.array_equal(a[k], b[k]) for k in a)

    # Step-size phase (steps 0, 1): CE alone; the weights (BatchNorm included) do not move.
    for t in (0, 1):
        assert same(weights[t + 1], weights[0]) and all_moved(steps[t + 1], steps[t])
        assert float(metrics[t]["regularizer_weight"]) == 0.0
        np.testing.assert_allclose(
            metrics[t]["loss"], np.sum(metrics[t]["loss_per_precision"]), rtol=1e-6
        )
    # BR phase (steps 2, 3): BR alone; the step sizes do not move, the weights follow -grad(BR)
    # with SGD momentum, whose trace holds no CE gradient from the step-size phase.
    g2, g3 = br_gradient(states[2].params), br_gradient(states[3].params)
    for t, expected in ((2, g2), (3, {k: g3[k] + momentum * g2[k] for k in g3})):
        assert same(steps[t + 1], steps[t])
        assert float(metrics[t]["regularizer_weight"]) == lam
        np.testing.assert_allclose(
            metrics[t]["loss"], lam * np.sum(metrics[t]["regularizer_per_precision"]), rtol=1e-6
        )
        for k in weights[t]:  # to float32 rounding of the weights (BR moves them by ~1e-4)
            ulp = np.spacing(np.max(np.abs(weights[t][k])))
            np.testing.assert_allclose(
                weights[t + 1][k] - weights[t][k],
                -lr * expected[k],
                rtol=1e-4,
                atol=4 * ulp,
                err_msg=k,
            )
    kernels = [k for k in g2 if "kernel" in k and np.any(g2[k] != 0)]
    assert kernels and all_moved({k: weights[3][k] for k in kernels}, weights[2])
    batch_norm = [k for k in g2 if "scale" in k or "bias" in k]
    assert batch_norm and all(not np.any(g2[k]) for k in batch_norm)  # BR: no gradient to BN
    # Back to the step sizes (step 4), whose Adam moments did not see BR's step gradient.
    assert same(weights[5], weights[4]) and all_moved(steps[5], steps[4])
    quantizer_state = [_float_leaves(s.opt_state.inner_states["quantizer"]) for s in states]
    assert all(np.array_equal(a, b) for a, b in zip(quantizer_state[2], quantizer_state[4]))
    assert not all(np.array_equal(a, b) for a, b in zip(quantizer_state[1], quantizer_state[2]))


def test_first_and_last_layers_at_fixed_bits_are_regularised_at_their_bits():
    dataset = tiny_dataset()
    trainer = build_trainer(tiny_config(first_last_bits=8), dataset, steps_per_epoch=2)
    layers = binreg.model_layers(trainer.model, jnp.asarray(dataset.train_images[:1]))
    assert layers[("stem",)].bits == (8,) and layers[("classifier",)].bits == (8,)
    assert layers[("conv0",)].bits == (2, 4)


# ----------------------------------------------------------------------------------------------
# Measurements, the CLI and the plot on tiny digits runs.


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 1-epoch digits LSQ + BR run (joint, so BR acts in the one epoch), and a copy of it
    standing in for a second run to compare with."""
    root = tmp_path_factory.mktemp("binreg")
    assert (
        cli.main(
            [
                "train",
                "--workdir",
                str(root / "binreg"),
                "--config.method=binreg",
                "--config.bits=2",
                "--config.binreg.schedule=joint",
                "--config.epochs=1",
                "--config.widths=(8, 8)",
                "--config.batch_size=128",
                "--config.distillation=none",
                "--no-progress",
            ]
        )
        == 0
    )
    shutil.copytree(root / "binreg", root / "lsq")
    return root


def test_bins_command_prints_writes_json_and_plots(runs, capsys):
    workdir = runs / "binreg"
    png = runs / "bins.png"
    assert (
        cli.main(
            [
                "bins",
                "--workdir",
                str(workdir),
                "--layer",
                "conv0",
                "--plot",
                str(png),
                "--compare",
                str(runs / "lsq"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| conv0 | 2 |" in out and "mean offset" in out
    payload = json.loads((workdir / "bins.json").read_text())
    stats = payload["bits"]["2"]["conv0"]
    # MSE and bins by hand from the checkpoint.
    from jaxquant.runs import load_run

    _, _, _, state, _ = load_run(workdir)
    kernel, step = state.params["conv0"]["kernel"], state.params["conv0"]["weight_step"][0]
    w_hat = q.lsq_quantize(kernel, step, 2, signed=True)
    assert stats["mse"] == pytest.approx(float(jnp.mean((kernel - w_hat) ** 2)), rel=1e-5)
    assert stats["mse_code"] == pytest.approx(stats["mse"] / float(step) ** 2, rel=1e-4)
    assert sum(b["count"] for b in stats["bins"]) == stats["weights"] == kernel.size
    codes = np.asarray(q.lsq_codes(kernel, step, 2, signed=True)).ravel()
    x = np.asarray(kernel).ravel() / float(step)
    for b in stats["bins"]:
        members = x[codes == b["level"]]
        assert b["count"] == len(members)
        assert b["mean_offset"] == pytest.approx(members.mean() - b["level"], abs=1e-5)
        assert b["variance"] == pytest.approx(members.var(), abs=1e-5)
    assert png.stat().st_size > 10_000


def test_bin_report_totals_and_format(runs):
    from jaxquant.runs import load_run

    _, dataset, trainer, state, _ = load_run(runs / "lsq")
    layers = binreg.model_layers(trainer.model, jnp.asarray(dataset.train_images[:1]))
    report = binreg.bin_report(state.params, layers, 0)
    assert set(report) == {"conv0", "total"}
    assert report["total"]["mse"] == pytest.approx(report["conv0"]["mse"])
    assert "| total |" in binreg.format_report(report)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--bits", "4"], "pass --bits one of [2]"),
        (["--layer", "conv9"], "no quantized layer 'conv9'"),
    ],
)
def test_bins_command_user_errors(runs, capsys, argv, match):
    code = cli.main(["bins", "--workdir", str(runs / "binreg")] + argv)
    assert_user_error(code, capsys.readouterr().err, match)


# ----------------------------------------------------------------------------------------------
# The experiment's configs and runner.


def test_cpu_config_sizes_and_schedules():
    config = load_config(ROOT / "experiments" / "configs" / "cifar10_binreg_cpu.py")
    assert (
        config.method == "binreg"
        and config.dataset == "cifar10"
        and tuple(config.widths) == (16, 32, 64, 64)
    )
    assert config.binreg.schedule == "two_stage" and binreg.resolve_lambda(config) == 0.5
    assert 0 < binreg.resolve_start_epochs(config) < config.epochs


def test_lambda_sweep_config_loops_over_its_lambdas():
    path = ROOT / "experiments" / "configs" / "cifar10_binreg_lambda_sweep_cpu.py"
    config, plain = load_config(path), load_config(path.parent / "cifar10_binreg_cpu.py")
    assert binreg.resolve_lambda(config) == 0.5 and tuple(config.bits) == (2,)
    assert {k: v for k, v in config.items() if k != "binreg"} == {
        k: v for k, v in plain.items() if k != "binreg"
    }  # only lambda varies from the binreg CPU run
    spec = importlib.util.spec_from_file_location("lambda_sweep", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # its sibling import
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    assert 0.0 in module.LAMBDAS and 0.5 in module.LAMBDAS
    loop = next(line for line in module.__doc__.splitlines() if line.strip().startswith("for lam"))
    assert tuple(float(v) for v in loop.split(" in ")[1].split(";")[0].split()) == module.LAMBDAS
    for lam in module.LAMBDAS:
        config.binreg.lambda_ = lam
        assert binreg.resolve_lambda(config) == lam


@pytest.fixture(scope="module")
def experiment():
    spec = importlib.util.spec_from_file_location(
        "binreg_cifar10", ROOT / "experiments" / "binreg_cifar10.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_experiment_plan_and_train_arguments(experiment):
    plan = experiment.PLAN
    assert len(plan) == 9 and len({run.name for run in plan}) == 9
    main = [(run.label, run.bits) for run in plan if run.table == "main"]
    assert sorted(main) == sorted(
        (label, b) for b in (2, 3, 4) for label in ("LSQ", "LSQ + BR (two-stage)")
    )
    assert {
        dict(run.overrides).get("binreg.schedule", "two_stage") for run in plan if run.bits == 2
    } == {"two_stage", "joint", "alternating"}
    args = experiment.argparse.Namespace(data_dir="/data", epochs=1, no_progress=True)
    argv = experiment.train_argv(plan[0], pathlib.Path("/r"), args)
    assert argv[:3] == ["train", "--config", str(experiment.CONFIG)]
    assert {
        "--config.bits=2",
        "--config.method=lsq",
        "--config.data_dir=/data",
        "--config.epochs=1",
        "--no-progress",
    } <= set(argv)
    # Each run is what its label says: the LSQ baseline without BR, every BR run with lambda 0.5.
    from jaxquant.config import apply_overrides

    for run in plan:
        overrides = dict(
            arg[len("--config.") :].split("=", 1)
            for arg in experiment.train_argv(run, pathlib.Path("/r"), args)
            if arg.startswith("--config.")
        )
        config = apply_overrides(load_config(experiment.CONFIG), overrides)
        assert binreg.resolve_lambda(config) == (0.0 if run.label == "LSQ" else 0.5), run.label


def test_experiment_summary_on_tiny_digits_runs(experiment, runs):
    from jaxquant.data import load_digits

    plan = [experiment.Run("LSQ", "lsq", 2), experiment.Run("LSQ + BR (two-stage)", "binreg", 2)]
    text = experiment.summarize(runs, plan, load_digits(), {"lsq": 1.0})
    assert "| LSQ + BR (two-stage) | 2 |" in text and "Weight quantization error" in text
    assert "| conv0 |" in text and "wall-clock" in text
    assert (runs / "binreg_bins.png").stat().st_size > 10_000


def test_gradient_scale_script_on_a_tiny_digits_run(runs):
    spec = importlib.util.spec_from_file_location(
        "binreg_gradient_scale", ROOT / "experiments" / "binreg_gradient_scale.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.gradient_scale(runs / "binreg", lam=0.5, batch_size=16)
    assert [(row["units"], row["layer"]) for row in rows] == [
        ("weight", "conv0"),
        ("code", "conv0"),
    ]
    assert all(
        row[key] > 0 for row in rows for key in ("ce_kernel", "br_kernel", "ce_step", "br_step")
    )
    # Code units are the weight units over s^2: larger gradients on the kernel.
    assert rows[1]["br_kernel"] > rows[0]["br_kernel"]

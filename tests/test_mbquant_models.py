"""Tests of the multi-branch models (`jaxquant.models.multibranch`) and MBQuant's wiring into the
trainer and CLI (`jaxquant.methods.mbquant.build_model`, ``config.method='mbquant'``).

Which branches a b-bit network uses is checked from the outside: changing every parameter a
precision must not read (deselected branches' kernels, intervals and BatchNorm channels, the
partial branch's kernel outside its top-left slice) leaves its logits bit-for-bit unchanged, and
changing a selected branch changes them."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import assert_user_error
from numpy.testing import assert_allclose, assert_array_equal

from jaxquant import cli
from jaxquant.configs.base import base_config
from jaxquant.errors import BitWidthError, ConfigError
from jaxquant.methods import build_model, mbquant
from jaxquant.models.multibranch import MultiBranchCifarResNet, MultiBranchCNN, merge_branches
from jaxquant.training import MultiPrecisionTrainer, _param_group, make_optimizer, OptimizerConfig

ALL_BITS = tuple(range(2, 9))
G = mbquant.NUM_BRANCHES


def _cnn(bits=ALL_BITS, selection="amortised", weight_slots="branch"):
    return MultiBranchCNN(num_classes=5, bits=bits, selection=mbquant.branch_selection(bits, selection, weight_slots),
                          widths=(6, 8, 6), partial_widths=(3,))


def _resnet8(bits=ALL_BITS, selection="amortised"):
    # depth 8: one block per stage, stride-2 projections, and the last block's projection
    # (the partial branch's zero-padded identity into the full-width last conv).
    return MultiBranchCifarResNet(depth=8, num_classes=5, bits=bits,
                                  selection=mbquant.branch_selection(bits, selection), partial_widths=(5, 9, 17),
                                  conv_batching="native")  # XLA's grouped conv compiles faster


def _init(model, shape, seed=0):
    x = jax.random.normal(jax.random.key(seed), shape)
    variables = jax.jit(lambda x: model.init(jax.random.key(1), x, len(model.bits) - 1, train=True))(x)
    return x, variables


def _unread_mask(path_names, leaf, sel, p, partial_in, partial_out):
    """1 where precision p must not read ``leaf`` (a parameter of a multi-branch layer), else 0."""
    full = np.asarray(sel.full[p], bool)
    pb = sel.partial[p]
    name = path_names[-1]
    if name == "kernel" and leaf.ndim == 5:  # (G, kh, kw, C_in, C_out)
        keep = np.zeros(leaf.shape, bool)
        keep[full] = True
        if pb >= 0:
            keep[pb, :, :, :partial_in, :partial_out] = True
        return ~keep
    if name in ("weight_lower", "weight_upper"):
        used = {sel.full_weight_slot[p][g] for g in range(G) if full[g]}
        if pb >= 0:
            used.add(sel.partial_weight_slot[p])
        return np.array([i not in used for i in range(leaf.shape[0])])
    if name in ("act_lower", "act_upper"):  # (P, G + 1): slot g full branch g, slot G the partial
        unread = np.ones(leaf.shape, bool)
        unread[p, :G][full] = False
        if pb >= 0:
            unread[p, G] = False
        return unread
    return np.zeros(leaf.shape, bool)


def _bn_unread(leaf, sel, p, channels, partial_out):
    """BatchNorm scale/bias ``(P, G*C)``: every other precision's row, and this row's deselected channels."""
    unread = np.ones(leaf.shape, bool)
    row = np.zeros((G, channels), bool)
    row[np.asarray(sel.full[p], bool)] = True
    if sel.partial[p] >= 0:
        row[sel.partial[p], :partial_out] = True
    unread[p] = ~row.reshape(-1)
    return unread


def _partial_sizes(model):
    """``{layer name: (partial_in, partial_out, out channels)}`` of the model's multi-branch layers."""
    if isinstance(model, MultiBranchCNN):
        return {"conv0": (6, 3, 8), "conv1": (3, 6, 6)}
    sizes, p_prev = {}, 16
    for stage, (c, p) in enumerate(zip((16, 32, 64), (5, 9, 17))):
        name = f"stage{stage}_block0"
        last_out = c if stage == 2 else p
        sizes[f"{name}_conv0"] = (p_prev, p, c)
        sizes[f"{name}_conv1"] = (p, last_out, c)
        if stage > 0:
            sizes[f"{name}_shortcut"] = (p_prev, p, c)
        p_prev = p
    return sizes


def _conv_of(bn_name: str) -> str:
    if bn_name.startswith("bn"):  # CNN: bn{i} follows conv{i}
        return "conv" + bn_name[2:]
    if bn_name.endswith("_shortcut_bn"):
        return bn_name[:-3]
    return bn_name[:-3] + "conv" + bn_name[-1]  # stage{s}_block{k}_bn{j} follows ..._conv{j}


def _perturbed(params, model, p, unread: bool, seed: int):
    """``params`` with noise added where precision p does not read (``unread``), or on one
    selected full branch's kernels (``not unread``)."""
    sel, sizes = model.selection, _partial_sizes(model)
    key = [jax.random.key(seed)]

    def noise(shape):
        key[0], k = jax.random.split(key[0])
        return jax.random.normal(k, shape)

    def visit(path, leaf):
        names = [getattr(k, "key", str(k)) for k in path]
        layer = names[0]
        if layer in ("stem", "stem_bn", "classifier"):
            return leaf
        if layer.startswith("bn") or "_bn" in layer:
            conv = _conv_of(layer)
            _, p_out, channels = sizes[conv]
            mask = _bn_unread(leaf, sel, p, channels, p_out) if unread else np.zeros(leaf.shape, bool)
        else:
            p_in, p_out, _ = sizes[layer]
            if unread:
                mask = _unread_mask(names, leaf, sel, p, p_in, p_out)
            else:
                mask = np.zeros(leaf.shape, bool)
                if names[-1] == "kernel":
                    mask[int(np.flatnonzero(sel.full[p])[0])] = True
        return leaf + jnp.where(jnp.asarray(mask), 0.5 * noise(leaf.shape), 0.0).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(visit, params)


@pytest.mark.parametrize("build,shape", [(_cnn, (3, 8, 8, 1)), (_resnet8, (2, 8, 8, 3))], ids=["cnn", "resnet8"])
def test_logits_read_only_the_selected_branches(build, shape):
    model = build()
    x, variables = _init(model, shape)

    @jax.jit
    def logits(params, p):
        train, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, p, train=True,
                               mutable=["batch_stats"])
        return train, model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, p)

    params = variables["params"]
    for p in range(len(model.bits)):
        base = logits(params, p)
        unread = _perturbed(params, model, p, unread=True, seed=p)
        moved = [not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(unread),
                                                          jax.tree_util.tree_leaves(params))]
        assert sum(moved) >= 3 * len(_partial_sizes(model)), "the perturbation must reach every layer"
        same = logits(unread, p)
        changed = logits(_perturbed(params, model, p, unread=False, seed=p), p)
        for mode in range(2):  # training mode (batch statistics) and inference (running averages)
            assert np.all(np.isfinite(base[mode]))
            assert_array_equal(same[mode], base[mode], err_msg=f"b={model.bits[p]}")
            assert not np.allclose(changed[mode], base[mode]), f"b={model.bits[p]}"


def test_vmap_over_precisions_equals_the_loop():
    model = _cnn(bits=(2, 3, 8))
    x, variables = _init(model, (3, 8, 8, 1))
    run = jax.jit(lambda p: model.apply(variables, x, p, train=True, mutable=["batch_stats"])[0])
    vmapped = jax.jit(jax.vmap(run))(jnp.arange(3))
    assert vmapped.shape == (3, 3, 5)
    for p in range(3):
        assert_allclose(vmapped[p], run(p), rtol=1e-5, atol=1e-5)


def test_merge_is_the_mean_of_the_selected_chunks():
    sel = mbquant.branch_selection(ALL_BITS)
    x = jnp.arange(1.0, G + 1)[:, None] * jnp.ones((G, 3))  # chunk g holds g + 1
    for p, b in enumerate(ALL_BITS):
        full, pb = sel.full[p], sel.partial[p]
        chosen = [g for g in range(G) if full[g]] + ([pb] if pb >= 0 else [])
        masked = x * jnp.asarray([1.0 if g in chosen else 0.0 for g in range(G)])[:, None]
        assert_allclose(merge_branches(masked, sel, p), np.full(3, np.mean([g + 1 for g in chosen])), rtol=1e-6)


def _config(**overrides) -> ml_collections.ConfigDict:
    c = base_config()
    c.method, c.bits, c.widths, c.partial_widths = "mbquant", (2, 3, 8), (6, 8, 6), (3,)
    for k, v in overrides.items():
        setattr(c, k, v)
    return c


def test_build_model_wires_the_config():
    model = build_model(_config(selection="naive", weight_slots="position"), 10, None)
    assert isinstance(model, MultiBranchCNN) and model.bits == (2, 3, 8)
    assert model.selection == mbquant.branch_selection((2, 3, 8), "naive", "position")
    resnet = build_model(_config(model="resnet20", partial_widths=()), 100, None)
    assert isinstance(resnet, MultiBranchCifarResNet) and resnet.resolved_partial_widths() == (11, 23, 43)
    assert mbquant.DEFAULT_DISTILLATION == "largest" and mbquant.NAME == "mbquant"
    with pytest.raises(BitWidthError, match="2..8"):
        build_model(_config(bits=(2, 4, 32)), 10, None)
    for bad in (dict(branches=3), dict(model="resnet18"), dict(first_last_bits=8), dict(selection="greedy"),
                dict(partial_widths=(9,))):
        with pytest.raises(ConfigError):
            build_model(_config(**bad), 10, None)


def test_intervals_are_in_the_quantizer_group():
    model = _cnn(bits=(2, 4))
    _, variables = _init(model, (2, 8, 8, 1))
    groups = jax.tree_util.tree_map_with_path(_param_group, variables["params"])
    for name in ("weight_lower", "weight_upper", "act_lower", "act_upper"):
        assert groups["conv0"][name] == "quantizer"
    assert groups["conv0"]["kernel"] == "model" and groups["bn0"]["bn"]["scale"] == "model"
    assert groups["stem"]["kernel"] == "model" and groups["classifier"]["kernel"] == "model"


def test_resnet20_one_train_step_is_finite():
    bits = (2, 3)
    # XLA's grouped conv for the branch/precision axes: a third of the unrolled form's compile time.
    model = MultiBranchCifarResNet(depth=20, num_classes=10, bits=bits, selection=mbquant.branch_selection(bits),
                                   conv_batching="native")
    trainer = MultiPrecisionTrainer(model=model, bits=bits, distillation=mbquant.DEFAULT_DISTILLATION,
                                    optimizer=make_optimizer(OptimizerConfig(), 10, 1))
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    state = jax.jit(trainer.init)(jax.random.key(0), images)
    state, metrics = jax.jit(trainer.train_step)(state, images, jnp.array([1, 7]), jax.random.key(1))
    assert np.isfinite(float(metrics["loss"])) and metrics["loss_per_precision"].shape == (2,)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(state.params))


def test_cli_trains_mbquant_on_digits(tmp_path, capsys):
    workdir = tmp_path / "run"
    code = cli.main(["train", "--config.method=mbquant", "--config.bits=(2, 4, 6, 8)", "--config.epochs=1",
                     "--config.widths=(8, 8, 8)", "--config.distillation=largest", "--config.conv_batching=native",
                     "--workdir", str(workdir), "--no-progress"])
    assert code == 0
    results = json.loads((workdir / "results.json").read_text())
    assert set(results["accuracy"]) == {"2", "4", "6", "8"} and results["method"] == "mbquant"
    assert all(0.0 <= a <= 1.0 for a in results["accuracy"].values())
    assert "mbquant" in capsys.readouterr().out


def test_cli_rejects_full_precision_bits(tmp_path, capsys):
    code = cli.main(["train", "--config.method=mbquant", "--config.bits=(2, 32)", "--workdir", str(tmp_path / "r"),
                     "--no-progress"])
    assert_user_error(code, capsys.readouterr().err, "2..8")

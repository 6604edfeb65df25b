"""Tests of the multi-branch models (`jaxquant.models.multibranch`) and MBQuant's wiring into the
trainer and CLI (`jaxquant.methods.mbquant.build_model`, ``config.method='mbquant'``).

Which branches a b-bit network uses is checked from the outside: changing every parameter a
precision must not read (deselected branches' kernels, intervals and BatchNorm channels, the
partial branch's kernel outside its top-left slice) leaves its logits bit-for-bit unchanged, and
changing a selected branch changes them."""

from __future__ import annotations

import json

import flax.linen as nn
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
from jaxquant.layers import Lowering, MultiBranchConv, lowering
from jaxquant.methods import build_model, mbquant
from jaxquant.models import multibranch
from jaxquant.models.multibranch import (
    RESNET18_PARTIAL_WIDTHS,
    RESNET34_PARTIAL_WIDTHS,
    MultiBranchCifarResNet,
    MultiBranchCNN,
    MultiBranchResNet,
    channel_shuffle_indices,
    merge_branches,
    shuffle_branch_channels,
    shuffle_groups,
)
from jaxquant.training import (
    MultiPrecisionTrainer,
    OptimizerConfig,
    TrainState,
    _param_group,
    make_optimizer,
)

ALL_BITS = tuple(range(2, 9))


@pytest.fixture(autouse=True)
def _native_convs():
    """XLA's grouped conv for the branch/precision axes: it compiles in a third of the unrolled
    form's time, and the tests check values, not speed."""
    with lowering(batching="native"):
        yield


G = mbquant.NUM_BRANCHES


def _cnn(bits=ALL_BITS, selection="amortised", weight_slots="branch"):
    return MultiBranchCNN(
        num_classes=5,
        bits=bits,
        selection=mbquant.branch_selection(bits, selection, weight_slots),
        widths=(6, 8, 6),
        partial_widths=(3,),
    )


def _resnet8(bits=ALL_BITS, selection="amortised"):
    # depth 8: one block per stage, stride-2 projections, and the last block's projection
    # (the partial branch's zero-padded identity into the full-width last conv).
    return MultiBranchCifarResNet(
        depth=8,
        num_classes=5,
        bits=bits,
        selection=mbquant.branch_selection(bits, selection),
        partial_widths=(5, 9, 17),
    )


def _imagenet_resnet(bits=ALL_BITS, selection="amortised", channel_shuffle=True):
    # One block per stage at 4/8/16/32 channels: stride-2 projections with the shuffle, and the
    # last block's full-width partial output. Partial widths the shuffle's groups divide at every b.
    return MultiBranchResNet(
        stage_sizes=(1, 1, 1, 1),
        base_width=4,
        num_classes=5,
        bits=bits,
        selection=mbquant.branch_selection(bits, selection),
        partial_widths=(3, 4, 8, 17),
        channel_shuffle=channel_shuffle,
    )


_INITIALIZED = {}


def _init(model, shape, seed=0):
    """Inputs and variables (params, batch_stats), computed once per model and shape. An rbg key
    and no ``interval_init`` collection: XLA on CPU compiles threefry's normal draws slowly
    (seconds per kernel), and an init with every collection mutable also traces the data-dependent
    interval init, doubling the compile time."""
    cache_key = (repr(model), shape, seed)
    if cache_key not in _INITIALIZED:
        x = jax.random.normal(jax.random.key(seed), shape)
        key = jax.random.key(1, impl="rbg")
        variables = jax.jit(
            lambda x: model.init(
                key, x, len(model.bits) - 1, train=True, mutable=["params", "batch_stats"]
            )
        )(x)
        _INITIALIZED[cache_key] = (x, variables)
    return _INITIALIZED[cache_key]


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
    """BatchNorm scale/bias ``(P, G*C)``: every other precision's row, and this row's deselected
    channels."""
    unread = np.ones(leaf.shape, bool)
    row = np.zeros((G, channels), bool)
    row[np.asarray(sel.full[p], bool)] = True
    if sel.partial[p] >= 0:
        row[sel.partial[p], :partial_out] = True
    unread[p] = ~row.reshape(-1)
    return unread


def _partial_sizes(model):
    """``{layer name: (partial_in, partial_out, out channels)}`` of the model's multi-branch
    layers."""
    if isinstance(model, MultiBranchCNN):
        return {"conv0": (6, 3, 8), "conv1": (3, 6, 6)}
    if isinstance(model, MultiBranchResNet):
        sizes, p_prev, partial = {}, model.base_width, model.resolved_partial_widths()
        for stage, blocks in enumerate(model.stage_sizes):
            c, p = model.base_width * 2**stage, partial[stage]
            for block in range(blocks):
                name = f"stage{stage}_block{block}"
                sizes[f"{name}_conv0"] = (p_prev, p, c)
                sizes[f"{name}_conv1"] = (p, c if (stage == 3 and block == blocks - 1) else p, c)
                if stage > 0 and block == 0:
                    sizes[f"{name}_shortcut"] = (p_prev, p, c)
                p_prev = p
        return sizes
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
    rng = np.random.default_rng(
        seed
    )  # NumPy: eager jax.random.normal compiles a threefry kernel per shape

    def noise(shape):
        return rng.normal(size=shape)

    def visit(path, leaf):
        names = [getattr(k, "key", str(k)) for k in path]
        layer = names[0]
        if layer in ("stem", "stem_bn", "classifier"):
            return leaf
        if layer.startswith("bn") or "_bn" in layer:
            conv = _conv_of(layer)
            _, p_out, channels = sizes[conv]
            mask = (
                _bn_unread(leaf, sel, p, channels, p_out) if unread else np.zeros(leaf.shape, bool)
            )
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


@pytest.mark.parametrize(
    "build,shape",
    [(_cnn, (3, 8, 8, 1)), (_resnet8, (2, 8, 8, 3)), (_imagenet_resnet, (2, 32, 32, 3))],
    ids=["cnn", "resnet8", "imagenet"],
)
def test_logits_read_only_the_selected_branches(build, shape):
    model = build()
    x, variables = _init(model, shape)

    @jax.jit
    def logits(params, p):
        train, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            p,
            train=True,
            mutable=["batch_stats"],
        )
        return train, model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, p)

    params = variables["params"]
    for p in range(len(model.bits)):
        base = logits(params, p)
        unread = _perturbed(params, model, p, unread=True, seed=p)
        moved = [
            not np.array_equal(a, b)
            for a, b in zip(jax.tree_util.tree_leaves(unread), jax.tree_util.tree_leaves(params))
        ]
        assert sum(moved) >= 3 * len(_partial_sizes(model)), (
            "the perturbation must reach every layer"
        )
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
        assert_allclose(
            merge_branches(masked, sel, p), np.full(3, np.mean([g + 1 for g in chosen])), rtol=1e-6
        )


def _config(**overrides) -> ml_collections.ConfigDict:
    c = base_config()
    c.method, c.bits, c.widths, c.mbquant.partial_widths = "mbquant", (2, 3, 8), (6, 8, 6), (3,)
    for k, v in overrides.items():  # MBQuant's own keys go to its section
        setattr(c.mbquant if k in c.mbquant else c, k, v)
    return c


def test_build_model_wires_the_config():
    model = build_model(_config(selection="naive", weight_slots="position"), 10, None)
    assert isinstance(model, MultiBranchCNN) and model.bits == (2, 3, 8)
    assert model.selection == mbquant.branch_selection((2, 3, 8), "naive", "position")
    resnet = build_model(_config(model="resnet20", partial_widths=()), 100, None)
    assert isinstance(resnet, MultiBranchCifarResNet) and resnet.resolved_partial_widths() == (
        11,
        23,
        43,
    )
    assert mbquant.DEFAULT_DISTILLATION == "largest" and mbquant.NAME == "mbquant"
    with pytest.raises(BitWidthError, match="2..8"):
        build_model(_config(bits=(2, 4, 32)), 10, None)
    for bad in (
        dict(branches=3),
        dict(model="resnet50"),
        dict(first_last_bits=8),
        dict(selection="greedy"),
        dict(partial_widths=(9,)),
    ):
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


def test_resnet20_step_traces_and_a_resnet8_step_is_finite():
    bits = (2, 3)
    labels = jnp.array([1, 7])
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    for depth in (20, 8):
        # XLA's grouped conv for the branch/precision axes: a third of the unrolled form's compile
        # time.
        model = MultiBranchCifarResNet(
            depth=depth, num_classes=10, bits=bits, selection=mbquant.branch_selection(bits)
        )
        trainer = MultiPrecisionTrainer(
            model=model,
            bits=bits,
            distillation=mbquant.DEFAULT_DISTILLATION,
            optimizer=make_optimizer(OptimizerConfig(), 10, 1),
            lowering=Lowering("native"),
        )
        if depth == 20:
            # The paper's ResNet-20, traced only (its compile alone took 30-100 s of the suite);
            # ResNet-8 is the same stages and blocks, one per stage, and runs for real.
            state = jax.eval_shape(trainer.init, jax.random.key(0), images)
            new, metrics = jax.eval_shape(
                trainer.train_step, state, images, labels, jax.random.key(1)
            )
            assert metrics["loss_per_precision"].shape == (2,)
            assert jax.tree.structure(new.params) == jax.tree.structure(state.params)
            assert sum(name.endswith("_conv0") for name in state.params) == 9  # 3 stages x 3 blocks
            continue
        state = jax.jit(trainer.init)(jax.random.key(0), images)
        state, metrics = jax.jit(trainer.train_step)(state, images, labels, jax.random.key(1))
        assert np.isfinite(float(metrics["loss"])) and metrics["loss_per_precision"].shape == (2,)
        assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(state.params))


def test_cli_trains_mbquant_on_digits(tmp_path, capsys):
    workdir = tmp_path / "run"
    code = cli.main(
        [
            "train",
            "--config.method=mbquant",
            "--config.bits=(2, 4, 6, 8)",
            "--config.epochs=1",
            "--config.widths=(8, 8, 8)",
            "--config.distillation=largest",
            "--config.conv_batching=native",
            "--workdir",
            str(workdir),
            "--no-progress",
        ]
    )
    assert code == 0
    results = json.loads((workdir / "results.json").read_text())
    assert set(results["accuracy"]) == {"2", "4", "6", "8"} and results["method"] == "mbquant"
    assert all(0.0 <= a <= 1.0 for a in results["accuracy"].values())
    assert "mbquant" in capsys.readouterr().out


def test_cli_rejects_full_precision_bits(tmp_path, capsys):
    code = cli.main(
        [
            "train",
            "--config.method=mbquant",
            "--config.bits=(2, 32)",
            "--workdir",
            str(tmp_path / "r"),
            "--no-progress",
        ]
    )
    assert_user_error(code, capsys.readouterr().err, "2..8")


# ----------------------------------------------------------------------------------------------
# The ImageNet ResNet-18/34 (`MultiBranchResNet`) and the official code's channel shuffle.


def _branch_convs(model, image_size: int) -> dict[str, mbquant.BranchConvSpec]:
    """Every `MultiBranchConv` the model calls, as the BitOPs counter's specs, from one trace
    (``jax.eval_shape``: nothing is compiled or computed)."""
    seen = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if isinstance(module, MultiBranchConv) and context.method_name == "__call__":
            kh, kw = module.kernel_size
            assert kh == kw and out.shape[1] == out.shape[2]
            seen[module.name] = mbquant.BranchConvSpec(
                module.name,
                out.shape[1] * out.shape[2],
                kh,
                args[0].shape[-1],
                module.features,
                module.partial_in,
                module.partial_out,
            )
        return out

    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x, 0, train=True), x)
    return seen


def test_imagenet_resnet18_convs_are_the_bitops_counters():
    model = build_model(_config(model="resnet18", partial_widths=(), bits=ALL_BITS), 1000, None)
    assert isinstance(model, MultiBranchResNet) and tuple(model.stage_sizes) == (2, 2, 2, 2)
    assert (
        model.resolved_partial_widths()
        == RESNET18_PARTIAL_WIDTHS
        == mbquant.RESNET18_PARTIAL_WIDTHS
    )
    convs = _branch_convs(model, 224)
    expected = {c.name: c for c in mbquant.resnet18_convs(RESNET18_PARTIAL_WIDTHS, image_size=224)}
    assert convs == expected
    # so the model's odd-b cost is the counter's: 0.991 / 0.994 / 0.996 of b*b at b = 3 / 5 / 7
    ratios = {b: r for b, (_, _, r) in mbquant.bitops_table(list(convs.values())).items()}
    assert_allclose([ratios[b] for b in (3, 5, 7)], [0.991, 0.994, 0.996], atol=1e-3)
    assert all(ratios[b] == 1.0 for b in (2, 4, 6, 8))


def test_imagenet_resnet34_has_the_codes_stage_sizes_and_partial_widths():
    model = build_model(
        _config(model="resnet34", partial_widths=(), channel_shuffle=True), 1000, None
    )
    assert tuple(model.stage_sizes) == (3, 4, 6, 3) and model.channel_shuffle
    assert model.resolved_partial_widths() == RESNET34_PARTIAL_WIDTHS == (39, 78, 188, 400)
    convs = _branch_convs(model, 64)
    assert len(convs) == 2 * 16 + 3 and sum(name.endswith("_shortcut") for name in convs) == 3
    assert (
        convs["stage0_block0_conv0"].partial_in == 64
        and convs["stage1_block0_conv0"].partial_in == 39
    )
    assert (convs["stage3_block2_conv1"].partial_in, convs["stage3_block2_conv1"].partial_out) == (
        400,
        512,
    )
    ratios = mbquant.bitops_table(list(convs.values()), (3, 5, 7))
    assert all(0.99 < r < 1.0 for _, _, r in ratios.values())


def test_build_model_imagenet_resnet_errors():
    with pytest.raises(ConfigError, match="channel_shuffle"):
        build_model(_config(model="resnet20", partial_widths=(), channel_shuffle=True), 10, None)
    with pytest.raises(ConfigError, match="quantize_shortcut"):
        build_model(_config(model="resnet18", partial_widths=(), quantize_shortcut=True), 10, None)
    with pytest.raises(ConfigError, match="one width per stage"):
        build_model(_config(model="resnet18", partial_widths=(40, 76, 184)), 10, None)
    # b = 5 shuffles 2 * 128 + 75 channels into 2 groups: the code's view() would fail too.
    with pytest.raises(ConfigError, match="does not divide"):
        build_model(
            _config(
                model="resnet18",
                partial_widths=(40, 75, 184, 396),
                bits=(4, 5),
                channel_shuffle=True,
            ),
            10,
            None,
        )
    assert build_model(
        _config(model="resnet18", partial_widths=(40, 75, 184, 396), bits=(4, 5)), 10, None
    )


def _code_channel_shuffle(x, full, partial, partial_out, b):
    """The official code on our layout, by hand: concatenate the selected chunks along channels
    (NCHW, full branches in order then the partial's first ``partial_out``), ``view(N, g, C'/g,
    H, W)``, ``transpose(1, 2)``, ``view(N, C', H, W)``, and write the chunks back."""
    chunks = [x[..., g, :] for g in range(x.shape[-2]) if full[g]]
    if partial >= 0:
        chunks.append(x[..., partial, :partial_out])
    cat = np.concatenate(chunks, axis=-1).transpose(0, 3, 1, 2)  # NHWC -> NCHW
    n, c, h, w = cat.shape
    groups = b // 2
    if b == 7:
        groups = 4 if c % 4 == 0 else 3
    shuffled = (
        cat.reshape(n, groups, c // groups, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)
    )
    shuffled = shuffled.transpose(0, 2, 3, 1)
    out, start = x.copy(), 0
    for g in range(x.shape[-2]):
        if full[g]:
            out[..., g, :] = shuffled[..., start : start + x.shape[-1]]
            start += x.shape[-1]
    if partial >= 0:
        out[..., partial, :partial_out] = shuffled[..., start : start + partial_out]
    return out


@pytest.mark.parametrize("partial_out", [2, 3], ids=["b7_four_groups", "b7_three_groups"])
def test_channel_shuffle_is_the_codes_reshape_transpose(partial_out):
    bits = (2, 3, 4, 7, 8)
    sel = mbquant.branch_selection(bits)
    channels = 6  # b=7: 3 * 6 + 2 = 20 channels -> 4 groups; 3 * 6 + 3 = 21 -> 3 groups
    assert shuffle_groups(7, 3 * channels + partial_out) == (4 if partial_out == 2 else 3)
    x = np.random.default_rng(0).normal(size=(2, 3, 2, G, channels)).astype(np.float32)
    indices = channel_shuffle_indices(sel, bits, channels, partial_out)
    shuffle = jax.jit(lambda x, p: shuffle_branch_channels(x, indices, p))
    for p, b in enumerate(bits):
        expected = _code_channel_shuffle(x, sel.full[p], sel.partial[p], partial_out, b)
        assert_array_equal(shuffle(x, p), expected, err_msg=f"b={b}")  # traced precision
        assert_array_equal(
            shuffle_branch_channels(x, indices, p), expected, err_msg=f"b={b}"
        )  # static
        if b in (2, 3):
            assert_array_equal(expected, x)  # one group: a no-op
        else:
            assert not np.array_equal(expected, x)
    vmapped = jax.vmap(lambda p: shuffle_branch_channels(x, indices, p))(jnp.arange(len(bits)))
    assert_array_equal(
        vmapped[bits.index(4)], _code_channel_shuffle(x, sel.full[2], -1, partial_out, 4)
    )


def test_channel_shuffle_mixes_the_branches_only_when_on():
    """The digest's perturbation test: at b=4 (branches 1 and 2), changing branch 2's stage-0
    kernels leaves branch 1's features after stage 0 alone in both models; after stage 1 (the
    first block with a downsample), only the shuffling model's branch 1 changes."""
    shuffled = _imagenet_resnet()
    plain = shuffled.clone(channel_shuffle=False)
    x, variables = _init(shuffled, (2, 32, 32, 3))
    p = ALL_BITS.index(4)
    assert (
        np.flatnonzero(shuffled.selection.full[p]).tolist() == [1, 2]
        and shuffled.selection.partial[p] == -1
    )
    params = variables["params"]
    perturbed = dict(params)
    noise = np.random.default_rng(3)
    for name in ("stage0_block0_conv0", "stage0_block0_conv1"):
        kernel = params[name]["kernel"]
        perturbed[name] = {
            **params[name],
            "kernel": kernel.at[2].add(0.5 * noise.normal(size=kernel.shape[1:])),
        }

    def features(model, params):
        _, state = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            p,
            train=True,
            mutable=["batch_stats", "intermediates"],
        )
        return [state["intermediates"][f"stage{s}"][0] for s in (0, 1)]

    for model, mixes in ((plain, False), (shuffled, True)):
        run = jax.jit(lambda params, model=model: features(model, params))
        (before0, before1), (after0, after1) = run(params), run(perturbed)
        assert not np.allclose(before0[..., 2, :], after0[..., 2, :])
        assert_array_equal(before0[..., 1, :], after0[..., 1, :])
        assert not np.allclose(before1[..., 2, :], after1[..., 2, :])
        assert np.array_equal(before1[..., 1, :], after1[..., 1, :]) != mixes, (
            f"channel_shuffle={mixes}"
        )


def test_imagenet_resnet_one_train_step_is_finite():
    """Stem, max-pool, projections with the shuffle, the last block's full-width partial, merge
    and classifier: one vmapped step over every bit-width 2..8, in-place distillation."""
    model = _imagenet_resnet()
    x, variables = _init(model, (2, 32, 32, 3))
    trainer = MultiPrecisionTrainer(
        model=model,
        bits=model.bits,
        distillation=mbquant.DEFAULT_DISTILLATION,
        optimizer=make_optimizer(OptimizerConfig(), 10, 1),
        lowering=Lowering("native"),
    )
    params = variables["params"]
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables["batch_stats"],
        opt_state=trainer.optimizer.init(params),
    )
    new_state, metrics = jax.jit(trainer.train_step)(state, x, jnp.array([1, 4]), jax.random.key(1))
    assert np.isfinite(float(metrics["loss"])) and metrics["loss_per_precision"].shape == (
        len(ALL_BITS),
    )
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(new_state.params))
    last = "stage3_block0_conv1"
    assert not np.array_equal(new_state.params[last]["kernel"], params[last]["kernel"])


def test_imagenet_resnet_static_precision_equals_traced():
    """The unrolled step's static precision (only the selected branches' convs, the shuffle as a
    constant permutation) computes what the masked, traced one does: b=7, partial and 4 groups."""
    model = _imagenet_resnet()
    x, variables = _init(model, (2, 32, 32, 3))
    p = ALL_BITS.index(7)
    traced = jax.jit(
        lambda p: model.apply(variables, x, p, train=True, mutable=["batch_stats"])[0]
    )(p)
    static = jax.jit(lambda: model.apply(variables, x, p, train=True, mutable=["batch_stats"])[0])()
    assert_allclose(static, traced, rtol=1e-4, atol=1e-4)


def _read_stats(layer: str, leaf, model, p):
    """1 where precision p reads a running statistic ``(P, channels)`` of BatchNorm ``layer``."""
    if layer == "stem_bn":
        read = np.zeros(leaf.shape, bool)
        read[p] = True
        return read
    _, p_out, channels = _partial_sizes(model)[_conv_of(layer)]
    return ~_bn_unread(leaf, model.selection, p, channels, p_out)


@pytest.mark.parametrize(
    "build,shape,bits,traced_tol",
    [
        (_cnn, (3, 8, 8, 1), (7, 8), 1e-4),
        (_resnet8, (2, 8, 8, 3), (5, 6), 1e-4),
        (_imagenet_resnet, (2, 32, 32, 3), (7,), 1e-3),
    ],
    ids=["cnn", "resnet8", "imagenet"],
)
def test_static_selected_layout_equals_traced(build, shape, bits, traced_tol, monkeypatch):
    """The unrolled step's static precision carries only the selected branches' channels through
    conv, BatchNorm, ReLU, residual and merge (`models.multibranch._Branches`); the traced one
    all G slots with masks, and so did the static one before (`_Slots`, still used at init).
    Same logits, same gradient of every parameter (zero where the precision does not read), and
    the same running statistics wherever the precision reads them; the selected layout leaves
    the rest unchanged (the slot layout drifts its unread channels towards the zero inputs'
    statistics).

    Against the slot layout at the same static precision and against the traced path, at the b
    listed (odd and even). The CNN's 2x2 max-pools are average pools here: the layouts reduce
    BatchNorm's statistics over different shapes, which moves outputs by an ulp, and where
    low-bit conv outputs tie in a max-pool window an ulp decides where the gradient goes
    (`models.common.max_pool_2x2`; on this tiny CNN at most b, for any two of the three paths,
    today's static and traced ones included). The ImageNet model's gradients match the traced
    path's to 1e-3 relative: an ulp puts one element on the other side of a clip boundary."""
    model = build()
    x, variables = _init(model, shape)
    cotangent = jnp.asarray(np.random.default_rng(5).normal(size=(shape[0], 5)), jnp.float32)
    monkeypatch.setattr(multibranch, "max_pool_2x2", lambda x: nn.avg_pool(x, (2, 2), (2, 2)))

    def loss(params, p):
        logits, updates = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            p,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.sum(jnp.sin(logits) * cotangent), (logits, updates["batch_stats"])

    def static(p):
        return jax.jit(jax.value_and_grad(lambda v: loss(v, p), has_aux=True))(variables["params"])

    def check(result, reference, p, what, grad_tol):
        (_, (logits, stats)), grads = result
        (_, (logits_ref, stats_ref)), grads_ref = reference
        where = f"b={model.bits[p]} vs {what}"
        assert_allclose(logits, logits_ref, rtol=1e-4, atol=1e-4, err_msg=where)
        for (path, g), g_ref in zip(
            jax.tree_util.tree_leaves_with_path(grads), jax.tree_util.tree_leaves(grads_ref)
        ):
            assert_allclose(
                g,
                g_ref,
                rtol=grad_tol,
                atol=grad_tol,
                err_msg=f"{where} {jax.tree_util.keystr(path)}",
            )
        read_any = False
        for (path, s), s_ref, before in zip(
            jax.tree_util.tree_leaves_with_path(stats),
            jax.tree_util.tree_leaves(stats_ref),
            jax.tree_util.tree_leaves(variables["batch_stats"]),
        ):
            s, s_ref, before = np.asarray(s), np.asarray(s_ref), np.asarray(before)
            read = _read_stats(path[0].key, s, model, p)
            assert_allclose(
                s[read],
                s_ref[read],
                rtol=1e-4,
                atol=1e-5,
                err_msg=f"{where} {jax.tree_util.keystr(path)}",
            )
            assert_array_equal(
                s[~read], before[~read], err_msg=f"{where} {jax.tree_util.keystr(path)}"
            )
            read_any |= not np.array_equal(s[read], before[read])
        assert read_any

    traced_fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
    checked = []
    for p in sorted(model.bits.index(b) for b in bits):
        selected = static(p)
        with (
            monkeypatch.context() as patch
        ):  # today's static path: the slot layout, convs of the selected branches
            patch.setattr(
                multibranch,
                "_layout",
                lambda module, sel, precision: multibranch._Slots(sel, precision),
            )
            slots = static(p)
        check(selected, slots, p, "the slot layout", 1e-5)
        check(selected, traced_fn(variables["params"], p), p, "the traced path", traced_tol)
        checked.append(model.bits[p])
    assert sorted(checked) == sorted(bits)

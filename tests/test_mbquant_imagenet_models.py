"""MBQuant's ImageNet MobileNetV1 and ResNet-50 (the official code's ``mv1_quant`` and
``resnet50_quant``) at tiny widths on 32x32 inputs, built through `build_model` as the configs
do: one training step through `build_trainer`, evaluation, deselected branches leave the
logits unchanged, the no-decay mask, and the BitOPs tables."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_array_equal

from jaxquant.configs.base import base_config
from jaxquant.data.memory import ArrayDataset
from jaxquant.methods import build_model, build_trainer, mbquant, mbquant_bitops
from jaxquant.models.multibranch_bottleneck import MultiBranchBottleneckResNet
from jaxquant.models.multibranch_mobilenet import (
    MOBILENET_V1_PARTIAL_WIDTHS,
    MultiBranchMobileNetV1,
    mobilenet_v1_blocks,
)
from jaxquant.training.optim import _decays

BITS = (2, 3)  # the two kinds of precision: full branches only (2), and a partial one (3)
# mobilenet_v1 at 1/4 width (8..256 channels), resnet50 at base width 4 (4..128 channels)
WIDTHS = {"mobilenet_v1": 0.25, "resnet50": 0.0625}


def _config(model: str):
    c = base_config()
    c.method, c.model, c.bits, c.width = "mbquant", model, BITS, WIDTHS[model]
    c.epochs, c.batch_size, c.augment, c.mbquant.interval_init = 1, 4, "none", "none"
    if model == "mobilenet_v1":
        c.optimizer.decay_batchnorm = False
        c.optimizer.no_decay = mbquant.NO_DECAY_MOBILENET_V1
    return c


def _dataset(n=4):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (n, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 5, n).astype(np.int32)
    return ArrayDataset("cifar10", images, labels, images, labels, 5, (0.5,) * 3, (0.25,) * 3)


def test_build_model_picks_the_imagenet_models():
    mv1 = build_model(_config("mobilenet_v1"), 5, None)
    assert isinstance(mv1, MultiBranchMobileNetV1) and mv1.width == WIDTHS["mobilenet_v1"]
    r50 = build_model(_config("resnet50"), 5, None)
    assert isinstance(r50, MultiBranchBottleneckResNet) and r50.base_width == 4
    # the official widths at full size
    _, blocks = mobilenet_v1_blocks()
    assert tuple(b[4] for b in blocks) == MOBILENET_V1_PARTIAL_WIDTHS
    full = MultiBranchBottleneckResNet(bits=BITS, selection=mbquant.branch_selection(BITS))
    assert full.resolved_partial_widths() == (208, 416, 832, 2048, 40, 80, 160, 320)


@pytest.mark.parametrize("model_name", ["mobilenet_v1", "resnet50"])
def test_one_step_evaluates_and_ignores_deselected_branches(model_name):
    config, dataset = _config(model_name), _dataset()
    trainer = build_trainer(config, dataset, steps_per_epoch=1)
    images, labels = jnp.asarray(dataset.train_images), jnp.asarray(dataset.train_labels)
    state = jax.jit(trainer.init)(jax.random.key(0), images)
    new_state, metrics = jax.jit(trainer.train_step)(state, images, labels, jax.random.key(1))
    assert np.isfinite(float(metrics["loss"]))
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(new_state.params))

    model, sel = trainer.model, trainer.model.selection
    variables = {"params": new_state.params, "batch_stats": new_state.batch_stats}
    for p in (BITS.index(2), BITS.index(3)):  # branches 1..3 (b=2), 2 and 3 (b=3) unread
        # training mode (batch statistics): the 1x1 maps of the last blocks see the batch
        apply = jax.jit(
            lambda v: model.apply(v, images, p, train=True, mutable=["batch_stats"])[0]  # noqa: B023
        )
        base = apply(variables)
        assert base.shape == (4, 5) and np.all(np.isfinite(base))
        unread = [g for g in range(4) if not sel.full[p][g] and sel.partial[p] != g]
        rng = np.random.default_rng(p)

        def perturb(path, leaf, branches):
            name = getattr(path[-1], "key", "")
            if name == "kernel" and leaf.ndim == 5:  # multi-branch and depthwise kernels
                noise = np.zeros(leaf.shape, np.float32)
                noise[branches] = rng.normal(size=noise[branches].shape)
                return leaf + noise
            return leaf

        moved = jax.tree_util.tree_map_with_path(
            lambda path, leaf: perturb(path, leaf, unread), variables["params"]
        )
        assert_array_equal(apply({**variables, "params": moved}), base, err_msg=f"p={p}")
        read = [int(np.flatnonzero(sel.full[p])[0])]
        changed = jax.tree_util.tree_map_with_path(
            lambda path, leaf: perturb(path, leaf, read), variables["params"]
        )
        assert not np.allclose(apply({**variables, "params": changed}), base)


def test_mobilenet_v1_no_decay_mask():
    params = {
        "block0_dw": {"kernel": 0, "weight_upper": 0},
        "block0_pw": {"kernel": 0},
        "block0_dw_bn": {"bn": {"scale": 0, "bias": 0}},
        "stem": {"kernel": 0},
        "classifier": {"kernel": 0, "bias": 0},
    }
    mask = jax.tree_util.tree_map_with_path(
        lambda p, v: _decays(p, v, False, mbquant.NO_DECAY_MOBILENET_V1), params
    )
    assert mask["block0_dw"]["kernel"] is False and mask["block0_dw_bn"]["bn"]["scale"] is False
    assert mask["block0_pw"]["kernel"] and mask["stem"]["kernel"] and mask["classifier"]["bias"]


def test_bitops_tables_print(capsys):
    mbquant_bitops.main()
    out = capsys.readouterr().out
    assert "ImageNet ResNet-50" in out and "ImageNet MobileNetV1" in out
    r50 = mbquant_bitops.bitops_table(mbquant_bitops.resnet50_convs())
    assert all(r50[b][2] == 1.0 for b in (2, 4, 6, 8)) and 0.98 < r50[3][2] < 1.0
    mv1 = mbquant_bitops.mobilenet_v1_convs()
    assert sum(c.depthwise for c in mv1) == 13 and len(mv1) == 26

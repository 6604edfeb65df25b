"""Multi-branch models (MBQuant's topology): G branches of fixed 2-bit weights in every body conv.

**Two layouts, one function**: with a traced precision (``precision_mode='vmap'``) the body's
activations are ``(N, H, W, G, C)`` slots with masks; with a static one (``'unroll'``, MBQuant's
default) a list of the selected branches' ``(N, H, W, C)`` arrays, the others absent (the same
logits and gradients; tested). Which branches a precision uses is a `BranchSelection`. Stem FP,
shared, tiled G times; body convs `MultiBranchConv`, each with a per-precision BatchNorm over
``G * C`` channels; masks applied *after* BN and ReLU (BN turns zeros into beta); the odd-b
partial branch is the top-left slice of the next branch, its last conv writing the full width;
merge: the mean of the selected chunks after the last block. Details: docs/methods/mbquant.md
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np

from jaxquant.errors import ConfigError
from jaxquant.layers import (
    FULL_PRECISION,
    BranchSelection,
    MultiBranchConv,
    PrecisionBatchNorm,
    QuantConv,
    QuantDense,
)
from jaxquant.models.common import avg_pool_all, max_pool_2x2, relu

# The layouts and the branch operations live in their own modules; their names still import
# from here.
from jaxquant.models.multibranch_layouts import (  # noqa: F401
    _Branches,
    _layout,
    _pool_branches,
    _Slots,
)
from jaxquant.models.multibranch_ops import (  # noqa: F401
    BranchBatchNorm,
    _BranchListBatchNorm,
    branch_channel_mask,
    channel_shuffle_indices,
    merge_branches,
    shuffle_branch_channels,
    shuffle_groups,
    tile_branches,
)

# The partial branch's width per stage of the CIFAR ResNet (16/32/64 channels): half a branch's
# MACs, derived by `jaxquant.methods.mbquant.derive_partial_widths` (which the tests re-run).
CIFAR_RESNET20_PARTIAL_WIDTHS = (11, 23, 43)
# The official code's partial widths (``oneBit_outchannel``) per stage of the ImageNet ResNets
# (64/128/256/512 channels): partial MACs / branch MACs = 0.486 (ResNet-18) and 0.489 (ResNet-34),
# so odd-b BitOPs are 0.991-0.997 of b*b (`methods.mbquant.resnet18_convs` counts ResNet-18).
RESNET18_PARTIAL_WIDTHS = (40, 76, 184, 396)
RESNET34_PARTIAL_WIDTHS = (39, 78, 188, 400)


def _check_selection(selection: BranchSelection | None, bits: Sequence[int]) -> BranchSelection:
    if selection is None:
        raise ConfigError(
            "a multi-branch model needs a BranchSelection "
            "(jaxquant.methods.mbquant.branch_selection)"
        )
    if selection.num_precisions != len(bits):
        raise ConfigError(
            f"the branch selection has {selection.num_precisions} precisions but bits={tuple(bits)}"
        )
    return selection


def _check_imagenet_stages(stage_sizes: Sequence[int]) -> None:
    if len(stage_sizes) != 4 or not all(int(n) >= 1 for n in stage_sizes):
        raise ConfigError(
            f"an ImageNet ResNet has four stages of at least one block, got stage_sizes "
            f"{tuple(stage_sizes)}"
        )


def _resolve_stage_widths(
    given: Sequence[int], default: Sequence[int], base_width: int, widths, what: str
) -> tuple[int, ...]:
    """The partial widths of an ImageNet ResNet's four stages: ``given``, each in ``1..width``,
    or (``()``) the official ``default`` scaled by ``base_width / 64``."""
    if not given:
        return tuple(min(w, max(1, round(p * base_width / 64))) for p, w in zip(default, widths))
    values = tuple(int(p) for p in given)
    if len(values) != 4 or not all(0 < p <= w for p, w in zip(values, widths)):
        raise ConfigError(
            f"{what} {values} must give one width per stage in 1..{widths}; "
            f"or () for the official {default}"
        )
    return values


def _imagenet_stem(x: jax.Array, precision, train: bool, base_width: int, bits) -> jax.Array:
    """The FP stem of the ImageNet ResNets (called inside a compact ``__call__``): 7x7/2 conv
    -> BN -> ReLU -> 3x3/2 max-pool, with PyTorch's symmetric paddings."""
    x = QuantConv(
        base_width,
        (7, 7),
        (2, 2),
        padding=((3, 3), (3, 3)),
        use_bias=False,
        spec=FULL_PRECISION,
        name="stem",
    )(x, 0)
    x = relu(PrecisionBatchNorm(num_precisions=len(bits), name="stem_bn")(x, precision, train))
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def _basic_block(
    ops, conv, bn, x, train, *, name, features, strides, p_in, p, p_out, projection,
    shortcut_padding="SAME", shuffle=None,
):  # fmt: skip
    """A multi-branch basic block in layout ``ops``: ``[1x1 projection -> BN] + conv0 -> BN ->
    ReLU -> conv1 -> BN (-> the code's channel ``shuffle``) -> ReLU``. ``p_in``/``p``/``p_out``
    are the partial widths read, kept inside the block and written (``p_out = features`` for
    the last block's full-width partial output); every output is masked to them."""
    if projection:
        shortcut = ops.conv(
            conv(features, kernel_size=(1, 1), strides=strides, padding=shortcut_padding,
                 partial_in=p_in, partial_out=p, name=f"{name}_shortcut"),
            x,
        )  # fmt: skip
        shortcut = ops.bn(bn(name=f"{name}_shortcut_bn"), shortcut, train, features)
        # BN(0) = beta: mask, so the partial's channels past p add nothing (the last block's
        # full-width partial output gets a zero-padded shortcut).
        shortcut = ops.mask(shortcut, features, p)
    else:
        shortcut = x  # identity per branch (masked already)
    conv0 = conv(features, strides=strides, partial_in=p_in, partial_out=p, name=f"{name}_conv0")
    out = ops.mask(ops.relu(ops.bn(bn(name=f"{name}_bn0"), ops.conv(conv0, x), train, features)),
                   features, p)  # fmt: skip
    conv1 = conv(features, partial_in=p, partial_out=p_out, name=f"{name}_conv1")
    out = ops.bn(bn(name=f"{name}_bn1"), ops.conv(conv1, out), train, features)
    if shuffle is not None:
        out = ops.shuffle(out, shuffle, features)
    return ops.mask(ops.relu(ops.add(out, shortcut, features)), features, p_out)


class MultiBranchCNN(nn.Module):
    """The multi-branch `SmallCNN` for 8x8 (digits) and 28x28 inputs: FP stem conv -> BN -> ReLU
    (-> 2x2 max-pool if ``stem_pool``) -> tile G -> [MultiBranchConv 3x3 -> BN(G*C) -> ReLU ->
    mask] per width, a 2x2 max-pool after each while the map is at least 4x4 -> mean of the
    selected branches -> global average -> FP classifier.

    ``partial_widths``: the partial branch's output width of every body conv but the last (which
    writes the full width); the first conv reads the full stem copy. ``()``: half of each width,
    which for the default ``widths=(32, 64, 64)`` makes the partial slice exactly half a
    branch's MACs (both convs are ``1/2``); other width tuples, pass your own.
    """

    num_classes: int = 10
    bits: tuple[int, ...] = (2, 4, 6, 8)
    selection: BranchSelection | None = None
    widths: Sequence[int] = (32, 64, 64)
    partial_widths: Sequence[int] = ()
    stem_pool: bool = False

    def resolved_partial_widths(self) -> tuple[int, ...]:
        body = tuple(self.widths[1:])
        if not body:
            raise ConfigError(
                "MultiBranchCNN needs at least one body conv: widths=(stem, conv, ...)"
            )
        if not self.partial_widths:
            return tuple(max(w // 2, 1) for w in body[:-1])
        widths = tuple(int(p) for p in self.partial_widths)
        if len(widths) != len(body) - 1 or not all(0 < p <= w for p, w in zip(widths, body)):
            raise ConfigError(
                f"partial_widths {widths} must give one width in 1..w per body conv but the last "
                f"(body widths {body}); or () for half of each"
            )
        return widths

    @nn.compact
    def __call__(self, x: jax.Array, precision, train: bool = False) -> jax.Array:
        sel = _check_selection(self.selection, self.bits)
        partial = self.resolved_partial_widths()
        bn = functools.partial(BranchBatchNorm, num_precisions=len(self.bits))
        x = QuantConv(self.widths[0], (3, 3), use_bias=False, spec=FULL_PRECISION, name="stem")(
            x, 0
        )
        x = relu(
            PrecisionBatchNorm(num_precisions=len(self.bits), name="stem_bn")(x, precision, train)
        )
        if self.stem_pool:
            x = max_pool_2x2(x)
        ops = _layout(self, sel, precision)
        x = ops.tile(x)
        body = tuple(self.widths[1:])
        p_in = self.widths[0]
        for i, width in enumerate(body):
            p_out = width if i == len(body) - 1 else partial[i]
            x = ops.conv(
                MultiBranchConv(
                    width,
                    sel,
                    tuple(self.bits),
                    partial_in=p_in,
                    partial_out=p_out,
                    name=f"conv{i}",
                ),
                x,
            )
            x = ops.mask(ops.relu(ops.bn(bn(name=f"bn{i}"), x, train, width)), width, p_out)
            if min(jax.tree.leaves(x)[0].shape[1:3]) >= 4:  # either layout
                x = ops.pool(x, max_pool_2x2)
            p_in = p_out
        x = avg_pool_all(ops.merge(x, body[-1]))
        return QuantDense(self.num_classes, spec=FULL_PRECISION, name="classifier")(x, 0)


class MultiBranchCifarResNet(nn.Module):
    """Multi-branch post-activation CIFAR ResNet (depth 6n+2; stages 16/32/64 times ``width``),
    MBQuant's CIFAR model. ``partial_widths``: the partial branch's width per stage (``()``:
    `methods.mbquant.CIFAR_RESNET20_PARTIAL_WIDTHS` (11, 23, 43) times ``width``, which keeps the
    partial slice at half a branch's MACs, so odd-b BitOPs match b*b within 0.4%)."""

    depth: int = 20
    width: int = 1
    num_classes: int = 10
    bits: tuple[int, ...] = (2, 4, 6, 8)
    selection: BranchSelection | None = None
    partial_widths: Sequence[int] = ()

    def resolved_partial_widths(self) -> tuple[int, ...]:
        stages = tuple(16 * self.width * 2**s for s in range(3))
        if not self.partial_widths:
            return tuple(max(1, round(p * self.width)) for p in CIFAR_RESNET20_PARTIAL_WIDTHS)
        widths = tuple(int(p) for p in self.partial_widths)
        if len(widths) != 3 or not all(0 < p <= c for p, c in zip(widths, stages)):
            raise ConfigError(
                f"partial_widths {widths} must give one width per stage in 1..{stages}; "
                f"or () for the derived {CIFAR_RESNET20_PARTIAL_WIDTHS} times width"
            )
        return widths

    @nn.compact
    def __call__(self, x: jax.Array, precision, train: bool = False) -> jax.Array:
        if (self.depth - 2) % 6:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56), got {self.depth}")
        sel = _check_selection(self.selection, self.bits)
        partial = self.resolved_partial_widths()
        blocks = (self.depth - 2) // 6
        bits = tuple(self.bits)
        bn = functools.partial(BranchBatchNorm, num_precisions=len(bits))
        conv = functools.partial(MultiBranchConv, selection=sel, bits=bits)
        stem = 16 * self.width
        x = QuantConv(stem, (3, 3), use_bias=False, spec=FULL_PRECISION, name="stem")(x, 0)
        x = relu(PrecisionBatchNorm(num_precisions=len(bits), name="stem_bn")(x, precision, train))
        ops = _layout(self, sel, precision)
        x, channels = ops.tile(x), stem
        p_prev = stem  # the first conv's partial reads the full stem copy
        for stage in range(3):
            features, p = 16 * self.width * 2**stage, partial[stage]
            for block in range(blocks):
                strides = (2, 2) if stage > 0 and block == 0 else (1, 1)
                name = f"stage{stage}_block{block}"
                last = stage == 2 and block == blocks - 1
                p_block_out = features if last else p
                x = _basic_block(
                    ops, conv, bn, x, train, name=name, features=features, strides=strides,
                    p_in=p_prev, p=p, p_out=p_block_out,
                    projection=strides != (1, 1) or channels != features,
                )  # fmt: skip
                p_prev, channels = p, features
        x = avg_pool_all(ops.merge(x, channels))
        return QuantDense(self.num_classes, spec=FULL_PRECISION, name="classifier")(x, 0)


class MultiBranchResNet(nn.Module):
    """Multi-branch ImageNet ResNet with basic blocks (``stage_sizes`` (2, 2, 2, 2): ResNet-18,
    (3, 4, 6, 3): ResNet-34), MBQuant's ImageNet model: FP stem 7x7/2 conv -> BN -> ReLU -> 3x3/2
    max-pool, tiled G times (PyTorch's paddings throughout, as the torchvision-based code); stages
    of ``base_width * 2**s`` channels (64/128/256/512) of post-activation basic blocks of
    `MultiBranchConv`s with 1x1 multi-branch projection shortcuts at the stride-2 blocks; mean of
    the selected chunks, global average pool, FP classifier. Masks, partial-branch wiring and merge
    as `MultiBranchCifarResNet` (module docstring); the convs are those of
    `methods.mbquant.resnet18_convs` (tested).

    ``partial_widths``: the partial branch's width per stage (``()``: the official code's
    `RESNET18_PARTIAL_WIDTHS` (40, 76, 184, 396), or `RESNET34_PARTIAL_WIDTHS` (39, 78, 188, 400)
    for ResNet-34's stage sizes, times ``base_width / 64``). ``base_width`` other than 64 is for
    small tests. ``channel_shuffle``: the official code's shuffle of the residual path (after its
    last BatchNorm, before the shortcut is added) in every block with a projection shortcut
    (`channel_shuffle_indices`); it mixes the branches, which the paper calls independent, so it
    is off by default (on for parity with the code's numbers). With it on, the selected channel
    counts must divide into the code's group count (`shuffle_indices` raises `ConfigError`).
    Each stage's output is sown as ``intermediates/stage{s}`` (``mutable=['intermediates']``).
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    num_classes: int = 1000
    bits: tuple[int, ...] = (2, 4, 6, 8)
    selection: BranchSelection | None = None
    partial_widths: Sequence[int] = ()
    base_width: int = 64
    channel_shuffle: bool = False

    def resolved_partial_widths(self) -> tuple[int, ...]:
        _check_imagenet_stages(self.stage_sizes)
        default = (
            RESNET34_PARTIAL_WIDTHS
            if tuple(self.stage_sizes) == (3, 4, 6, 3)
            else RESNET18_PARTIAL_WIDTHS
        )
        stages = tuple(self.base_width * 2**s for s in range(4))
        return _resolve_stage_widths(
            self.partial_widths, default, self.base_width, stages, "partial_widths"
        )

    def shuffle_indices(self) -> dict[str, np.ndarray]:
        """``{block name: channel_shuffle_indices}`` of the blocks that shuffle (those with a
        projection shortcut), empty with ``channel_shuffle=False``; raises `ConfigError` if a
        selected channel count does not divide into the code's groups."""
        if not self.channel_shuffle:
            return {}
        sel, partial = _check_selection(self.selection, self.bits), self.resolved_partial_widths()
        blocks = {}
        for stage in range(1, 4):  # stage 0 keeps the stem's width at stride 1: no projection
            features = self.base_width * 2**stage
            last = stage == 3 and self.stage_sizes[3] == 1
            blocks[f"stage{stage}_block0"] = channel_shuffle_indices(
                sel, tuple(self.bits), features, features if last else partial[stage]
            )
        return blocks

    @nn.compact
    def __call__(self, x: jax.Array, precision, train: bool = False) -> jax.Array:
        sel = _check_selection(self.selection, self.bits)
        partial = self.resolved_partial_widths()
        shuffles = self.shuffle_indices()
        bits = tuple(self.bits)
        bn = functools.partial(BranchBatchNorm, num_precisions=len(bits))
        # PyTorch's symmetric paddings (3x3: 1, 7x7: 3, 1x1: 0); SAME would pad a stride-2 conv
        # on an even map only at the bottom/right.
        conv = functools.partial(
            MultiBranchConv, selection=sel, bits=bits, padding=((1, 1), (1, 1))
        )
        x = _imagenet_stem(x, precision, train, self.base_width, bits)
        ops = _layout(self, sel, precision)
        x, channels = ops.tile(x), self.base_width
        p_prev = self.base_width  # the first conv's partial reads the full stem copy
        for stage, blocks in enumerate(self.stage_sizes):
            features, p = self.base_width * 2**stage, partial[stage]
            for block in range(blocks):
                strides = (2, 2) if stage > 0 and block == 0 else (1, 1)
                name = f"stage{stage}_block{block}"
                last = stage == len(self.stage_sizes) - 1 and block == blocks - 1
                p_block_out = features if last else p
                projection = strides != (1, 1) or channels != features
                x = _basic_block(
                    ops, conv, bn, x, train, name=name, features=features, strides=strides,
                    p_in=p_prev, p=p, p_out=p_block_out, projection=projection,
                    shortcut_padding="VALID",
                    shuffle=shuffles[name] if projection and self.channel_shuffle else None,
                )  # fmt: skip
                p_prev, channels = p, features
            if self.is_mutable_collection("intermediates"):
                self.sow("intermediates", f"stage{stage}", ops.slots(x, channels))
        x = avg_pool_all(ops.merge(x, channels))
        return QuantDense(self.num_classes, spec=FULL_PRECISION, name="classifier")(x, 0)

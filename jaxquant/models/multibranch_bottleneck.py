"""MBQuant's multi-branch ImageNet ResNet-50 (the official ``resnet50_quant``): bottleneck blocks
of `MultiBranchConv`s, partial widths per stage for the block outputs and the bottleneck middle.
Details: docs/methods/mbquant.md
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax

from jaxquant.layers import (
    FULL_PRECISION,
    BranchSelection,
    MultiBranchConv,
    QuantDense,
)
from jaxquant.models.common import avg_pool_all
from jaxquant.models.multibranch import (
    _check_imagenet_stages,
    _check_selection,
    _imagenet_stem,
    _resolve_stage_widths,
)
from jaxquant.models.multibranch_layouts import _layout
from jaxquant.models.multibranch_ops import BranchBatchNorm

# The official code's ResNet-50 partial widths (``oneBit_outchannel`` / ``mid_oneBit``) per stage:
# of the block outputs (256/512/1024/2048 channels: conv3 and the projection shortcut) and of the
# bottleneck middle (64/128/256/512: conv1 and conv2). The last stage's partial is full width.
RESNET50_PARTIAL_WIDTHS = (208, 416, 832, 2048)
RESNET50_MID_PARTIAL_WIDTHS = (40, 80, 160, 320)
EXPANSION = 4


def _bottleneck_block(
    ops, conv, bn, x, train, *, name, mid, features, strides, p_in, pm, p, p_out, projection
):
    """A multi-branch post-activation bottleneck (torchvision v1.5, the stride on the 3x3):
    ``conv0 1x1 -> BN -> ReLU -> conv1 3x3 -> BN -> ReLU -> conv2 1x1 -> BN``, plus the shortcut
    (``[1x1 projection -> BN]`` or the identity), ReLU. ``p_in``: the partial width read;
    ``pm``: the middle's; ``p``: the projection's output; ``p_out``: the block's output (the
    last block's full width)."""
    if projection:
        shortcut = ops.conv(
            conv(features, kernel_size=(1, 1), strides=strides, padding="VALID",
                 partial_in=p_in, partial_out=p, name=f"{name}_shortcut"),
            x,
        )  # fmt: skip
        shortcut = ops.mask(ops.bn(bn(name=f"{name}_shortcut_bn"), shortcut, train, features),
                            features, p)  # fmt: skip
    else:
        shortcut = x
    c0 = conv(mid, kernel_size=(1, 1), padding="VALID", partial_in=p_in, partial_out=pm,
              name=f"{name}_conv0")  # fmt: skip
    out = ops.mask(ops.relu(ops.bn(bn(name=f"{name}_bn0"), ops.conv(c0, x), train, mid)), mid, pm)
    c1 = conv(mid, strides=strides, partial_in=pm, partial_out=pm, name=f"{name}_conv1")
    out = ops.mask(ops.relu(ops.bn(bn(name=f"{name}_bn1"), ops.conv(c1, out), train, mid)), mid, pm)
    c2 = conv(features, kernel_size=(1, 1), padding="VALID", partial_in=pm, partial_out=p_out,
              name=f"{name}_conv2")  # fmt: skip
    out = ops.bn(bn(name=f"{name}_bn2"), ops.conv(c2, out), train, features)
    return ops.mask(ops.relu(ops.add(out, shortcut, features)), features, p_out)


class MultiBranchBottleneckResNet(nn.Module):
    """The official MBQuant ResNet-50 (``stage_sizes`` (3, 4, 6, 3)): FP stem 7x7/2 -> BN -> ReLU
    -> 3x3/2 max-pool, tiled G times; stages of bottleneck blocks (middle ``base_width * 2**s``,
    output 4x that) of `MultiBranchConv`s with multi-branch 1x1 projection shortcuts at each
    stage's first block; mean of the selected chunks, global average pool, FP classifier. No
    channel shuffle (commented out in the code's bottleneck).

    ``partial_widths`` / ``mid_partial_widths``: the partial branch's width per stage of the block
    outputs and of the bottleneck middle (``()``: the code's `RESNET50_PARTIAL_WIDTHS`
    208/416/832/2048 and `RESNET50_MID_PARTIAL_WIDTHS` 40/80/160/320, times ``base_width / 64``).
    ``base_width`` other than 64 is for small tests. (The code's loader of pretrained weights
    for ResNet-50 is broken as released; like ResNet-18, this trains from scratch.)"""

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    num_classes: int = 1000
    bits: tuple[int, ...] = (2, 4, 6, 8)
    selection: BranchSelection | None = None
    partial_widths: Sequence[int] = ()
    mid_partial_widths: Sequence[int] = ()
    base_width: int = 64

    def resolved_partial_widths(self) -> tuple[int, ...]:
        """The block-output partial widths, then the middle ones (8 values)."""
        _check_imagenet_stages(self.stage_sizes)
        mids = tuple(self.base_width * 2**s for s in range(4))
        outs = tuple(EXPANSION * m for m in mids)
        return _resolve_stage_widths(
            self.partial_widths, RESNET50_PARTIAL_WIDTHS, self.base_width, outs, "partial_widths"
        ) + _resolve_stage_widths(
            self.mid_partial_widths,
            RESNET50_MID_PARTIAL_WIDTHS,
            self.base_width,
            mids,
            "mid_partial_widths",
        )

    @nn.compact
    def __call__(self, x: jax.Array, precision, train: bool = False) -> jax.Array:
        sel = _check_selection(self.selection, self.bits)
        resolved = self.resolved_partial_widths()
        partial, mid_partial = resolved[:4], resolved[4:]
        bits = tuple(self.bits)
        bn = functools.partial(BranchBatchNorm, num_precisions=len(bits))
        conv = functools.partial(
            MultiBranchConv, selection=sel, bits=bits, padding=((1, 1), (1, 1))
        )
        x = _imagenet_stem(x, precision, train, self.base_width, bits)
        ops = _layout(self, sel, precision)
        x, channels = ops.tile(x), self.base_width
        p_prev = self.base_width  # the first block's partial reads the full stem copy
        for stage, blocks in enumerate(self.stage_sizes):
            mid = self.base_width * 2**stage
            features, p, pm = EXPANSION * mid, partial[stage], mid_partial[stage]
            for block in range(blocks):
                strides = (2, 2) if stage > 0 and block == 0 else (1, 1)
                last = stage == len(self.stage_sizes) - 1 and block == blocks - 1
                x = _bottleneck_block(
                    ops, conv, bn, x, train, name=f"stage{stage}_block{block}", mid=mid,
                    features=features, strides=strides, p_in=p_prev, pm=pm, p=p,
                    p_out=features if last else p,
                    projection=strides != (1, 1) or channels != features,
                )  # fmt: skip
                p_prev, channels = p, features
        x = avg_pool_all(ops.merge(x, channels))
        return QuantDense(self.num_classes, spec=FULL_PRECISION, name="classifier")(x, 0)

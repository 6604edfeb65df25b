"""ImageNet ResNet-18/34 (basic blocks, post-activation) with quantized body convs.

Stem: 7x7 stride-2 conv (FP by default) -> BN -> ReLU -> 3x3 stride-2 max-pool; four stages of
basic blocks (64/128/256/512 channels); 1x1 projection shortcuts (quantized by flag); FP classifier.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from jaxquant.layers import FULL_PRECISION, QuantSpec
from jaxquant.models.common import (
    avg_pool_all,
    first_conv,
    last_dense,
    layer_factories,
    max_pool,
    relu,
)


class ResNet(nn.Module):
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    num_classes: int = 1000
    bits: tuple[int, ...] = (32,)
    spec: QuantSpec = QuantSpec()
    quantize_shortcut: bool = True
    first_last_bits: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, precision, train: bool = False) -> jax.Array:
        conv, bn = layer_factories(self.bits, self.spec)
        shortcut_conv, _ = layer_factories(
            self.bits, self.spec if self.quantize_shortcut else FULL_PRECISION
        )
        x = first_conv(64, (7, 7), (2, 2), self.first_last_bits, self.spec)(x, 0)
        x = max_pool(relu(bn(name="stem_bn")(x, precision, train)))
        for stage, blocks in enumerate(self.stage_sizes):
            features = 64 * 2**stage
            for block in range(blocks):
                strides = (2, 2) if stage > 0 and block == 0 else (1, 1)
                name = f"stage{stage}_block{block}"
                shortcut = x
                if strides != (1, 1) or x.shape[-1] != features:
                    shortcut = shortcut_conv(features, (1, 1), strides, name=f"{name}_shortcut")(
                        x, precision
                    )
                    shortcut = bn(name=f"{name}_shortcut_bn")(shortcut, precision, train)
                out = conv(features, (3, 3), strides, name=f"{name}_conv0")(x, precision)
                out = relu(bn(name=f"{name}_bn0")(out, precision, train))
                out = conv(features, (3, 3), name=f"{name}_conv1")(out, precision)
                x = relu(bn(name=f"{name}_bn1")(out, precision, train) + shortcut)
        return last_dense(self.num_classes, self.first_last_bits, self.spec)(avg_pool_all(x), 0)


def ResNet18(**kwargs) -> ResNet:  # noqa: N802 (a model constructor, named like the model)
    return ResNet(stage_sizes=(2, 2, 2, 2), **kwargs)


def ResNet34(**kwargs) -> ResNet:  # noqa: N802
    return ResNet(stage_sizes=(3, 4, 6, 3), **kwargs)

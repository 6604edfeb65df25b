"""CIFAR ResNets (depth 6n+2: ResNet-20, -32, ...) with a width multiplier.

``preactivation=True`` is Any-Precision's ``resnet20q`` (BN -> ReLU -> quantize -> conv; FP
1x1 shortcut conv with its own BN; a final BN -> ReLU before pooling; Any-Precision uses
``width=5``, i.e. 80/160/320 channels). ``preactivation=False`` is He et al.'s original
post-activation ResNet-20 (conv -> BN -> ReLU; 1x1 conv + BN projection shortcut), the model
of LSQ/MBQuant/BitSplit CIFAR experiments.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxquant.layers import FULL_PRECISION, QuantSpec
from jaxquant.models.common import avg_pool_all, first_conv, last_dense, layer_factories, relu


class CifarResNet(nn.Module):
    depth: int = 20
    width: int = 1
    num_classes: int = 10
    bits: tuple[int, ...] = (32,)
    spec: QuantSpec = QuantSpec()
    preactivation: bool = False
    quantize_shortcut: bool = False
    first_last_bits: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, precision, train: bool = False) -> jax.Array:
        if (self.depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56), got {self.depth}")
        blocks = (self.depth - 2) // 6
        conv, bn = layer_factories(self.bits, self.spec)
        shortcut_conv, _ = layer_factories(
            self.bits, self.spec if self.quantize_shortcut else FULL_PRECISION
        )
        x = first_conv(16 * self.width, (3, 3), (1, 1), self.first_last_bits, self.spec)(x, 0)
        if not self.preactivation:
            x = relu(bn(name="stem_bn")(x, precision, train))
        for stage in range(3):
            features = 16 * self.width * 2**stage
            for block in range(blocks):
                strides = (2, 2) if stage > 0 and block == 0 else (1, 1)
                name = f"stage{stage}_block{block}"
                needs_projection = strides != (1, 1) or x.shape[-1] != features

                def shortcut_of(inputs):  # identity, or a 1x1 projection with its BN
                    if not needs_projection:
                        return x
                    projected = shortcut_conv(features, (1, 1), strides, name=f"{name}_shortcut")(
                        inputs, precision
                    )
                    return bn(name=f"{name}_shortcut_bn")(projected, precision, train)

                if self.preactivation:
                    out = relu(bn(name=f"{name}_bn0")(x, precision, train))
                    shortcut = shortcut_of(out)  # Any-Precision projects the activated input
                    out = conv(features, (3, 3), strides, name=f"{name}_conv0")(out, precision)
                    out = relu(bn(name=f"{name}_bn1")(out, precision, train))
                    x = conv(features, (3, 3), name=f"{name}_conv1")(out, precision) + shortcut
                else:
                    shortcut = shortcut_of(x)
                    out = conv(features, (3, 3), strides, name=f"{name}_conv0")(x, precision)
                    out = relu(bn(name=f"{name}_bn0")(out, precision, train))
                    out = conv(features, (3, 3), name=f"{name}_conv1")(out, precision)
                    x = relu(bn(name=f"{name}_bn1")(out, precision, train) + shortcut)
        if self.preactivation:
            x = relu(bn(name="final_bn")(x, precision, train))
        return last_dense(self.num_classes, self.first_last_bits, self.spec)(avg_pool_all(x), 0)

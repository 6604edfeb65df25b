"""ImageNet MobileNetV2 (Sandler et al., CVPR 2018) in torchvision's layout, with quantized convs.

Stem 3x3/2 conv (FP by default), seventeen inverted-residual blocks (`INVERTED_RESIDUAL_SETTING`:
1x1 expansion -> 3x3 depthwise -> linear 1x1 projection, BN and ReLU6 between), a 1x1 conv to
1280, global average pooling and the classifier (FP by default); channels ``width`` times these,
rounded to multiples of 8 as torchvision (3,504,872 FP parameters at ``width=1``, 1000 classes;
no dropout). Convs reading ReLU6 outputs have unsigned LSQ input quantizers, those reading a
block's linear output signed ones. Details: docs/models.md
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

from jaxquant.layers import QuantSpec
from jaxquant.models.common import avg_pool_all, first_conv, last_dense, layer_factories

INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
"""``(expansion t, output channels c, repeats n, first stride s)`` per stage, from the paper's
Table 2."""

relu6 = jax.nn.relu6


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's channel rounding: the nearest multiple of ``divisor``, never below 90% of
    ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class MobileNetV2(nn.Module):
    num_classes: int = 1000
    width: float = 1.0
    bits: tuple[int, ...] = (32,)
    spec: QuantSpec = QuantSpec()
    first_last_bits: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, precision, train: bool = False) -> jax.Array:
        conv, bn = layer_factories(self.bits, self.spec)
        signed = (
            self.spec.activation.for_signed_inputs()
        )  # the linear bottleneck's output is signed
        signed_spec = (
            self.spec if signed is None else dataclasses.replace(self.spec, activation=signed)
        )
        signed_conv, _ = layer_factories(self.bits, signed_spec)
        channels = make_divisible(32 * self.width)
        x = first_conv(channels, (3, 3), (2, 2), self.first_last_bits, self.spec)(x, 0)
        x = relu6(bn(name="stem_bn")(x, precision, train))
        index = 0
        for expansion, out_channels, repeats, first_stride in INVERTED_RESIDUAL_SETTING:
            out_channels = make_divisible(out_channels * self.width)
            for repeat in range(repeats):
                stride = first_stride if repeat == 0 else 1
                name = f"block{index}"
                hidden = x.shape[-1] * expansion
                out = x
                if expansion != 1:
                    out = signed_conv(hidden, (1, 1), name=f"{name}_expand")(out, precision)
                    out = relu6(bn(name=f"{name}_expand_bn")(out, precision, train))
                out = conv(
                    hidden,
                    (3, 3),
                    (stride, stride),
                    feature_group_count=hidden,
                    name=f"{name}_depthwise",
                )(out, precision)
                out = relu6(bn(name=f"{name}_depthwise_bn")(out, precision, train))
                out = conv(out_channels, (1, 1), name=f"{name}_project")(out, precision)
                out = bn(name=f"{name}_project_bn")(out, precision, train)
                x = x + out if stride == 1 and x.shape[-1] == out_channels else out
                index += 1
        last_channels = make_divisible(1280 * max(1.0, self.width))
        x = signed_conv(last_channels, (1, 1), name="last_conv")(x, precision)
        x = relu6(bn(name="last_bn")(x, precision, train))
        return last_dense(self.num_classes, self.first_last_bits, self.spec)(avg_pool_all(x), 0)

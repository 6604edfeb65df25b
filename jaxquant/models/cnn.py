"""A small CNN for 8x8 (digits) and 28x28 (MNIST, Fashion-MNIST) inputs."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from jaxquant.layers import QuantSpec
from jaxquant.models.common import (
    avg_pool_all,
    first_conv,
    last_dense,
    layer_factories,
    max_pool_2x2,
    relu,
)


class SmallCNN(nn.Module):
    """FP stem conv -> BN -> ReLU (-> 2x2 max-pool if ``stem_pool``) -> [quantized 3x3 conv ->
    switchable BN -> ReLU] per width, a 2x2 max-pool after every ``pool_every`` body convs while
    the map is at least 4x4 -> global average -> FP classifier."""

    num_classes: int = 10
    bits: tuple[int, ...] = (32,)
    spec: QuantSpec = QuantSpec()
    widths: Sequence[int] = (32, 64, 64)
    pool_every: int = 1
    stem_pool: bool = False
    first_last_bits: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, precision, train: bool = False) -> jax.Array:
        conv, bn = layer_factories(self.bits, self.spec)
        x = first_conv(self.widths[0], (3, 3), (1, 1), self.first_last_bits, self.spec)(x, 0)
        x = relu(bn(name="stem_bn")(x, precision, train))
        if self.stem_pool:
            x = max_pool_2x2(x)
        for i, width in enumerate(self.widths[1:]):
            x = conv(width, (3, 3), name=f"conv{i}")(x, precision)
            x = relu(bn(name=f"bn{i}")(x, precision, train))
            if (i + 1) % self.pool_every == 0 and min(x.shape[1:3]) >= 4:
                x = max_pool_2x2(x)
        return last_dense(self.num_classes, self.first_last_bits, self.spec)(avg_pool_all(x), 0)

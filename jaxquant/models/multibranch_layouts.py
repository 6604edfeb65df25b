"""The two layouts of the multi-branch body (`jaxquant.models.multibranch`, "two layouts, one
function"): `_Slots`, every branch in its slot with masks (a traced precision, and `init`), and
`_Branches`, the branch-list layout of a static precision; `_layout` picks one. A model calls
the same operations on either (``pool`` takes the model's 2x2 pool, `models.common.max_pool_2x2`,
as the models' module names it)."""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.layers import INTERVAL_INIT, BranchSelection, MultiBranchConv
from jaxquant.models.common import relu
from jaxquant.models.multibranch_ops import (
    BranchBatchNorm,
    branch_channel_mask,
    merge_branches,
    shuffle_branch_channels,
    tile_branches,
)


class _Slots:
    """Today's layout, ``(N, H, W, G, C)``: every branch in its slot, selection by masks (a traced
    precision, and `init`); a static precision's convs still skip the deselected branches."""

    def __init__(self, selection: BranchSelection, precision):
        self.selection, self.precision = selection, precision

    def tile(self, x):
        return tile_branches(x, self.selection.num_branches)

    def conv(self, module: MultiBranchConv, x):
        return module(x, self.precision)

    def bn(self, module: BranchBatchNorm, x, train: bool, channels: int):
        return module(x, self.precision, train)

    def relu(self, x):
        return relu(x)

    def mask(
        self, x, channels: int, width: int
    ):  # 0/1 in x's dtype: a bfloat16 body stays bfloat16
        return x * branch_channel_mask(self.selection, self.precision, channels, width).astype(
            x.dtype
        )

    def add(self, out, shortcut, channels: int):
        return out + shortcut

    def pool(self, x, pool):
        return _pool_branches(x, pool)

    def merge(self, x, channels: int):
        return merge_branches(x, self.selection, self.precision).astype(x.dtype)

    def shuffle(self, x, indices: np.ndarray, channels: int):
        return shuffle_branch_channels(x, indices, self.precision)

    def slots(self, x, channels: int):
        return x


class _Branches:
    """The branch-list layout of a static (Python int) precision: a list of ``(N, H, W, C)`` chunks,
    the k full branches (ascending) then the partial branch's first w channels (the official
    code's concatenation order, kept apart), so conv, BatchNorm, ReLU, residual and merge touch
    only what the precision reads. A channel the `_Slots` layout masks to zero is simply absent
    here (exactly zero there, wherever it is read), so both compute the same function."""

    def __init__(self, selection: BranchSelection, precision: int):
        self.selection, self.precision = selection, int(precision)
        self.order = selection.order(self.precision)
        self.partial = selection.partial[self.precision]

    def _fit(self, xs, width: int):
        """The partial chunk (the last) cut or zero-padded to ``width`` (exact: past its width it
        is zero)."""
        if self.partial < 0:
            return list(xs)
        *full, part = xs
        have = part.shape[-1]
        if have > width:
            part = part[..., :width]
        elif have < width:
            part = jnp.pad(part, [(0, 0)] * (part.ndim - 1) + [(0, width - have)])
        return [*full, part]

    def tile(self, x):
        return [x] * len(self.order)

    def conv(self, module: MultiBranchConv, xs):
        return module.selected_branches(xs, self.precision)

    def bn(self, module: BranchBatchNorm, xs, train: bool, channels: int):
        ranges = tuple((b * channels, b * channels + x.shape[-1]) for b, x in zip(self.order, xs))
        return module(
            xs, self.precision, train, selected=(self.selection.num_branches * channels, ranges)
        )

    def relu(self, xs):
        return [relu(x) for x in xs]

    def mask(self, xs, channels: int, width: int):
        # Only ever after a conv that wrote ``width`` partial channels (and its BatchNorm), or
        # wider: the slots layout's masked channels are the ones cut here.
        assert self.partial < 0 or xs[-1].shape[-1] >= width
        return self._fit(xs, width)

    def add(self, out, shortcut, channels: int):
        return [o + s for o, s in zip(out, self._fit(shortcut, out[-1].shape[-1]))]

    def pool(self, xs, pool):
        return [pool(x) for x in xs]

    def merge(self, xs, channels: int):
        return functools.reduce(jnp.add, self._fit(xs, channels)) / len(self.order)

    def _flat_order(self, xs, channels: int) -> list[int]:
        """Flattened slot-layout index of every channel of the chunks, in order."""
        return [b * channels + c for b, x in zip(self.order, xs) for c in range(x.shape[-1])]

    def shuffle(self, xs, indices: np.ndarray, channels: int):
        row, order = np.asarray(indices)[self.precision], self._flat_order(xs, channels)
        position = {flat: i for i, flat in enumerate(order)}
        permutation = np.asarray([position[int(row[flat])] for flat in order])
        if np.array_equal(permutation, np.arange(permutation.size)):
            return xs
        shuffled = jnp.take(jnp.concatenate(xs, axis=-1), permutation, axis=-1)
        return jnp.split(shuffled, np.cumsum([x.shape[-1] for x in xs])[:-1], axis=-1)

    def slots(self, xs, channels: int):
        """Back to ``(N, H, W, G, C)`` with zeros where the slots layout masks."""
        x = jnp.concatenate(xs, axis=-1)
        flat = jnp.zeros(x.shape[:-1] + (self.selection.num_branches * channels,), x.dtype)
        flat = flat.at[..., np.asarray(self._flat_order(xs, channels))].set(x)
        return flat.reshape(x.shape[:-1] + (self.selection.num_branches, channels))


def _layout(module: nn.Module, selection: BranchSelection, precision):
    """`_Branches` for a static precision in an ordinary apply; `_Slots` for a traced one, at
    `init` (which creates every parameter through `MultiBranchConv.__call__`) and in the
    data-dependent interval init (`MultiBranchConv._initial_intervals` reads all slots)."""
    if (
        isinstance(precision, (int, np.integer))
        and not module.is_initializing()
        and not module.is_mutable_collection(INTERVAL_INIT)
    ):
        return _Branches(selection, precision)
    return _Slots(selection, precision)


def _pool_branches(x: jax.Array, pool: Callable) -> jax.Array:
    """``pool`` (a 2x2 pool of ``(N, H, W, C)``) of every branch slot."""
    n, h, w, g, c = x.shape
    return pool(x.reshape(n, h, w, g * c)).reshape(n, h // 2, w // 2, g, c)

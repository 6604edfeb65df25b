"""The multi-branch body's building blocks on the slot layout ``(N, H, W, G, C)``: branch masks,
the merge, tiling, the official code's channel shuffle, and the BatchNorm over the flattened
``G * C`` channels (`jaxquant.models.multibranch` wires them into models)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.errors import ConfigError
from jaxquant.layers import BranchSelection, PrecisionBatchNorm


def branch_channel_mask(
    selection: BranchSelection, precision, channels: int, partial_out: int
) -> jax.Array:
    """``(G, channels)`` float mask at a (traced) precision index: 1 on the full branches, on the
    first ``partial_out`` channels of the partial branch, 0 elsewhere."""
    full, partial, _ = selection.gather(precision)
    in_slice = (jnp.arange(channels) < partial_out).astype(jnp.float32)
    return full[:, None] + partial[:, None] * in_slice[None, :]


def merge_branches(x: jax.Array, selection: BranchSelection, precision) -> jax.Array:
    """``(..., G, C) -> (..., C)``: the mean over the selected chunks (full branches and the
    partial one, which by then writes the full width); deselected chunks are zero already."""
    full, partial, _ = selection.gather(precision)
    return x.sum(axis=-2) / (full.sum() + partial.sum())


def tile_branches(x: jax.Array, num_branches: int) -> jax.Array:
    """``(N, H, W, C) -> (N, H, W, G, C)``: every branch gets a copy."""
    return jnp.broadcast_to(x[..., None, :], x.shape[:-1] + (num_branches, x.shape[-1]))


def shuffle_groups(b: int, channels: int) -> int:
    """The official ``channel_shuffle``'s group count at b bits over ``channels`` selected channels
    (the partial ones included): ``b // 2``, except at b = 7: 4 if ``channels % 4 == 0`` else 3."""
    if b == 7:
        return 4 if channels % 4 == 0 else 3
    return b // 2


def channel_shuffle_indices(
    selection: BranchSelection, bits: Sequence[int], channels: int, partial_out: int
) -> np.ndarray:
    """``(P, G * channels)`` int32 gather indices of the official code's ShuffleNet-style
    ``channel_shuffle`` in our ``(G, C)`` layout: row p maps each flattened output channel to the
    input channel it takes at precision p (`shuffle_branch_channels` applies it).

    The code works on the *selected* channels concatenated (the full branches in order, then the
    partial branch's first ``partial_out``): ``C'`` of them, reshaped ``(g, C'/g)``, transposed and
    flattened, ``g = shuffle_groups(b, C')`` (a no-op for b in {2, 3}). Here the same permutation
    moves the selected positions among themselves; every deselected channel maps to itself (it is
    masked later). Mixes the branches: channel ``j*g + i`` of the result is ``i*C'/g + j`` of the
    input, so every chunk the next layer reads comes from all g groups.
    """
    g = selection.num_branches
    rows = []
    for p, b in enumerate(bits):
        order = [
            branch * channels + c
            for branch in range(g)
            if selection.full[p][branch]
            for c in range(channels)
        ]
        if selection.partial[p] >= 0:
            order += [selection.partial[p] * channels + c for c in range(partial_out)]
        order = np.asarray(order, np.int64)
        groups = shuffle_groups(int(b), order.size)
        if order.size % groups:
            raise ConfigError(
                f"channel_shuffle at b={b} splits {order.size} selected channels into {groups} "
                f"groups, which does not divide; choose partial widths that make it divide "
                f"(or channel_shuffle=False)"
            )
        permutation = np.arange(order.size).reshape(groups, order.size // groups).T.reshape(-1)
        row = np.arange(g * channels)
        row[order] = order[permutation]
        rows.append(row)
    return np.stack(rows).astype(np.int32)


def shuffle_branch_channels(x: jax.Array, indices: np.ndarray, precision) -> jax.Array:
    """``(..., G, C)`` channels gathered with row ``precision`` (traced works) of
    `channel_shuffle_indices`; a static precision whose row is the identity returns ``x``."""
    if isinstance(precision, (int, np.integer)):
        row = np.asarray(indices)[precision]
        if np.array_equal(row, np.arange(row.size)):
            return x
    else:
        row = jnp.asarray(indices)[precision]
    flat = x.reshape(x.shape[:-2] + (x.shape[-2] * x.shape[-1],))
    return jnp.take(flat, row, axis=-1).reshape(x.shape)


class BranchBatchNorm(nn.Module):
    """`PrecisionBatchNorm` over the flattened ``G * C`` channels of ``(N, H, W, G, C)`` inputs
    (private to each precision, as the official ``SwitchableBatchNorm2d``).

    ``selected=(G * C, ranges)``: the input is the branch-list layout of a static precision (a
    list of ``(N, H, W, n_i)`` chunks), chunk i the flattened channels ``ranges[i]``
    (``(start, stop)``); only those channels' parameters are read and only their running
    statistics move."""

    num_precisions: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, precision, train: bool, selected=None) -> jax.Array:
        if selected is not None:
            total, ranges = selected
            return _BranchListBatchNorm(
                num_precisions=self.num_precisions, total=total, ranges=tuple(ranges), name="bn"
            )(x, precision, train)
        flat = x.reshape(x.shape[:-2] + (x.shape[-2] * x.shape[-1],))
        y = PrecisionBatchNorm(num_precisions=self.num_precisions, name="bn")(
            flat, precision, train
        )
        return y.reshape(x.shape)


class _BranchListBatchNorm(PrecisionBatchNorm):
    """`PrecisionBatchNorm`'s variables (``(P, total)``) and formulas on the branch-list layout
    of a static precision: the input is a list of chunks, chunk i holding the flattened channels
    ``ranges[i]`` (``(start, stop)``); only those channels' parameters are read and only their
    running statistics move."""

    total: int = 0
    ranges: tuple[tuple[int, int], ...] = ()

    def _num_channels(self, x) -> int:
        return self.total

    def _take(self, value: jax.Array, precision: int) -> jax.Array:
        parts = [value[precision, a:b] for a, b in self.ranges]
        return parts[0] if len(parts) == 1 else jnp.concatenate(parts)

    def _put(self, value: jax.Array, precision: int, new: jax.Array) -> jax.Array:
        start = 0
        for a, b in self.ranges:
            value = value.at[precision, a:b].set(new[start : start + b - a])
            start += b - a
        return value

    def _chunks(self, xs, *per_channel):
        """Each chunk with its slice of every per-channel vector in ``per_channel``."""
        start = 0
        for x in xs:
            part = slice(start, start + x.shape[-1])
            start = part.stop
            yield (x,) + tuple(v[part] for v in per_channel)

    def _normalize(self, xs, mean, var, scale, bias):
        return [
            PrecisionBatchNorm._normalize(self, *chunk)
            for chunk in self._chunks(xs, mean, var, scale, bias)
        ]

    def _train(self, xs, scale, bias):
        ys, means, variances = zip(
            *(PrecisionBatchNorm._train(self, *chunk) for chunk in self._chunks(xs, scale, bias))
        )
        return list(ys), jnp.concatenate(means), jnp.concatenate(variances)

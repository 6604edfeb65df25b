"""Multi-branch models (MBQuant's topology): G branches of fixed 2-bit weights in every body conv.

Activations of the body are ``(N, H, W, G, C)``: every branch keeps its own slot, so shapes never
depend on the precision and one trace (or one ``jax.vmap`` over the precision index) serves every
bit-width. Which branches a precision uses is data: a `jaxquant.layers.BranchSelection` (the
tables are the method's, `jaxquant.methods.mbquant.branch_selection`).

**Two layouts, one function.** With a traced precision (``precision_mode='vmap'``), at `init`
and in the data-dependent interval init, the body runs in the slot layout above with masks.
With a static Python-int precision (``precision_mode='unroll'``, MBQuant's default) it runs in
the *branch-list layout*: a list of ``(N, H, W, C)`` arrays, the k full branches (ascending)
then the partial branch's first w channels (the official code's concatenation order, kept as
separate arrays so that no slice or concatenation copies them), through conv
(`MultiBranchConv.selected_branches`, one conv per branch), BatchNorm (the precision's row, the
selected channels' parameters and statistics only), ReLU, residual and merge; what the slot
layout masks to zero is simply absent. At bits 2/4/6/8 that is 10 of the 16 branch slots
(speed: ``benchmarks/README.md``). The one difference: in the branch-list layout the running
statistics of a precision's *deselected* channels stay unchanged, where the slot layout drifts
them towards mean 0, var 0 of their zero inputs; they are never read at that precision (its own
row, other channels), so logits, gradients and every statistic that is read are the same
(tested against the traced path).

The pieces, as in the official code (digest part A2) unless said otherwise:

- **Stem** full precision and shared: conv -> BatchNorm -> ReLU, then *tiled* G times, so every
  branch reads an identical copy (the ImageNet convention; the CIFAR code's stem of ``16 G``
  channels read at a branch offset is a quirk we do not copy). Its BatchNorm is per precision, as
  in the library's other models (the official code shares it; the stem's input is full precision
  and the same at every b, so only the affine parameters differ).
- **Body** convs are `MultiBranchConv` (2-bit weights, b-bit inputs). Each is followed by a
  BatchNorm private to the precision over the ``G * C`` channels (`PrecisionBatchNorm` on the
  flattened branch axis), then ReLU.
- **Masking.** A deselected branch's conv output is exactly zero, but BatchNorm turns zeros into
  ``beta`` (and a shortcut's BatchNorm adds its ``beta``), so the model multiplies by the
  branch mask *after* BN and ReLU (after the residual add and ReLU in a block): deselected
  branches, and the partial branch's channels beyond its width ``p_out``, are exactly zero
  wherever a layer reads them (a projection shortcut is masked after its BatchNorm too, before
  the add). Their parameters get exactly zero gradient and changing them
  leaves the logits unchanged (tested). Deselected channels' BatchNorm running statistics
  move in the slot layout (towards mean 0, var 0 of their zero inputs) and stay put in the
  branch-list layout; either way they are never read at that precision.
- **Partial branch** (odd b): the top-left slice of the next branch. Per conv it reads
  ``partial_in`` and writes ``partial_out`` channels of its slot: the first conv reads the full
  stem copy, a stage-entry conv (and its 1x1 shortcut) reads the previous stage's partial width,
  and the body's **last conv writes the full width**, so the partial branch joins the final
  mean as a full member (its identity there is the zero-padded ``p``-channel input, the code's
  ``addZeroS``).
- **Merge**: the mean over the selected chunks after the last block's ReLU,
  ``sum_g x_g / (#full + [partial])`` (the official code's mean over ``ceil(b/2)`` chunks; the
  sum line there is commented out), then global average pooling and the FP classifier (shared).
- **Shortcuts**: identity per branch (each branch adds its own input); at a stride-2 or
  width-changing block, a multi-branch 1x1 conv + BatchNorm (quantized like the body, counted in
  `methods.mbquant.cifar_resnet_convs`' and `resnet18_convs`' BitOPs).
- **Channel shuffle** (`MultiBranchResNet`, ``channel_shuffle=True``, off by default): the
  official ImageNet ResNet code shuffles the residual path's channels in every block with a
  downsample, which mixes the branches (the paper calls them independent); see
  `channel_shuffle_indices`. The CIFAR code has none.
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.errors import ConfigError
from jaxquant.layers import (FULL_PRECISION, INTERVAL_INIT, BranchSelection, MultiBranchConv, PrecisionBatchNorm,
                             QuantConv, QuantDense)
from jaxquant.models.common import avg_pool_all, max_pool_2x2, relu


# The partial branch's width per stage of the CIFAR ResNet (16/32/64 channels): half a branch's
# MACs, derived by `jaxquant.methods.mbquant.derive_partial_widths` (which the tests re-run).
CIFAR_RESNET20_PARTIAL_WIDTHS = (11, 23, 43)
# The official code's partial widths (``oneBit_outchannel``) per stage of the ImageNet ResNets
# (64/128/256/512 channels): partial MACs / branch MACs = 0.486 (ResNet-18) and 0.489 (ResNet-34),
# so odd-b BitOPs are 0.991-0.997 of b*b (`methods.mbquant.resnet18_convs` counts ResNet-18).
RESNET18_PARTIAL_WIDTHS = (40, 76, 184, 396)
RESNET34_PARTIAL_WIDTHS = (39, 78, 188, 400)


def branch_channel_mask(selection: BranchSelection, precision, channels: int, partial_out: int) -> jax.Array:
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


def channel_shuffle_indices(selection: BranchSelection, bits: Sequence[int], channels: int,
                            partial_out: int) -> np.ndarray:
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
        order = [branch * channels + c for branch in range(g) if selection.full[p][branch] for c in range(channels)]
        if selection.partial[p] >= 0:
            order += [selection.partial[p] * channels + c for c in range(partial_out)]
        order = np.asarray(order, np.int64)
        groups = shuffle_groups(int(b), order.size)
        if order.size % groups:
            raise ConfigError(f"channel_shuffle at b={b} splits {order.size} selected channels into {groups} "
                              f"groups, which does not divide; choose partial widths that make it divide "
                              f"(or channel_shuffle=False)")
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
            return _BranchListBatchNorm(num_precisions=self.num_precisions, total=total, ranges=tuple(ranges),
                                        name="bn")(x, precision, train)
        flat = x.reshape(x.shape[:-2] + (x.shape[-2] * x.shape[-1],))
        y = PrecisionBatchNorm(num_precisions=self.num_precisions, name="bn")(flat, precision, train)
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
            value = value.at[precision, a:b].set(new[start:start + b - a])
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
        return [PrecisionBatchNorm._normalize(self, *chunk) for chunk in self._chunks(xs, mean, var, scale, bias)]

    def _train(self, xs, scale, bias):
        ys, means, variances = zip(*(PrecisionBatchNorm._train(self, *chunk) for chunk in self._chunks(xs, scale, bias)))
        return list(ys), jnp.concatenate(means), jnp.concatenate(variances)


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

    def mask(self, x, channels: int, width: int):  # 0/1 in x's dtype: a bfloat16 body stays bfloat16
        return x * branch_channel_mask(self.selection, self.precision, channels, width).astype(x.dtype)

    def add(self, out, shortcut, channels: int):
        return out + shortcut

    def pool(self, x):
        return _pool_branches(x)

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
        return module(xs, self.precision, train, selected=(self.selection.num_branches * channels, ranges))

    def relu(self, xs):
        return [relu(x) for x in xs]

    def mask(self, xs, channels: int, width: int):
        # Only ever after a conv that wrote ``width`` partial channels (and its BatchNorm), or
        # wider: the slots layout's masked channels are the ones cut here.
        assert self.partial < 0 or xs[-1].shape[-1] >= width
        return self._fit(xs, width)

    def add(self, out, shortcut, channels: int):
        return [o + s for o, s in zip(out, self._fit(shortcut, out[-1].shape[-1]))]

    def pool(self, xs):
        return [max_pool_2x2(x) for x in xs]

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
    if (isinstance(precision, (int, np.integer)) and not module.is_initializing()
            and not module.is_mutable_collection(INTERVAL_INIT)):
        return _Branches(selection, precision)
    return _Slots(selection, precision)


def _pool_branches(x: jax.Array) -> jax.Array:
    n, h, w, g, c = x.shape
    return max_pool_2x2(x.reshape(n, h, w, g * c)).reshape(n, h // 2, w // 2, g, c)


def _check_selection(selection: BranchSelection | None, bits: Sequence[int]) -> BranchSelection:
    if selection is None:
        raise ConfigError("a multi-branch model needs a BranchSelection (jaxquant.methods.mbquant.branch_selection)")
    if selection.num_precisions != len(bits):
        raise ConfigError(f"the branch selection has {selection.num_precisions} precisions but bits={tuple(bits)}")
    return selection


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
    conv_batching: str = "auto"       # auto (CPU: unroll, GPU/TPU: native) | unroll | native (layers.precision_conv)
    weight_gradient: str = "auto"

    def resolved_partial_widths(self) -> tuple[int, ...]:
        body = tuple(self.widths[1:])
        if not body:
            raise ConfigError("MultiBranchCNN needs at least one body conv: widths=(stem, conv, ...)")
        if not self.partial_widths:
            return tuple(max(w // 2, 1) for w in body[:-1])
        widths = tuple(int(p) for p in self.partial_widths)
        if len(widths) != len(body) - 1 or not all(0 < p <= w for p, w in zip(widths, body)):
            raise ConfigError(f"partial_widths {widths} must give one width in 1..w per body conv but the last "
                              f"(body widths {body}); or () for half of each")
        return widths

    @nn.compact
    def __call__(self, x: jax.Array, precision, train: bool = False) -> jax.Array:
        sel = _check_selection(self.selection, self.bits)
        partial = self.resolved_partial_widths()
        bn = functools.partial(BranchBatchNorm, num_precisions=len(self.bits))
        x = QuantConv(self.widths[0], (3, 3), use_bias=False, spec=FULL_PRECISION,
                      weight_gradient=self.weight_gradient, name="stem")(x, 0)
        x = relu(PrecisionBatchNorm(num_precisions=len(self.bits), name="stem_bn")(x, precision, train))
        if self.stem_pool:
            x = max_pool_2x2(x)
        ops = _layout(self, sel, precision)
        x = ops.tile(x)
        body = tuple(self.widths[1:])
        p_in = self.widths[0]
        for i, width in enumerate(body):
            p_out = width if i == len(body) - 1 else partial[i]
            x = ops.conv(MultiBranchConv(width, sel, tuple(self.bits), partial_in=p_in, partial_out=p_out,
                                         conv_batching=self.conv_batching, weight_gradient=self.weight_gradient,
                                         name=f"conv{i}"), x)
            x = ops.mask(ops.relu(ops.bn(bn(name=f"bn{i}"), x, train, width)), width, p_out)
            if min(jax.tree.leaves(x)[0].shape[1:3]) >= 4:  # either layout
                x = ops.pool(x)
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
    conv_batching: str = "auto"       # auto (CPU: unroll, GPU/TPU: native) | unroll | native (layers.precision_conv)
    weight_gradient: str = "auto"

    def resolved_partial_widths(self) -> tuple[int, ...]:
        stages = tuple(16 * self.width * 2 ** s for s in range(3))
        if not self.partial_widths:
            return tuple(max(1, round(p * self.width)) for p in CIFAR_RESNET20_PARTIAL_WIDTHS)
        widths = tuple(int(p) for p in self.partial_widths)
        if len(widths) != 3 or not all(0 < p <= c for p, c in zip(widths, stages)):
            raise ConfigError(f"partial_widths {widths} must give one width per stage in 1..{stages}; "
                              f"or () for the derived {CIFAR_RESNET20_PARTIAL_WIDTHS} times width")
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
        conv = functools.partial(MultiBranchConv, selection=sel, bits=bits, conv_batching=self.conv_batching,
                                 weight_gradient=self.weight_gradient)
        stem = 16 * self.width
        x = QuantConv(stem, (3, 3), use_bias=False, spec=FULL_PRECISION, weight_gradient=self.weight_gradient,
                      name="stem")(x, 0)
        x = relu(PrecisionBatchNorm(num_precisions=len(bits), name="stem_bn")(x, precision, train))
        ops = _layout(self, sel, precision)
        x, channels = ops.tile(x), stem
        p_prev = stem  # the first conv's partial reads the full stem copy
        for stage in range(3):
            features, p = 16 * self.width * 2 ** stage, partial[stage]
            for block in range(blocks):
                strides = (2, 2) if stage > 0 and block == 0 else (1, 1)
                name = f"stage{stage}_block{block}"
                last = stage == 2 and block == blocks - 1
                p_block_out = features if last else p
                if strides != (1, 1) or channels != features:
                    shortcut = ops.conv(conv(features, kernel_size=(1, 1), strides=strides, partial_in=p_prev,
                                             partial_out=p, name=f"{name}_shortcut"), x)
                    shortcut = ops.bn(bn(name=f"{name}_shortcut_bn"), shortcut, train, features)
                    # BN(0) = beta: mask, so the partial's channels past p add nothing (the last
                    # block's full-width partial output gets a zero-padded shortcut).
                    shortcut = ops.mask(shortcut, features, p)
                else:
                    shortcut = x  # identity per branch (masked already)
                out = ops.conv(conv(features, strides=strides, partial_in=p_prev, partial_out=p,
                                    name=f"{name}_conv0"), x)
                out = ops.mask(ops.relu(ops.bn(bn(name=f"{name}_bn0"), out, train, features)), features, p)
                out = ops.conv(conv(features, partial_in=p, partial_out=p_block_out, name=f"{name}_conv1"), out)
                out = ops.bn(bn(name=f"{name}_bn1"), out, train, features)
                x = ops.mask(ops.relu(ops.add(out, shortcut, features)), features, p_block_out)
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
    conv_batching: str = "auto"       # auto (CPU: unroll, GPU/TPU: native) | unroll | native (layers.precision_conv)
    weight_gradient: str = "auto"

    def resolved_partial_widths(self) -> tuple[int, ...]:
        if len(self.stage_sizes) != 4 or not all(int(n) >= 1 for n in self.stage_sizes):
            raise ConfigError(f"an ImageNet ResNet has four stages of at least one block, got stage_sizes "
                              f"{tuple(self.stage_sizes)}")
        stages = tuple(self.base_width * 2 ** s for s in range(4))
        default = RESNET34_PARTIAL_WIDTHS if tuple(self.stage_sizes) == (3, 4, 6, 3) else RESNET18_PARTIAL_WIDTHS
        if not self.partial_widths:
            return tuple(max(1, round(p * self.base_width / 64)) for p in default)
        widths = tuple(int(p) for p in self.partial_widths)
        if len(widths) != 4 or not all(0 < p <= c for p, c in zip(widths, stages)):
            raise ConfigError(f"partial_widths {widths} must give one width per stage in 1..{stages}; "
                              f"or () for the official {default}")
        return widths

    def shuffle_indices(self) -> dict[str, np.ndarray]:
        """``{block name: channel_shuffle_indices}`` of the blocks that shuffle (those with a
        projection shortcut), empty with ``channel_shuffle=False``; raises `ConfigError` if a
        selected channel count does not divide into the code's groups."""
        if not self.channel_shuffle:
            return {}
        sel, partial = _check_selection(self.selection, self.bits), self.resolved_partial_widths()
        blocks = {}
        for stage in range(1, 4):  # stage 0 keeps the stem's width at stride 1: no projection
            features = self.base_width * 2 ** stage
            last = stage == 3 and self.stage_sizes[3] == 1
            blocks[f"stage{stage}_block0"] = channel_shuffle_indices(sel, tuple(self.bits), features,
                                                                     features if last else partial[stage])
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
        conv = functools.partial(MultiBranchConv, selection=sel, bits=bits, padding=((1, 1), (1, 1)),
                                 conv_batching=self.conv_batching, weight_gradient=self.weight_gradient)
        x = QuantConv(self.base_width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False, spec=FULL_PRECISION,
                      weight_gradient=self.weight_gradient, name="stem")(x, 0)
        x = relu(PrecisionBatchNorm(num_precisions=len(bits), name="stem_bn")(x, precision, train))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        ops = _layout(self, sel, precision)
        x, channels = ops.tile(x), self.base_width
        p_prev = self.base_width  # the first conv's partial reads the full stem copy
        for stage, blocks in enumerate(self.stage_sizes):
            features, p = self.base_width * 2 ** stage, partial[stage]
            for block in range(blocks):
                strides = (2, 2) if stage > 0 and block == 0 else (1, 1)
                name = f"stage{stage}_block{block}"
                last = stage == len(self.stage_sizes) - 1 and block == blocks - 1
                p_block_out = features if last else p
                projection = strides != (1, 1) or channels != features
                if projection:
                    shortcut = ops.conv(conv(features, kernel_size=(1, 1), strides=strides, padding="VALID",
                                             partial_in=p_prev, partial_out=p, name=f"{name}_shortcut"), x)
                    shortcut = ops.bn(bn(name=f"{name}_shortcut_bn"), shortcut, train, features)
                    shortcut = ops.mask(shortcut, features, p)  # BN(0) = beta
                else:
                    shortcut = x  # identity per branch (masked already)
                out = ops.conv(conv(features, strides=strides, partial_in=p_prev, partial_out=p,
                                    name=f"{name}_conv0"), x)
                out = ops.mask(ops.relu(ops.bn(bn(name=f"{name}_bn0"), out, train, features)), features, p)
                out = ops.conv(conv(features, partial_in=p, partial_out=p_block_out, name=f"{name}_conv1"), out)
                out = ops.bn(bn(name=f"{name}_bn1"), out, train, features)
                if projection and self.channel_shuffle:
                    out = ops.shuffle(out, shuffles[name], features)
                x = ops.mask(ops.relu(ops.add(out, shortcut, features)), features, p_block_out)
                p_prev, channels = p, features
            if self.is_mutable_collection("intermediates"):
                self.sow("intermediates", f"stage{stage}", ops.slots(x, channels))
        x = avg_pool_all(ops.merge(x, channels))
        return QuantDense(self.num_classes, spec=FULL_PRECISION, name="classifier")(x, 0)

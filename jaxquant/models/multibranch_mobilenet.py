"""MBQuant's multi-branch MobileNetV1 (the official ``mv1_quant``): multi-branch 2-bit pointwise
convs (`MultiBranchConv`), and depthwise 3x3 convs that are **not** 2-bit branches but b-bit
weights per selected chunk (`MultiBranchDepthwiseConv`, the official ``QConv_Tra_Mulit``).
Details: docs/methods/mbquant.md
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxquant import quantizers as q
from jaxquant.errors import ConfigError
from jaxquant.layers import (
    FULL_PRECISION,
    INTERVAL_INIT,
    BranchSelection,
    MultiBranchConv,
    PrecisionBatchNorm,
    QuantConv,
    QuantDense,
)
from jaxquant.layers import conv as lowering
from jaxquant.layers.multibranch import initial_intervals, interval_params
from jaxquant.layers.quant import bits_at, check_precision
from jaxquant.models.common import avg_pool_all, relu
from jaxquant.models.multibranch import _check_selection
from jaxquant.models.multibranch_layouts import _layout
from jaxquant.models.multibranch_ops import BranchBatchNorm

# The official code's MobileNetV1 blocks (channels, blocks, stride) and its partial widths
# (``oneBit``), one per depthwise-separable block: the pointwise conv's partial output width.
MOBILENET_V1_STAGES = ((64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2))
MOBILENET_V1_STEM = 32
MOBILENET_V1_PARTIAL_WIDTHS = (52, 40, 101, 148, 223, 373, 404, 236, 376, 419, 233, 892, 1024)


def depthwise_weight(w: jax.Array, lower, upper, bits) -> jax.Array:
    """The official ``QConv_Tra_Mulit`` weights: ``2 round((2^b-1) clip((w-l)/(u-l), 0, 1)) /
    (2^b-1) - 1``, ``2^b`` levels in [-1, 1] (no zero level; not rescaled: BN absorbs the
    scale). l and u get gradients only from unclipped elements."""
    w = q.as_float32(w)
    return 2.0 * q.interval_unit(w, lower, upper, q.pow2(bits, w.dtype) - 1.0) - 1.0


class MultiBranchDepthwiseConv(nn.Module):
    """A depthwise conv over the G branch slots whose *weights are b-bit*, not 2-bit (the
    official ``QConv_Tra_Mulit``, MobileNetV1's depthwise convs): each selected chunk (a full
    branch, or the partial branch's first ``partial_width`` channels) is one depthwise conv with
    its own weight interval (`depthwise_weight`, ``2^b`` levels) and activation interval
    (`quantizers.interval_activation`, b bits); every other output is exactly zero.

    Slots as `MultiBranchConv`: the weight slot of each chunk is the selection's
    (``weight_slots='position'`` is the code's: one ``[l, u]`` per position, shared across
    bit-widths), activation slots ``g`` per full branch and ``G`` for the partial. The
    data-dependent init (``interval_init`` mutable) sets them as the code's
    ``QConv_Tra_Mulit.initialize``: ``u = 3 std`` of the slot's *own chunk* (the code's correct
    form here, whatever ``weight_interval_std`` says) and ``l = -u``; activations as
    `MultiBranchConv`. Same interface as `MultiBranchConv` (``__call__`` on ``(N, H, W, G, C)``,
    ``selected_branches`` on the branch-list layout). Kernel ``(G, kh, kw, 1, C)``, initialised
    as the code's ``normal(0, sqrt(2 / (k*k*G*C)))``."""

    selection: BranchSelection
    bits: tuple[int, ...]
    partial_width: int | None = None  # channels of the partial chunk (None: all)
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: object = ((1, 1), (1, 1))
    kernel_init: Callable = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    skip_deselected: bool = True

    def _conv(self, x, kernel):
        return lowering.precision_conv(
            x, kernel.astype(x.dtype), strides=self.strides, padding=self.padding,
            groups=x.shape[-1],
        )  # fmt: skip

    @nn.compact
    def __call__(self, x: jax.Array, precision) -> jax.Array:
        sel, g = self.selection, self.selection.num_branches
        check_precision(precision, len(self.bits), f"bits {tuple(self.bits)}")
        if x.ndim != 5 or x.shape[-2] != g:
            raise ConfigError(
                f"MultiBranchDepthwiseConv expects inputs (N, H, W, {g}, C), got {x.shape}"
            )
        c = x.shape[-1]
        p = c if self.partial_width is None else self.partial_width
        if not 0 < p <= c:
            raise ConfigError(f"partial width {p} does not fit {c} channels")
        kernel = self.param("kernel", self.kernel_init, (g, *self.kernel_size, 1, c))
        x32 = q.as_float32(x)
        intervals = interval_params(self, kernel, x32, g)
        if self.is_mutable_collection(INTERVAL_INIT) and not self.is_initializing():
            partial = kernel[..., :p]  # (G, kh, kw, 1, p): the partial's channels
            intervals = initial_intervals(self, x32, kernel, partial, precision, p, intervals)
        bit_width = bits_at(self.bits, precision)
        if self.skip_deselected and isinstance(precision, (int, np.integer)):
            precision = int(precision)
            order, pb = sel.order(precision), sel.partial[precision]
            chunks = [x[..., b, :p] if b == pb else x[..., b, :] for b in order]
            ys = dict(zip(order, self._branch_convs(chunks, kernel, precision, intervals)))
            if pb >= 0:
                ys[pb] = jnp.pad(ys[pb], [(0, 0)] * 3 + [(0, c - p)])
            zeros = jnp.zeros(next(iter(ys.values())).shape[:-1] + (c,), x.dtype)
            return jnp.stack([ys.get(b, zeros) for b in range(g)], axis=3).astype(x.dtype)
        w_lower, w_upper, a_lower, a_upper = intervals
        full, partial, slot = sel.gather(precision)
        shape5 = (g, 1, 1, 1, 1)
        wq = depthwise_weight(
            kernel, w_lower[slot].reshape(shape5), w_upper[slot].reshape(shape5), bit_width
        )
        keep = full[:, None] + partial[:, None] * (jnp.arange(c) < p).astype(jnp.float32)[None]
        wq = wq * keep[:, None, None, None, :]
        act_slot = jnp.where(partial > 0, g, jnp.arange(g))
        lower = a_lower[precision][act_slot][:, None]
        upper = a_upper[precision][act_slot][:, None]
        xq = q.interval_activation(x32, lower, upper, bit_width)
        return jax.vmap(self._conv, in_axes=(3, 0), out_axes=3)(xq, wq).astype(x.dtype)

    def _branch_convs(self, chunks, kernel, precision: int, intervals) -> list:
        w_lower, w_upper, a_lower, a_upper = intervals
        sel, g = self.selection, self.selection.num_branches
        pb, bit_width = sel.partial[precision], bits_at(self.bits, precision)
        outputs = []
        for branch, chunk in zip(sel.order(precision), chunks):
            width = chunk.shape[-1]
            if branch == pb:
                slot, act = sel.partial_weight_slot[precision], g
            else:
                slot, act = sel.full_weight_slot[precision][branch], branch
            wq = depthwise_weight(
                kernel[branch, ..., :width], w_lower[slot], w_upper[slot], bit_width
            )
            xq = q.interval_activation(
                chunk, a_lower[precision, act], a_upper[precision, act], bit_width
            )
            outputs.append(self._conv(xq, wq).astype(chunk.dtype))
        return outputs

    def selected_branches(self, xs: Sequence[jax.Array], precision: int) -> list[jax.Array]:
        """The branch-list layout's forward (`MultiBranchConv.selected_branches`): one
        ``(N, H, W, C)`` input per selected branch in `BranchSelection.order`, the partial's cut
        to ``partial_width``; returns their outputs (the partial's ``partial_width`` wide)."""
        if not isinstance(precision, (int, np.integer)):
            raise ConfigError("selected_branches needs a static (Python int) precision")
        precision = int(precision)
        kernel = self.get_variable("params", "kernel")
        intervals = tuple(
            self.get_variable("params", name)
            for name in ("weight_lower", "weight_upper", "act_lower", "act_upper")
        )
        c = kernel.shape[-1]
        p = c if self.partial_width is None else self.partial_width
        pb = self.selection.partial[precision]
        order = self.selection.order(precision)
        chunks = [x[..., :p] if b == pb else x for b, x in zip(order, xs)]
        return self._branch_convs(chunks, kernel, precision, intervals)


def mobilenet_v1_blocks(width: float = 1.0, partial_widths: Sequence[int] = ()):
    """``(stem, [(in, out, stride, p_in, p_out), ...])``: the 13 depthwise-separable blocks of
    MobileNetV1 at width multiplier ``width``, with the partial widths read (``p_in``: the
    depthwise conv's and the pointwise conv's partial input) and written (``p_out``: the
    pointwise conv's partial output; the last block's is its full width). ``()``: the official
    `MOBILENET_V1_PARTIAL_WIDTHS` times ``width``."""
    scale = lambda c: max(1, int(round(c * width)))  # noqa: E731
    stem = scale(MOBILENET_V1_STEM)
    outs, strides = [], []
    for c, n, s in MOBILENET_V1_STAGES:
        for i in range(n):
            outs.append(scale(c))
            strides.append(s if i == 0 else 1)
    if partial_widths:
        partial = tuple(int(p) for p in partial_widths)
    else:
        partial = tuple(min(o, scale(p)) for o, p in zip(outs, MOBILENET_V1_PARTIAL_WIDTHS))
    if len(partial) != len(outs) or not all(0 < p <= o for p, o in zip(partial, outs)):
        raise ConfigError(
            f"partial_widths {partial} must give one width in 1..c per block (the 13 blocks' "
            f"widths {tuple(outs)}); or () for the official {MOBILENET_V1_PARTIAL_WIDTHS}"
        )
    blocks, c_in, p_in = [], stem, stem
    for i, (c, s, p) in enumerate(zip(outs, strides, partial)):
        p_out = c if i == len(outs) - 1 else p
        blocks.append((c_in, c, s, p_in, p_out))
        c_in, p_in = c, p_out
    return stem, blocks


class MultiBranchMobileNetV1(nn.Module):
    """The official MBQuant MobileNetV1 (``mv1_quant``): FP stem 3x3/2 conv (32 channels) -> BN
    -> ReLU, tiled G times; 13 depthwise-separable blocks, each a `MultiBranchDepthwiseConv`
    3x3 (b-bit weights and inputs per selected chunk) -> per-precision BN -> ReLU -> a
    multi-branch 2-bit `MultiBranchConv` 1x1 -> BN -> ReLU (masks after each, as the other
    multi-branch models); the mean of the selected chunks after the last block, global average
    pool, FP classifier (``normal(0, 0.01)``, as the code). No channel shuffle (commented out in
    the code). ``partial_widths``: the pointwise convs' partial output widths, one per block
    (``()``: the code's `MOBILENET_V1_PARTIAL_WIDTHS` times ``width``; the last is the full
    1024); the first block's depthwise partial reads the full stem copy. ``width`` (a width
    multiplier) other than 1 is for small tests. Weight decay: the code's recipe has none on the
    depthwise kernels and BatchNorm (the config's ``optimizer.no_decay``)."""

    num_classes: int = 1000
    bits: tuple[int, ...] = (2, 4, 6, 8)
    selection: BranchSelection | None = None
    partial_widths: Sequence[int] = ()
    width: float = 1.0

    def resolved_partial_widths(self) -> tuple[int, ...]:
        _, blocks = mobilenet_v1_blocks(self.width, self.partial_widths)
        return tuple(b[4] for b in blocks[:-1]) + (blocks[-1][1],)

    @nn.compact
    def __call__(self, x: jax.Array, precision, train: bool = False) -> jax.Array:
        sel = _check_selection(self.selection, self.bits)
        bits = tuple(self.bits)
        stem, blocks = mobilenet_v1_blocks(self.width, self.partial_widths)
        bn = functools.partial(BranchBatchNorm, num_precisions=len(bits))
        x = QuantConv(
            stem, (3, 3), (2, 2), padding=((1, 1), (1, 1)), use_bias=False,
            spec=FULL_PRECISION, name="stem",
        )(x, 0)  # fmt: skip
        x = relu(PrecisionBatchNorm(num_precisions=len(bits), name="stem_bn")(x, precision, train))
        ops = _layout(self, sel, precision)
        x = ops.tile(x)
        for i, (c_in, c_out, stride, p_in, p_out) in enumerate(blocks):
            name = f"block{i}"
            dw = MultiBranchDepthwiseConv(
                sel, bits, partial_width=p_in, strides=(stride, stride), name=f"{name}_dw"
            )
            x = ops.mask(ops.relu(ops.bn(bn(name=f"{name}_dw_bn"), ops.conv(dw, x), train, c_in)),
                         c_in, p_in)  # fmt: skip
            pw = MultiBranchConv(
                c_out, sel, bits, partial_in=p_in, partial_out=p_out, kernel_size=(1, 1),
                padding="VALID", name=f"{name}_pw",
            )  # fmt: skip
            x = ops.mask(ops.relu(ops.bn(bn(name=f"{name}_pw_bn"), ops.conv(pw, x), train, c_out)),
                         c_out, p_out)  # fmt: skip
        x = avg_pool_all(ops.merge(x, blocks[-1][1]))
        return QuantDense(
            self.num_classes,
            spec=FULL_PRECISION,
            kernel_init=nn.initializers.normal(0.01),
            name="classifier",
        )(x, 0)

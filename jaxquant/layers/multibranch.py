"""`MultiBranchConv`, the layer MBQuant builds on (G branches of fixed 2-bit weights), and
`BranchSelection`, which branches each precision uses (the tables are the method's:
`jaxquant.methods.mbquant`)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxquant import quantizers as q
from jaxquant.errors import ConfigError
from jaxquant.layers import conv as lowering  # called through the module: one place to swap it
from jaxquant.layers.quant import (
    bits_at,
    check_exact_codes,
    check_precision,
    check_precision_rows,
    layer_label,
)

INTERVAL_INIT = "interval_init"
"""The variable collection that, when mutable, puts `MultiBranchConv` in its data-dependent
init mode (`initial_intervals`)."""
WEIGHT_INTERVAL_STDS = ("chunk", "filter")


@dataclasses.dataclass(frozen=True)
class BranchSelection:
    """Which branches of a `MultiBranchConv` each precision uses: static rows, one per precision,
    gathered with the traced precision index.

    full: ``(P, G)`` booleans, branch g runs as a full branch at precision p.
    partial: ``(P,)`` the branch whose top-left slice runs as the partial branch, or -1.
    full_weight_slot: ``(P, G)`` the weight-interval slot that quantizes full branch g.
    partial_weight_slot: ``(P,)`` the weight-interval slot of the partial branch (ignored at -1).
    weight_interval_std: how MBQuant's data-dependent init sets a weight slot: ``chunk`` (3 std of
    the chunk the slot quantizes) or ``filter`` (the official code: 3 std of output filter #slot).
    A branch is never both full and partial at one precision.
    """

    full: tuple[tuple[bool, ...], ...]
    partial: tuple[int, ...]
    full_weight_slot: tuple[tuple[int, ...], ...]
    partial_weight_slot: tuple[int, ...]
    weight_interval_std: str = "chunk"  # data-dependent init of the weight slots: chunk | filter

    def __post_init__(self):
        p, g = len(self.full), len(self.full[0]) if self.full else 0
        if p == 0 or g == 0:
            raise ConfigError("a branch selection needs at least one precision and one branch")
        if (
            len(self.partial) != p
            or len(self.full_weight_slot) != p
            or len(self.partial_weight_slot) != p
            or any(len(row) != g for row in self.full)
            or any(len(row) != g for row in self.full_weight_slot)
        ):
            raise ConfigError(
                f"branch selection rows disagree: expected {p} precisions x {g} branches"
            )
        if self.weight_interval_std not in WEIGHT_INTERVAL_STDS:
            raise ConfigError(
                f"unknown weight_interval_std {self.weight_interval_std!r}; "
                f"choose one of {WEIGHT_INTERVAL_STDS}"
            )
        for row, pb in zip(self.full, self.partial):
            if not -1 <= pb < g or (pb >= 0 and row[pb]):
                raise ConfigError(
                    f"partial branch {pb} is out of range or also a full branch in {row}"
                )

    @property
    def num_branches(self) -> int:
        return len(self.full[0])

    @property
    def num_precisions(self) -> int:
        return len(self.full)

    def gather(self, precision) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(full_mask, partial_onehot, weight_slot)`` at a (traced) precision index, each
        ``(G,)``: float masks, and the weight slot of each branch in the role it plays there."""
        full = jnp.asarray(self.full, jnp.float32)[precision]
        partial = jnp.asarray(self.partial, jnp.int32)[precision]
        onehot = (jnp.arange(self.num_branches) == partial).astype(jnp.float32)
        slot = jnp.where(
            onehot > 0,
            jnp.asarray(self.partial_weight_slot, jnp.int32)[precision],
            jnp.asarray(self.full_weight_slot, jnp.int32)[precision],
        )
        return full, onehot, slot

    def order(self, precision: int) -> list[int]:
        """The branches a static precision computes, in the order the branch-list layout keeps
        them: the full branches ascending, then the partial one (the official code's
        concatenation order)."""
        full = [b for b in range(self.num_branches) if self.full[precision][b]]
        return full + ([self.partial[precision]] if self.partial[precision] >= 0 else [])


_ARCSINE_HALF_NORMAL = 1.0 / (1.0 - 2.0 / 3.141592653589793) ** 0.5  # 1/sqrt(1 - 2/pi)


def interval_params(module: nn.Module, kernel: jax.Array, x32: jax.Array, g: int) -> tuple:
    """``(w_lower, w_upper, a_lower, a_upper)``: the learned intervals of a multi-branch layer
    (`MultiBranchConv`, the MobileNetV1's depthwise conv) with ``g`` branches, created at the
    official init from ``kernel`` (g, ...) and the float32 input ``x32`` (..., g, C): weights
    +-3 std of each branch's kernel; activations one row per bit-width, per branch and for the
    whole input. Stored activation rows built for other bits are refused."""
    branch_std = lambda k: 3.0 * jnp.std(k.reshape(g, -1), axis=1)  # noqa: E731
    w_upper = module.param("weight_upper", lambda _: branch_std(kernel))
    w_lower = module.param("weight_lower", lambda _: -branch_std(kernel))

    def act_init(stat):
        def init(_):
            per_branch = jnp.moveaxis(x32, -2, 0).reshape(g, -1)
            values = jnp.concatenate([stat(per_branch, axis=1), stat(x32.reshape(1, -1), axis=1)])
            return jnp.broadcast_to(values, (len(module.bits), g + 1))

        return init

    for name in ("act_lower", "act_upper"):  # one row per bit-width: refuse other bits'
        if module.has_variable("params", name):
            check_precision_rows(
                layer_label(module),
                f"params '{name}'",
                np.shape(module.get_variable("params", name)),
                (len(module.bits), g + 1),
                len(module.bits),
            )
    a_lower = module.param("act_lower", act_init(lambda v, axis: _act_stats(v, axis)[0]))
    a_upper = module.param("act_upper", act_init(lambda v, axis: _act_stats(v, axis)[1]))
    return w_lower, w_upper, a_lower, a_upper


def initial_intervals(
    module: nn.Module, x, kernel, partial_kernel, precision, p_in: int, intervals, filters=None
) -> tuple:
    """MBQuant's data-dependent init at one precision (`methods.mbquant.initialize_intervals`;
    the code's ``QConv_Tra_Mulit.initialize``) of a multi-branch layer (`MultiBranchConv`, the
    MobileNetV1's depthwise conv): every slot the precision uses is set from the layer's own
    input ``x`` (..., G, C) and its current ``kernel`` (G, ...), then used at once, so later
    layers see inputs quantized with fresh intervals.

    Activations (slot of full branch g, or the partial's slot G):
    ``u = 3 std(x_chunk) / sqrt(1 - 2/pi)`` (unbiased std), ``l = min(x_chunk)``, the partial's
    chunk the first ``p_in`` channels. Weights ``u = 3 std(W_chunk)``, ``l = -u``:
    without ``filters`` (``weight_interval_std='chunk'``, clean) the slot's own chunk (the
    branch; ``partial_kernel`` (G, ...), the partial slice, for the partial's slot, except with
    per-branch slots, where the slot belongs to the whole branch and is left to it); with
    ``filters`` (``'filter'``, the official code's quirk) the slot-th row of the torch-layout
    ``(G*C_out, ...)`` weight, and the partial slice for the partial's slot.
    The new values are stored in the module's ``interval_init`` collection for the caller to
    keep, and returned as ``(w_lower, w_upper, a_lower, a_upper)``."""
    w_lower, w_upper, a_lower, a_upper = intervals
    sel, g = module.selection, module.selection.num_branches
    full, partial, slot = sel.gather(precision)
    has_partial = partial.sum() > 0
    pb = jnp.argmax(partial)

    chunks = [_act_stats(x[..., branch, :]) for branch in range(g)]
    chunks.append(_act_stats(jnp.take(x[..., :p_in], pb, axis=-2)))
    used = jnp.concatenate([full, has_partial[None].astype(jnp.float32)]) > 0
    new_lower = jnp.where(used, jnp.stack([c[0] for c in chunks]), a_lower[precision])
    new_upper = jnp.where(used, jnp.stack([c[1] for c in chunks]), a_upper[precision])
    a_lower = a_lower.at[precision].set(new_lower)
    a_upper = a_upper.at[precision].set(new_upper)

    partial_std = 3.0 * jnp.std(jnp.take(partial_kernel, pb, axis=0))
    per_branch_slots = all(s == tuple(range(g)) for s in sel.full_weight_slot)
    for branch in range(g):
        is_partial = partial[branch] > 0
        if filters is not None:
            value = jnp.where(is_partial, partial_std, 3.0 * jnp.std(filters[slot[branch]]))
            write = (full[branch] > 0) | is_partial
        else:
            value = jnp.where(is_partial, partial_std, 3.0 * jnp.std(kernel[branch]))
            write = (full[branch] > 0) | (is_partial & (not per_branch_slots))
        w_upper = w_upper.at[slot[branch]].set(jnp.where(write, value, w_upper[slot[branch]]))
    w_lower = -w_upper
    for name, value in zip(
        ("weight_lower", "weight_upper", "act_lower", "act_upper"),
        (w_lower, w_upper, a_lower, a_upper),
    ):
        module.put_variable(INTERVAL_INIT, name, value)
    return w_lower, w_upper, a_lower, a_upper


def _act_stats(v: jax.Array, axis=None) -> tuple[jax.Array, jax.Array]:
    """An activation interval of the official init (over ``axis``): the minimum, and
    3 std / sqrt(1 - 2/pi) (unbiased std) kept at least 1e-3 above it."""
    lower = jnp.min(v, axis=axis)
    upper = 3.0 * jnp.std(v, axis=axis, ddof=1) * _ARCSINE_HALF_NORMAL
    return lower, jnp.maximum(upper, lower + 1e-3)


class MultiBranchConv(nn.Module):
    """G branches of latent FP weights quantized to fixed 2-bit levels ``{-1, -1/3, 1/3, 1}``
    (`quantizers.interval_weight`, a learnable ``[l, u]`` per weight slot), inputs quantized at
    ``bits[precision]`` (`quantizers.interval_activation`, one ``[l, u]`` per (precision, slot)).

    Input ``(N, H, W, G, C_in)``, output ``(N, H, W, G, features)``: every branch keeps its own
    slot, so shapes never depend on the precision. At a precision (`BranchSelection`), a full
    branch g computes ``conv(q_b(x[..., g, :]), q_2(W_g))``; the partial branch pb computes the
    top-left slice ``conv(q_b(x[..., pb, :p_in]), q_2(W_pb)[:, :, :p_in, :p_out])`` and writes
    output channels ``[0, p_out)`` of its slot; every other output is exactly zero. Activation
    slots: ``g`` for full branch g, ``G`` for the partial branch (each (slot, precision) has one
    user, so this is the same parametrisation as the official code's per-position slots).

    Two ways to select, the same function:

    - a **traced** precision (``jax.vmap`` over precision, the default step): masks on the
      quantized kernels, so one trace serves every precision; the price is that **all G branches
      are computed** (deselected ones multiply zero kernels, and their weights get exactly zero
      gradient, as long as every activation interval keeps ``u > l``: a collapsed interval gives
      NaN, and ``0 * NaN`` is NaN);
    - a **static** Python-int precision (``precision_mode='unroll'``), with ``skip_deselected``:
      only the selected branches' convs run, and the partial one at its ``p_in x p_out`` size, so
      the b-bit network costs its ``floor(b/2) (+ 1/2)`` branches, not G.

    Making the ``interval_init`` collection mutable runs MBQuant's data-dependent interval init
    (`initial_intervals`, driven by `jaxquant.methods.mbquant.initialize_intervals`).
    No bias, no rescaling: the following (per-precision) BatchNorm absorbs the scale.
    The default initializer is PyTorch's ``kaiming_normal_(fan_out)`` on the grouped weight:
    ``std = sqrt(2 / (G * k * k * C_out))`` (fan_out counts every branch).
    Output in the input's dtype; intervals are initialised from ``x.astype(float32)``; bfloat16
    inputs convolve the integer codes (`_conv`: ``conv(n_x, n_w) * s_x/3``, bits <= 8).
    """

    features: int
    selection: BranchSelection
    bits: tuple[int, ...]
    partial_in: int | None = None  # input channels of the partial slice (None: all)
    partial_out: int | None = None  # output channels of the partial slice (None: all)
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: Any = "SAME"
    kernel_init: Callable = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    skip_deselected: bool = True  # a static (Python int) precision computes only its branches

    @nn.compact
    def __call__(self, x: jax.Array, precision) -> jax.Array:
        sel = self.selection
        g = sel.num_branches
        if sel.num_precisions != len(self.bits):
            raise ConfigError(
                f"the branch selection has {sel.num_precisions} precisions but bits={self.bits}"
            )
        check_precision(precision, len(self.bits), f"bits {tuple(self.bits)}")
        if x.ndim != 5 or x.shape[-2] != g:
            raise ConfigError(
                f"MultiBranchConv expects inputs (N, H, W, {g}, C), got shape {x.shape}"
            )
        c_in = x.shape[-1]
        p_in = c_in if self.partial_in is None else self.partial_in
        p_out = self.features if self.partial_out is None else self.partial_out
        if not (0 < p_in <= c_in and 0 < p_out <= self.features):
            raise ConfigError(
                f"partial slice {p_in}x{p_out} does not fit a {c_in}->{self.features} conv"
            )
        kernel = self.param("kernel", self.kernel_init, (g, *self.kernel_size, c_in, self.features))
        dtype, x32 = x.dtype, q.as_float32(x)  # data-dependent inits and quantizers read float32
        if q.is_low_precision(dtype):
            check_exact_codes(self, dtype)
        w_lower, w_upper, a_lower, a_upper = interval_params(self, kernel, x32, g)

        if (
            self.is_mutable_collection(INTERVAL_INIT) and not self.is_initializing()
        ):  # init makes every collection mutable
            filters = (  # torch's (G*C_out, ...) rows, for the code's 'filter' weight std
                jnp.moveaxis(kernel, -1, 1).reshape(g * self.features, -1)
                if self.selection.weight_interval_std == "filter"
                else None
            )
            w_lower, w_upper, a_lower, a_upper = initial_intervals(
                self,
                x32,
                kernel,
                kernel[..., :p_in, :p_out],
                precision,
                p_in,
                (w_lower, w_upper, a_lower, a_upper),
                filters,
            )
        bit_width = bits_at(self.bits, precision)
        if self.skip_deselected and isinstance(precision, (int, np.integer)):
            return self._selected_branches(
                x,
                kernel,
                int(precision),
                p_in,
                p_out,
                (w_lower, w_upper, a_lower, a_upper),
                bit_width,
            ).astype(dtype)
        full, partial, slot = sel.gather(precision)
        shape5 = (g, 1, 1, 1, 1)
        quantized = q.interval_weight(
            kernel, w_lower[slot].reshape(shape5), w_upper[slot].reshape(shape5)
        )
        slice_mask = (jnp.arange(c_in) < p_in)[:, None] & (jnp.arange(self.features) < p_out)[
            None, :
        ]
        keep = full[:, None, None] + partial[:, None, None] * slice_mask.astype(
            jnp.float32
        )  # (G, C_in, C_out)
        quantized = quantized * keep[:, None, None]
        act_slot = jnp.where(partial > 0, g, jnp.arange(g))
        lower = a_lower[precision][act_slot][:, None]
        upper = a_upper[precision][act_slot][:, None]
        xq = q.interval_activation(x32, lower, upper, bit_width)
        conv = functools.partial(self._conv, bit_width=bit_width, dtype=dtype)
        return jax.vmap(conv, in_axes=(3, 0), out_axes=3)(xq, quantized)

    def _conv(self, x: jax.Array, kernel: jax.Array, bit_width=None, dtype=None) -> jax.Array:
        """``conv(x_hat, w_hat)`` of one branch: ``x_hat`` interval activations at ``bit_width``
        (grid ``1/(2^b-1)``), ``w_hat`` interval weights (grid 1/3); the result in ``dtype``
        (the layer's input dtype; default ``x``'s).

        float32 ``dtype``, or no ``bit_width``: the plain conv of the values (in ``x``'s dtype,
        cast to ``dtype``). Low-precision ``dtype`` (bfloat16) with ``bit_width``: the exact grid,
        ``conv(n_x, n_w) * stop_gradient(s_x / 3)`` with ``n_x = x_hat (2^b-1)`` and
        ``n_w = 3 w_hat`` snapped to their integers (`quantizers.grid_integers`), float32
        accumulation.
        """
        dtype = jnp.dtype(x.dtype if dtype is None else dtype)
        conv = functools.partial(
            lowering.precision_conv, strides=self.strides, padding=self.padding
        )
        if not q.is_low_precision(dtype) or bit_width is None:
            return conv(x, kernel.astype(x.dtype)).astype(dtype)
        s_x = q.unit_grid_scale(bit_width)
        n_x = q.grid_integers(x, s_x, bit_width).astype(dtype)
        n_w = q.grid_integers(kernel, q.INTERVAL_WEIGHT_GRID_SCALE, 2).astype(dtype)
        scale = jax.lax.stop_gradient(s_x * q.INTERVAL_WEIGHT_GRID_SCALE)
        return (conv(n_x, n_w) * scale).astype(dtype)

    def _selected_branches(
        self, x, kernel, precision: int, p_in: int, p_out: int, intervals, bit_width
    ):
        """The same function as the masked path for a static precision, computing only the
        selected branches (deselected slots are zeros that no conv produced)."""
        sel, g = self.selection, self.selection.num_branches
        order = sel.order(precision)
        pb = sel.partial[precision]
        chunks = [x[..., branch, :p_in] if branch == pb else x[..., branch, :] for branch in order]
        ys = self._branch_convs(chunks, kernel, precision, intervals, bit_width)
        outputs = dict(zip(order, ys))
        if pb >= 0:
            y = outputs[pb]
            outputs[pb] = jnp.pad(y, [(0, 0)] * (y.ndim - 1) + [(0, self.features - p_out)])
        zeros = jnp.zeros(ys[0].shape[:-1] + (self.features,), x.dtype)
        return jnp.stack([outputs.get(branch, zeros) for branch in range(g)], axis=3)

    def _branch_convs(self, chunks, kernel, precision: int, intervals, bit_width) -> list:
        """The convs of a static precision's selected branches, in `BranchSelection.order` (full
        branches ascending, then the partial): ``chunks`` are their inputs (the partial's sliced to
        ``p_in`` channels); returns their outputs (``features`` wide, the partial's ``p_out``)."""
        w_lower, w_upper, a_lower, a_upper = intervals
        sel, g = self.selection, self.selection.num_branches
        pb = sel.partial[precision]
        outputs = []
        for branch, chunk in zip(sel.order(precision), chunks):
            if branch == pb:
                slot, act = sel.partial_weight_slot[precision], g
                p_in, p_out = (
                    chunk.shape[-1],
                    self.features if self.partial_out is None else self.partial_out,
                )
                wq = q.interval_weight(
                    kernel[pb, :, :, :p_in, :p_out], w_lower[slot], w_upper[slot]
                )
            else:
                slot, act = sel.full_weight_slot[precision][branch], branch
                wq = q.interval_weight(kernel[branch], w_lower[slot], w_upper[slot])
            xq = q.interval_activation(
                chunk, a_lower[precision, act], a_upper[precision, act], bit_width
            )
            outputs.append(
                self._conv(xq, wq, bit_width=bit_width, dtype=chunk.dtype)
            )  # the input's dtype
        return outputs

    def selected_branches(self, xs: Sequence[jax.Array], precision: int) -> list[jax.Array]:
        """The static-precision forward on the selected branches only, in the *branch-list
        layout*: ``xs`` holds one ``(N, H, W, C)`` input per selected branch in
        `BranchSelection.order` (the k full branches ascending, ``C_in`` channels each, then the
        partial branch's first ``w >= partial_in`` channels); returns their outputs in the same
        order (``features`` channels each, the partial's ``partial_out``). The same convs as
        `__call__` at that precision (which returns them in their ``G`` slots, with zeros
        elsewhere); reads the parameters ``__call__`` created, so the module must have been
        initialised (its ``__call__`` runs at ``init``)."""
        sel = self.selection
        if not isinstance(precision, (int, np.integer)):
            raise ConfigError(
                "MultiBranchConv.selected_branches needs a static (Python int) precision"
            )
        precision = int(precision)
        kernel = self.get_variable("params", "kernel")
        intervals = tuple(
            self.get_variable("params", name)
            for name in ("weight_lower", "weight_upper", "act_lower", "act_upper")
        )
        c_in = kernel.shape[-2]
        p_in = c_in if self.partial_in is None else self.partial_in
        order = sel.order(precision)
        widths = tuple(x.shape[-1] for x in xs)
        wanted = tuple(p_in if branch == sel.partial[precision] else c_in for branch in order)
        if len(widths) != len(wanted) or any(
            w < need if branch == sel.partial[precision] else w != need
            for branch, w, need in zip(order, widths, wanted)
        ):
            raise ConfigError(
                f"selected-branch inputs of {widths} channels do not match branches {order} of "
                f"{c_in} channels (the partial at least {p_in}) at precision {precision}"
            )
        if q.is_low_precision(xs[0].dtype):
            check_exact_codes(self, xs[0].dtype)
        chunks = [x[..., :need] if x.shape[-1] > need else x for x, need in zip(xs, wanted)]
        return self._branch_convs(
            chunks, kernel, precision, intervals, bits_at(self.bits, precision)
        )

"""The convolution lowering: NHWC/HWIO convs batched over precision without grouped
convolutions (``batching``), the im2col weight gradient for CPUs (``weight_gradient``), and
bfloat16 operands with float32 accumulation.

How convs are lowered is one setting, a `Lowering`, read when a model is traced: layers do not
carry it. ``with lowering(Lowering('unroll', 'xla')): ...`` sets it for the traces inside
(`MultiPrecisionTrainer` enters its own around every trace); outside any, ``auto`` picks per
backend. It changes speed, never values beyond float rounding."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
from jax import custom_batching

from jaxquant import quantizers as q
from jaxquant.errors import ConfigError

CONV_BATCHINGS = ("auto", "unroll", "native")
WEIGHT_GRADIENTS = ("auto", "xla", "im2col")
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def resolve_conv_batching(batching: str = "auto", backend: str | None = None) -> str:
    """What ``conv_batching`` runs on ``backend`` (default ``jax.default_backend()``): ``auto`` is
    ``unroll`` on CPU (one plain conv per precision, the fastest there) and ``native`` on GPU/TPU
    (XLA's batching: one grouped conv for all P precisions); ``unroll``/``native`` as given."""
    if batching not in CONV_BATCHINGS:
        raise ConfigError(f"unknown conv batching {batching!r}; choose one of {CONV_BATCHINGS}")
    if batching != "auto":
        return batching
    return "unroll" if (backend or jax.default_backend()) == "cpu" else "native"


def resolve_weight_gradient(weight_gradient: str = "auto", backend: str | None = None) -> str:
    """What ``weight_gradient`` runs on ``backend`` (default ``jax.default_backend()``): ``auto``
    is ``im2col`` (`conv_weight_gradient`) on CPU and ``xla`` (XLA's own) on GPU/TPU."""
    if weight_gradient not in WEIGHT_GRADIENTS:
        raise ConfigError(
            f"unknown weight_gradient {weight_gradient!r}; choose one of {WEIGHT_GRADIENTS}"
        )
    if weight_gradient != "auto":
        return weight_gradient
    return "im2col" if (backend or jax.default_backend()) == "cpu" else "xla"


@dataclasses.dataclass(frozen=True)
class Lowering:
    """How `precision_conv` computes: ``batching`` (`resolve_conv_batching`) and
    ``weight_gradient`` (`resolve_weight_gradient`), each ``auto`` by default (per backend)."""

    batching: str = "auto"
    weight_gradient: str = "auto"

    def __post_init__(self):
        resolve_conv_batching(self.batching, "cpu")  # validates
        resolve_weight_gradient(self.weight_gradient, "cpu")


_CURRENT = contextvars.ContextVar("jaxquant_conv_lowering", default=Lowering())


def current_lowering() -> Lowering:
    """The `Lowering` in effect (``auto``/``auto`` outside any `lowering` block)."""
    return _CURRENT.get()


@contextlib.contextmanager
def lowering(setting: Lowering | None = None, **fields) -> Iterator[Lowering]:
    """Lower the convs of models traced inside the block by ``setting`` (or
    ``Lowering(**fields)``); None and no fields leave the current one."""
    setting = (
        setting if setting is not None else (Lowering(**fields) if fields else current_lowering())
    )
    token = _CURRENT.set(setting)
    try:
        yield setting
    finally:
        _CURRENT.reset(token)


def _static_padding(padding):
    return padding if isinstance(padding, str) else tuple(tuple(int(v) for v in p) for p in padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _low_precision_conv(x, kernel, strides, padding, groups):
    """A conv of low-precision operands with float32 accumulation and a float32 result."""
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        strides,
        padding,
        dimension_numbers=_DIMENSIONS,
        feature_group_count=groups,
        preferred_element_type=jnp.float32,
    )


def _low_precision_conv_fwd(x, kernel, strides, padding, groups):
    return _low_precision_conv(x, kernel, strides, padding, groups), (x, kernel)


def _low_precision_conv_bwd(strides, padding, groups, residuals, g):
    # Both backward convs in the operands' dtype (the cotangent cast down): their results are
    # cotangents of bf16 operands anyway. JAX's own transpose would upcast them to float32 convs.
    x, kernel = residuals

    def narrow(x, kernel):
        return jax.lax.conv_general_dilated(
            x, kernel, strides, padding, dimension_numbers=_DIMENSIONS, feature_group_count=groups
        )

    return jax.vjp(narrow, x, kernel)[1](g.astype(x.dtype))


_low_precision_conv.defvjp(_low_precision_conv_fwd, _low_precision_conv_bwd)


def conv_forward(x, kernel, strides=(1, 1), padding="SAME", groups: int = 1):
    """The plain NHWC/HWIO convolution every QuantConv runs (per precision). Low-precision
    operands (bfloat16; both are cast to the narrower dtype) accumulate in float32 and return
    float32 (``preferred_element_type``); their backward convs take bfloat16 operands."""
    if q.is_low_precision(x.dtype) or q.is_low_precision(kernel.dtype):
        dtype = x.dtype if q.is_low_precision(x.dtype) else kernel.dtype
        return _low_precision_conv(
            x.astype(dtype),
            kernel.astype(dtype),
            tuple(int(v) for v in strides),
            _static_padding(padding),
            int(groups),
        )
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        tuple(strides),
        padding,
        dimension_numbers=_DIMENSIONS,
        feature_group_count=groups,
    )


def conv_backward(
    x, kernel, g, strides=(1, 1), padding="SAME", weight_gradient: str = "auto", groups: int = 1
):
    """``(dL/dx, dL/dkernel)`` of `conv_forward` for the output cotangent ``g``: XLA's
    transposed conv for ``dx``; ``dkernel`` by `conv_weight_gradient` (im2col) or XLA's,
    as ``weight_gradient`` says (``auto`` per backend, `resolve_weight_gradient`; grouped convs
    always use XLA's). Cotangents come in the operands' dtypes."""

    def plain(x, kernel):
        return conv_forward(x, kernel, strides, padding, groups)

    use_im2col = groups == 1 and resolve_weight_gradient(weight_gradient) == "im2col"
    if not use_im2col:
        return jax.vjp(plain, x, kernel)[1](g)
    dx = jax.vjp(lambda x: plain(x, kernel), x)[1](g)[0]
    return dx, conv_weight_gradient(x, g, kernel.shape, strides, padding)


def _unrolled_vmap(fn: Callable) -> Callable:
    """``fn`` whose ``jax.vmap`` runs ``fn`` once per batch element (a Python-unrolled loop
    inside the trace) instead of batching its primitives."""

    @custom_batching.custom_vmap
    def wrapped(*args):
        return fn(*args)

    @wrapped.def_vmap
    def _rule(axis_size, in_batched, *args):
        if not any(in_batched):
            return wrapped(*args), jax.tree_util.tree_map(lambda _: False, fn(*args))
        outs = [
            wrapped(*(a[i] if batched else a for a, batched in zip(args, in_batched)))
            for i in range(axis_size)
        ]
        stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)
        return stacked, jax.tree_util.tree_map(lambda _: True, stacked)

    return wrapped


def _explicit_padding(in_spatial, kernel_spatial, strides, padding) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        return tuple(jax.lax.padtype_to_pads(in_spatial, kernel_spatial, strides, padding))
    return tuple(tuple(p) for p in padding)


def _batch_chunk(n: int, limit: int) -> int:
    """Images per chunk: the largest divisor of ``n`` up to ``limit`` (no padded images), or
    ``limit`` itself when that divisor is under half of it (the last chunk is then padded)."""
    limit = max(1, min(n, limit))
    divisor = max(d for d in range(1, limit + 1) if n % d == 0)
    return divisor if 2 * divisor > limit else limit


def conv_weight_gradient(
    x: jax.Array,
    g: jax.Array,
    kernel_shape: tuple[int, ...],
    strides=(1, 1),
    padding="SAME",
    cache_bytes: int = 2**21,
) -> jax.Array:
    """``dL/dkernel`` of an NHWC/HWIO conv as im2col matmuls over chunks of the batch.

    ``dW[i, j, c, o] = sum_{n, y, x} x_pad[n, y*s + i, x*s + j, c] * g[n, y, x, o]``. Per chunk of
    images (sized so its patches fit in ``cache_bytes``), the patches are built along the width
    only, ``P[n, r, x, (j, c)] = x_pad[n, r, x*s + j, c]`` (``kw`` slices), and each kernel row i
    is one matmul of P's rows ``i, i + s, ...`` with g: ``dW[i] += P_i^T g``. On a CPU, XLA's
    own weight-gradient conv (which transposes both operands first) is the slower choice
    (``benchmarks/step_speed.py``, variants fp and fp-xla-dw); on GPU/TPU XLA's own is the
    choice. Low-precision ``x`` (bfloat16): ``g`` is cast to it and the matmuls accumulate in
    float32; the result has ``x``'s dtype.
    """
    g = g.astype(x.dtype)  # bfloat16 x: bfloat16 operands; the matmuls accumulate in float32
    kh, kw, c, o = kernel_shape
    n = x.shape[0]
    oh, ow = g.shape[1:3]
    sh, sw = strides
    pads = _explicit_padding(x.shape[1:3], (kh, kw), strides, padding)
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    rows = (oh - 1) * sh + kh  # the padded rows any output reads
    xp = xp[:, :rows]
    chunk = _batch_chunk(n, cache_bytes // max(rows * ow * kw * c * x.dtype.itemsize, 1))
    extra = -n % chunk  # zero images add nothing to the sum
    if extra:
        xp = jnp.pad(xp, ((0, extra), (0, 0), (0, 0), (0, 0)))
        g = jnp.pad(g, ((0, extra), (0, 0), (0, 0), (0, 0)))
    xp = xp.reshape((-1, chunk) + xp.shape[1:])
    g = g.reshape((-1, chunk) + g.shape[1:])
    matmul = functools.partial(jnp.matmul, preferred_element_type=jnp.float32)

    def accumulate(total, chunk_arrays):
        xc, gc = chunk_arrays
        width_patches = jnp.concatenate(
            [
                jax.lax.slice(
                    xc, (0, 0, j, 0), (chunk, rows, j + (ow - 1) * sw + 1, c), (1, 1, sw, 1)
                )
                for j in range(kw)
            ],
            axis=-1,
        )
        gc = gc.reshape(-1, o)
        per_row = [
            matmul(
                jax.lax.slice(
                    width_patches,
                    (0, i, 0, 0),
                    (chunk, i + (oh - 1) * sh + 1, ow, kw * c),
                    (1, sh, 1, 1),
                )
                .reshape(-1, kw * c)
                .T,
                gc,
            )
            for i in range(kh)
        ]
        return total + jnp.stack(per_row), None

    total, _ = jax.lax.scan(accumulate, jnp.zeros((kh, kw * c, o), jnp.float32), (xp, g))
    return total.reshape(kernel_shape).astype(x.dtype)


@functools.lru_cache(maxsize=None)
def _make_precision_conv(
    strides: tuple[int, ...], padding, weight_gradient: str, groups: int = 1
) -> Callable:
    """A conv whose vmap runs one plain conv per precision, forward and backward.

    XLA lowers a vmapped conv with batched input *and* kernel to a grouped conv, which on CPU
    is about 20x slower than P plain convs (measured with ``benchmarks/step_speed.py
    --conv-batching native``). ``custom_vmap`` does not support reverse-mode autodiff, so the
    gradient is a ``custom_vjp`` whose forward and backward are each unrolled under vmap.
    """

    def plain(x, kernel):
        return conv_forward(x, kernel, strides, padding, groups)

    def gradients(x, kernel, g):
        return conv_backward(x, kernel, g, strides, padding, weight_gradient, groups)

    # Both directions unrolled per precision. (Letting the im2col weight gradient batch over
    # precisions, one scan with batched matmuls, measured 8% slower on CPU.)
    forward = _unrolled_vmap(plain)
    backward = _unrolled_vmap(gradients)

    @jax.custom_vjp
    def conv(x, kernel):
        return forward(x, kernel)

    conv.defvjp(
        lambda x, kernel: (forward(x, kernel), (x, kernel)), lambda res, g: backward(*res, g)
    )
    return conv


def precision_conv(
    x,
    kernel,
    strides=(1, 1),
    padding="SAME",
    batching: str | None = None,
    weight_gradient: str | None = None,
    groups: int = 1,
):
    """NHWC/HWIO convolution (``groups`` > 1: grouped, e.g. depthwise with ``groups = C``) of
    `conv_forward` (bfloat16 operands: float32 accumulation and result), batched over precision:

    - ``batching='unroll'``: ``jax.vmap`` over precision runs one plain conv per precision,
      forward and backward (a custom vmap rule; the fastest on CPU);
    - ``'native'``: XLA's own batching: the one batched (grouped, ``feature_group_count = P``)
      convolution for all P precisions, to measure on accelerators;
    - ``'auto'`` (default): `resolve_conv_batching` by ``jax.default_backend()``, CPU
      ``unroll``, GPU/TPU ``native``.

    ``weight_gradient``: ``im2col`` (`conv_weight_gradient`), ``xla``, or ``auto`` (im2col on
    CPU, XLA elsewhere); it applies with ``unroll`` to ungrouped convs. Either left None is the
    `current_lowering`'s."""
    batching = current_lowering().batching if batching is None else batching
    weight_gradient = (
        current_lowering().weight_gradient if weight_gradient is None else weight_gradient
    )
    strides = tuple(strides)
    resolve_weight_gradient(weight_gradient)  # validates
    if resolve_conv_batching(batching) == "native":
        return conv_forward(x, kernel, strides, padding, groups)
    padding = padding if isinstance(padding, str) else tuple(map(tuple, padding))
    return _make_precision_conv(strides, padding, weight_gradient, int(groups))(x, kernel)

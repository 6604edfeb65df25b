"""Bit-Split and Stitching (Wang et al., ICML 2020; TPAMI 2023): the weight optimisation.

M-bit signed per-output-channel weights ``W[m, :] ~ alpha_m q_m``, ``|q_m| <= 2^(M-1) - 1``, the
codes split into ``M - 1`` ternary planes, most significant first (`split`; `stitch` inverts)::

    q = sum_{i=0}^{M-2} 2^(M-2-i) * beta_i,    beta_i in {-1, 0, +1}^N

`fwa` (initial scale) -> `ofwa` (weight-only) -> `ofwa_rr`, response reconstruction:
``min sum_m || Y[:, m] - alpha_m X (sum_i c_i beta_i[m])^T ||^2`` on im2col rows X, by closed-form
alpha and an exactly sequential Gauss-Seidel sweep per plane, blocked into GEMMs on ``X^T X``.
`ofwa_rr_dw` is the depthwise form: each channel on its own patch rows and ``kh*kw`` Gram matrix.
Three deliberate differences from the official code (``peiswang/BitSplit``): ``M = 2`` allowed,
``sign(s)`` in the coordinate rule, a zero channel keeps its alpha.
Details: docs/methods/bitsplit.md
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxquant.errors import BitWidthError

MIN_BITS, MAX_BITS = 2, 16


def check_bits(bits: int) -> int:
    """A static weight bit-width M for bit-split (2..16: at least one ternary plane)."""
    if not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise BitWidthError(
            f"bit-split weights need an integer bit-width {MIN_BITS}..{MAX_BITS}, got {bits!r}"
        )
    return bits


def max_code(bits: int) -> int:
    """``2^(M-1) - 1``: the largest code of the symmetric M-bit grid."""
    return 2 ** (check_bits(bits) - 1) - 1


def plane_weights(num_planes: int) -> jax.Array:
    """``c_i = 2^(P-1-i)`` for planes i = 0..P-1 (MSB first; P = M - 1)."""
    return 2.0 ** jnp.arange(num_planes - 1, -1, -1, dtype=jnp.float32)


def split(codes: jax.Array, bits: int) -> jax.Array:
    """Ternary planes ``(M-1, ...)`` of integer codes, MSB first: plane i is
    ``sign(q) * bit_{M-2-i}(|q|)``, so ``stitch(split(q)) == q``."""
    num_planes = check_bits(bits) - 1
    codes = jnp.asarray(codes)
    magnitude = jnp.abs(codes).astype(jnp.int32)
    sign = jnp.sign(codes).astype(jnp.float32)
    shifts = jnp.arange(num_planes - 1, -1, -1, dtype=jnp.int32).reshape((-1,) + (1,) * codes.ndim)
    return sign[None] * ((magnitude[None] >> shifts) & 1).astype(jnp.float32)


def stitch(planes: jax.Array) -> jax.Array:
    """Integer codes ``sum_i 2^(P-1-i) planes[i]`` (as float32) of planes ``(P, ...)``."""
    return jnp.tensordot(plane_weights(planes.shape[0]), planes, axes=1)


def _safe_ratio(num: jax.Array, den: jax.Array, fallback: jax.Array) -> jax.Array:
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), fallback)


def round_to_nearest(w: jax.Array, bits: int) -> tuple[jax.Array, jax.Array]:
    """Per-channel round-to-nearest, the baseline: ``alpha_m = max|w_m| / (2^(M-1) - 1)``,
    ``q = clip(round(w / alpha))``. ``w`` is ``[M_out, N]``; returns ``(codes, alpha)``."""
    qmax = max_code(bits)
    alpha = jnp.max(jnp.abs(w), axis=1) / qmax
    alpha = jnp.where(alpha > 0, alpha, 1.0)
    return jnp.clip(jnp.round(w / alpha[:, None]), -qmax, qmax), alpha


@functools.partial(jax.jit, static_argnames=("bits", "max_iterations"))
def fwa(
    w: jax.Array, bits: int, max_iterations: int = 1000, tolerance: float = 1e-9
) -> tuple[jax.Array, jax.Array]:
    """The code's ``fwa``: from ``alpha = max|w_m| / (2^(M-1) - 1)`` iterate
    ``q = clip(round(w / alpha))``, ``alpha = <w_m, q_m> / <q_m, q_m>`` until
    ``||alpha - alpha_old|| <= tolerance`` (round half to even, as numpy). Returns
    ``(codes, alpha)``."""
    qmax = max_code(bits)
    w = jnp.asarray(w, jnp.float32)
    alpha0 = jnp.max(jnp.abs(w), axis=1) / qmax
    alpha0 = jnp.where(alpha0 > 0, alpha0, 1.0)

    def codes_of(alpha):
        return jnp.clip(jnp.round(w / alpha[:, None]), -qmax, qmax)

    def step(carry):
        alpha, _, i = carry
        q = codes_of(alpha)
        new = _safe_ratio(jnp.sum(w * q, 1), jnp.sum(q * q, 1), alpha)
        return new, jnp.linalg.norm(new - alpha), i + 1

    def running(carry):
        _, change, i = carry
        return (change > tolerance) & (i < max_iterations)

    alpha, _, _ = jax.lax.while_loop(running, step, (alpha0, jnp.asarray(jnp.inf, jnp.float32), 0))
    return codes_of(alpha), alpha


@functools.partial(jax.jit, static_argnames=("epochs",))
def ofwa(
    w: jax.Array, planes: jax.Array, alpha: jax.Array, epochs: int = 50, tolerance: float = 1e-9
) -> tuple[jax.Array, jax.Array]:
    """The code's ``ofwa``: weight-only alternation from ``(planes, alpha)`` (e.g. `split` of
    `fwa`). Per epoch: the least-squares ``alpha_m = <w_m, b_m> / <b_m, b_m>`` (stop when it moves
    by at most ``tolerance``), then each plane i element-wise: with ``r = w - alpha * b`` without
    plane i and ``s = alpha c_i``, ``beta = sign(r / s)`` where ``2 |r| >= |s|``, else 0
    (``sign(0) = +1``). Returns ``(planes, alpha)``."""
    w = jnp.asarray(w, jnp.float32)
    weights = plane_weights(planes.shape[0])

    def epoch(carry):
        planes, alpha, _, i = carry
        b = stitch(planes)
        new_alpha = _safe_ratio(jnp.sum(w * b, 1), jnp.sum(b * b, 1), alpha)

        def plane(p, planes):  # a loop, not unrolled: one program size at every bit-width
            b = stitch(planes)
            s = (new_alpha * weights[p])[:, None]
            r = w - new_alpha[:, None] * (b - weights[p] * planes[p])
            direction = jnp.where(r * jnp.sign(s) >= 0, 1.0, -1.0)
            return planes.at[p].set(jnp.where(2 * jnp.abs(r) >= jnp.abs(s), direction, 0.0))

        planes = jax.lax.fori_loop(0, planes.shape[0], plane, planes)
        return planes, new_alpha, jnp.linalg.norm(new_alpha - alpha), i + 1

    def running(carry):
        _, _, change, i = carry
        return (change > tolerance) & (i < epochs)

    planes, alpha, _, _ = jax.lax.while_loop(
        running,
        epoch,
        (planes.astype(jnp.float32), alpha.astype(jnp.float32), jnp.asarray(jnp.inf), 0),
    )
    return planes, alpha


def _coordinate(g, s, a_nn):
    """The best ternary value of one coordinate: ``-sign(s g)`` if ``|g| >= |s| A_nn``, else 0."""
    return jnp.where(jnp.abs(g) >= jnp.abs(s) * a_nn, -jnp.sign(s) * jnp.sign(g), 0.0)


def sweep_sequential(beta: jax.Array, t: jax.Array, gram: jax.Array, s: jax.Array) -> jax.Array:
    """One Gauss-Seidel sweep over the N coordinates of a plane ``beta`` ``[M, N]``, one at a time
    (the reference form: ``O(M N)`` per coordinate). ``t = R^T X`` without this plane."""

    def coordinate(n, beta):
        beta = beta.at[:, n].set(0.0)
        g = 2.0 * (s * (beta @ gram[:, n]) - t[:, n])
        return beta.at[:, n].set(_coordinate(g, s, gram[n, n]))

    return jax.lax.fori_loop(0, beta.shape[1], coordinate, beta)


def sweep_blocked(
    beta: jax.Array, t: jax.Array, gram: jax.Array, s: jax.Array, block: int = 64
) -> jax.Array:
    """The same sweep as `sweep_sequential`, blocked: per block of ``block`` coordinates one
    product ``beta A[:, block]`` carries the coupling to every other coordinate, and a rank-1
    update per coordinate carries the coupling inside the block. Same decisions, at GEMM speed."""
    m, n = beta.shape
    block = max(1, min(block, n))
    padded = -(-n // block) * block
    # Padded coordinates have A_nn = 0 and t = 0, so they stay 0 and couple to nothing.
    beta_p = jnp.pad(beta, ((0, 0), (0, padded - n)))
    t_p = jnp.pad(t, ((0, 0), (0, padded - n)))
    gram_p = jnp.pad(gram, ((0, padded - n), (0, padded - n)))

    def one_block(k, beta_p):
        start = k * block
        gram_cols = jax.lax.dynamic_slice(gram_p, (0, start), (padded, block))  # A[:, blk]
        gram_blk = jax.lax.dynamic_slice(gram_cols, (start, 0), (block, block))  # A[blk, blk]
        t_blk = jax.lax.dynamic_slice(t_p, (0, start), (m, block))
        beta_blk = jax.lax.dynamic_slice(beta_p, (0, start), (m, block))
        coupling = beta_p @ gram_cols  # (beta A)[:, blk]

        def coordinate(j, carry):
            beta_blk, coupling = carry
            old = beta_blk[:, j]
            g = 2.0 * (s * (coupling[:, j] - old * gram_blk[j, j]) - t_blk[:, j])
            new = _coordinate(g, s, gram_blk[j, j])
            coupling = coupling + (new - old)[:, None] * gram_blk[j][None, :]
            return beta_blk.at[:, j].set(new), coupling

        beta_blk, _ = jax.lax.fori_loop(0, block, coordinate, (beta_blk, coupling))
        return jax.lax.dynamic_update_slice(beta_p, beta_blk, (0, start))

    return jax.lax.fori_loop(0, padded // block, one_block, beta_p)[:, :n]


def gram_statistics(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(A = X^T X, X^T Y, ||Y_m||^2)``: all `ofwa_rr` needs of the calibration rows
    (``x`` ``[K, N]``, ``y`` ``[K, M]``), computed at full float32 precision."""
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    hi = jax.lax.Precision.HIGHEST
    return (
        jnp.matmul(x.T, x, precision=hi),
        jnp.matmul(x.T, y, precision=hi),
        jnp.sum(y * y, axis=0),
    )


def reconstruction_error(gram, xty, yy, codes, alpha) -> jax.Array:
    """``sum_m ||Y_m - alpha_m X b_m||^2`` from the Gram statistics (``b = codes [M, N]``)."""
    return _error(xty.T, yy, lambda b: b @ gram, codes, alpha)


def _error(t_full, yy, gram_product, codes, alpha) -> jax.Array:
    """``sum_m ||Y_m||^2 - 2 alpha_m b_m . T_m + alpha_m^2 b_m . (A b)_m`` with ``T = Y^T X``
    ``[M, N]`` and ``gram_product(b) = A b`` per output row."""
    bxty = jnp.sum(t_full * codes, axis=1)
    bab = jnp.sum(gram_product(codes) * codes, axis=1)
    return jnp.sum(yy - 2.0 * alpha * bxty + alpha * alpha * bab)


def _alternate(t_full, yy, planes, alpha, epochs: int, gram_product, sweep):
    """The ``ofwa_rr`` alternation, shared by the dense and depthwise forms: per epoch the
    closed-form ``alpha_m = b_m . T_m / b_m . (A b)_m`` (a zero denominator keeps the previous
    alpha, as the code's NaN guard), then one sweep per plane, MSB to LSB, against
    ``T - (alpha b without the plane) A``. ``gram_product(b)`` is ``A b`` per output row and
    ``sweep(beta, t, s)`` one Gauss-Seidel pass over a plane. Returns ``(planes, alpha, errors)``,
    ``errors[e]`` the reconstruction error after epoch ``e`` (entry 0: the start point)."""
    weights = plane_weights(planes.shape[0])
    error = lambda planes, alpha: _error(t_full, yy, gram_product, stitch(planes), alpha)  # noqa: E731

    def epoch(e, carry):
        planes, alpha, errors = carry
        b = stitch(planes)
        num = jnp.sum(t_full * b, axis=1)
        den = jnp.sum(gram_product(b) * b, axis=1)
        alpha = _safe_ratio(num, den, alpha)

        def plane(p, planes):  # a loop, so one program size at every bit-width
            b_without = stitch(planes) - weights[p] * planes[p]
            t = t_full - gram_product(alpha[:, None] * b_without)  # R^T X without plane p
            return planes.at[p].set(sweep(planes[p], t, alpha * weights[p]))

        planes = jax.lax.fori_loop(0, planes.shape[0], plane, planes)
        return planes, alpha, errors.at[e + 1].set(error(planes, alpha))

    planes = planes.astype(jnp.float32)
    alpha = alpha.astype(jnp.float32)
    errors = jnp.zeros(epochs + 1, jnp.float32).at[0].set(error(planes, alpha))
    return jax.lax.fori_loop(0, epochs, epoch, (planes, alpha, errors))


@functools.partial(jax.jit, static_argnames=("epochs", "block", "sequential"))
def ofwa_rr_gram(
    gram: jax.Array,
    xty: jax.Array,
    yy: jax.Array,
    planes: jax.Array,
    alpha: jax.Array,
    epochs: int = 100,
    block: int = 64,
    sequential: bool = False,
):
    """`ofwa_rr` on precomputed Gram statistics (`gram_statistics`). Returns
    ``(planes, alpha, errors)`` with ``errors[e]`` the reconstruction error after epoch ``e``
    (``errors`` has ``epochs + 1`` entries; entry 0 is the start point)."""
    sweep = sweep_sequential if sequential else functools.partial(sweep_blocked, block=block)
    return _alternate(
        xty.T,  # T = Y^T X, [M, N]
        yy,
        planes,
        alpha,
        epochs,
        lambda b: b @ gram,
        lambda beta, t, s: sweep(beta, t, gram, s),
    )


_COMPILED: dict = {}


def compiled_ofwa_rr(
    num_planes: int,
    out_features: int,
    fan_in: int,
    epochs: int = 100,
    block: int = 64,
    sequential: bool = False,
):
    """`ofwa_rr_gram` compiled ahead of time for one layer shape (cached), so a timed run does
    not pay compilation: ``compiled(gram, xty, yy, planes, alpha)``."""
    shapes = (
        (fan_in, fan_in),
        (fan_in, out_features),
        (out_features,),
        (num_planes, out_features, fan_in),
        (out_features,),
    )
    return _compiled(ofwa_rr_gram, shapes, epochs=epochs, block=block, sequential=sequential)


def _compiled(fn, shapes: tuple, **static):
    """The jitted ``fn`` lowered for float32 arguments of ``shapes`` and compiled, once per
    function, shapes and static arguments (cached in ``_COMPILED``)."""
    key = (fn.__name__, shapes, tuple(sorted(static.items())))
    if key not in _COMPILED:
        args = [jax.ShapeDtypeStruct(shape, jnp.float32) for shape in shapes]
        _COMPILED[key] = fn.lower(*args, **static).compile()
    return _COMPILED[key]


def compiled_count() -> int:
    """How many `ofwa_rr` programs `compiled_ofwa_rr` holds (one per layer shape and settings)."""
    return len(_COMPILED)


def ofwa_rr(
    x: jax.Array,
    y: jax.Array,
    planes: jax.Array,
    alpha: jax.Array,
    epochs: int = 100,
    block: int = 64,
    sequential: bool = False,
):
    """Response reconstruction on calibration rows ``x`` ``[K, N]`` (im2col input) and ``y``
    ``[K, M]`` (full-precision output) from ``(planes, alpha)``; see the module docstring.
    ``sequential=True`` runs the reference one-coordinate-at-a-time sweep. Returns
    ``(planes, alpha, errors)``."""
    run = compiled_ofwa_rr(
        planes.shape[0], planes.shape[1], planes.shape[2], epochs, block, sequential
    )
    return run(
        *gram_statistics(x, y), jnp.asarray(planes, jnp.float32), jnp.asarray(alpha, jnp.float32)
    )


def gram_statistics_dw(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The depthwise form of `gram_statistics`: per channel m, from rows ``x`` ``[K, M, N]`` (the
    m-th channel's own ``kh*kw`` patch) and ``y`` ``[K, M]``, ``(A_m = X_m^T X_m`` ``[M, N, N]``,
    ``X_m^T Y_m`` ``[M, N]``, ``||Y_m||^2`` ``[M])``, at full float32 precision."""
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    hi = jax.lax.Precision.HIGHEST
    return (
        jnp.einsum("kmi,kmj->mij", x, x, precision=hi),
        jnp.einsum("kmi,km->mi", x, y, precision=hi),
        jnp.sum(y * y, axis=0),
    )


def _channel_gram_product(gram: jax.Array, b: jax.Array) -> jax.Array:
    """``A_m b_m`` per channel (``gram`` ``[M, N, N]``, ``b`` ``[M, N]``), as exact float32
    products and sums (no matmul, so no reduced-precision accelerator default)."""
    return jnp.sum(gram * b[:, None, :], axis=-1)


def reconstruction_error_dw(gram, xty, yy, codes, alpha) -> jax.Array:
    """``sum_m ||Y_m - alpha_m X_m b_m||^2`` from the per-channel statistics of
    `gram_statistics_dw` (``b = codes [M, N]``)."""
    return _error(xty, yy, functools.partial(_channel_gram_product, gram), codes, alpha)


def sweep_dw(beta: jax.Array, t: jax.Array, gram: jax.Array, s: jax.Array) -> jax.Array:
    """The Gauss-Seidel sweep of `sweep_sequential` with a Gram matrix per channel: coordinate n
    of every channel's plane ``beta`` ``[M, N]`` in turn, each against its own ``A_m``
    (``gram`` ``[M, N, N]``), with ``t = T_m`` ``[M, N]`` the residual's ``R_m^T X_m`` without
    this plane and ``s`` ``[M]`` the plane's step ``alpha_m c_i``."""

    def coordinate(n, beta):
        beta = beta.at[:, n].set(0.0)
        coupling = jnp.sum(beta * gram[:, :, n], axis=1)  # (A_m beta_m)_n, beta_n = 0
        g = 2.0 * (s * coupling - t[:, n])
        return beta.at[:, n].set(_coordinate(g, s, gram[:, n, n]))

    return jax.lax.fori_loop(0, beta.shape[1], coordinate, beta)


@functools.partial(jax.jit, static_argnames=("epochs",))
def ofwa_rr_dw_gram(
    gram: jax.Array,
    xty: jax.Array,
    yy: jax.Array,
    planes: jax.Array,
    alpha: jax.Array,
    epochs: int = 100,
):
    """`ofwa_rr_dw` on precomputed per-channel statistics (`gram_statistics_dw`): ``gram``
    ``[M, N, N]``, ``xty`` ``[M, N]``, ``yy`` ``[M]``, ``planes`` ``[P, M, N]``, ``alpha``
    ``[M]``. Returns ``(planes, alpha, errors)`` as `ofwa_rr_gram`."""
    return _alternate(
        xty,  # T_m = X_m^T Y_m, one row per channel
        yy,
        planes,
        alpha,
        epochs,
        functools.partial(_channel_gram_product, gram),
        lambda beta, t, s: sweep_dw(beta, t, gram, s),
    )


def compiled_ofwa_rr_dw(num_planes: int, channels: int, fan_in: int, epochs: int = 100):
    """`ofwa_rr_dw_gram` compiled ahead of time for one depthwise layer shape (cached with the
    `compiled_ofwa_rr` programs): ``compiled(gram, xty, yy, planes, alpha)``."""
    shapes = (
        (channels, fan_in, fan_in),
        (channels, fan_in),
        (channels,),
        (num_planes, channels, fan_in),
        (channels,),
    )
    return _compiled(ofwa_rr_dw_gram, shapes, epochs=epochs)


def ofwa_rr_dw(x: jax.Array, y: jax.Array, planes: jax.Array, alpha: jax.Array, epochs: int = 100):
    """The code's ``ofwa_rr_dw``: response reconstruction of a depthwise conv, whose output
    channel m reads only its own input channel. ``x`` ``[K, M, N]`` holds each channel's
    ``kh*kw`` input patch (N = 9 for 3x3), ``y`` ``[K, M]`` the FP output; every channel has its
    own ``N x N`` Gram matrix, and the alternation of `ofwa_rr` (closed-form alpha, then a
    sequential sweep per plane, MSB first) runs for all channels at once, each on its own
    statistics. A channel with ``||X_m b_m|| = 0`` keeps its alpha (the code replaces the NaN by
    the previous alpha). Returns ``(planes, alpha, errors)``."""
    run = compiled_ofwa_rr_dw(planes.shape[0], planes.shape[1], planes.shape[2], epochs)
    return run(
        *gram_statistics_dw(x, y),
        jnp.asarray(planes, jnp.float32),
        jnp.asarray(alpha, jnp.float32),
    )


def quantize_weight(
    w: jax.Array,
    bits: int,
    x: jax.Array | None = None,
    y: jax.Array | None = None,
    *,
    epochs: int = 100,
    ofwa_epochs: int = 50,
    block: int = 64,
) -> dict:
    """BitSplit for one layer's ``w`` ``[M_out, N]`` at ``bits``: `fwa`, `split`, `ofwa`, then
    `ofwa_rr` on the calibration rows when ``x, y`` are given (else weight-only, as the code does
    for the classifier); ``x`` ``[K, M_out, N]`` (each output channel's own input patch) is a
    depthwise conv's, fitted by `ofwa_rr_dw`. Returns
    ``{'codes', 'alpha', 'weight' (= alpha * codes), 'errors'}``."""
    codes, alpha = fwa(w, bits)
    planes, alpha = ofwa(w, split(codes, bits), alpha, epochs=ofwa_epochs)
    errors = None
    if x is not None and jnp.ndim(x) == 3:
        planes, alpha, errors = ofwa_rr_dw(x, y, planes, alpha, epochs=epochs)
    elif x is not None:
        planes, alpha, errors = ofwa_rr(x, y, planes, alpha, epochs=epochs, block=block)
    codes = stitch(planes)
    return {"codes": codes, "alpha": alpha, "weight": alpha[:, None] * codes, "errors": errors}

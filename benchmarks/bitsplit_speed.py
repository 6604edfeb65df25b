"""Speed of BitSplit's response reconstruction (`ofwa_rr`), seconds per epoch, measured in one run.

Two layers, W4 (three ternary planes), 15,000 random post-ReLU calibration rows:

  resnet20   a ResNet-20 3x3 conv with 64 input and 64 output channels: W is 64 x 576
  resnet18   a ResNet-18 layer4 3x3 conv, 512 -> 512 channels: W is 512 x 4608

and three implementations of the same epoch (closed-form alpha, then a Gauss-Seidel sweep over
the N coordinates of each plane):

  blocked     jaxquant's default: one GEMM per block of 64 coordinates, rank-1 updates inside
  sequential  jaxquant's reference sweep: one coordinate at a time in lax.fori_loop (O(M N) each)
  numpy       the official code's loop (NumPy, one coordinate at a time, float64 as numpy defaults)

Prints s/epoch (median over ``--epochs`` epochs after compilation; the slow variants time one
epoch) and the ratios sequential/blocked and numpy/blocked.

  python benchmarks/bitsplit_speed.py [--layers resnet20,resnet18] [--epochs 3] [--rows 15000]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from jaxquant.methods import bitsplit

LAYERS = {"resnet20": (64, 576), "resnet18": (512, 4608)}
BITS = 4


def problem(out_features: int, fan_in: int, rows: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.normal(size=(rows, fan_in)), 0).astype(np.float32)
    w = (rng.normal(size=(out_features, fan_in)) / np.sqrt(fan_in)).astype(np.float32)
    y = x @ w.T + 0.05 * rng.normal(size=(rows, out_features)).astype(np.float32)
    codes, alpha = bitsplit.fwa(w, BITS)
    return bitsplit.gram_statistics(x, y), bitsplit.split(codes, BITS), alpha


def time_jax(stats, planes, alpha, epochs: int, sequential: bool) -> float:
    """Seconds per epoch of the compiled ofwa_rr (compilation excluded)."""
    run = bitsplit.compiled_ofwa_rr(
        planes.shape[0], planes.shape[1], planes.shape[2], epochs, 64, sequential
    )
    start = time.perf_counter()
    jax.block_until_ready(run(*stats, planes, alpha))
    return (time.perf_counter() - start) / epochs


def numpy_epoch(gram, xty, planes, alpha) -> float:
    """One epoch of the official code's loop (its update rule, on the Gram statistics): seconds."""
    gram, t_full = np.asarray(gram, np.float64), np.asarray(xty, np.float64).T
    planes, alpha = np.asarray(planes, np.float64).copy(), np.asarray(alpha, np.float64)
    c = 2.0 ** np.arange(planes.shape[0] - 1, -1, -1)
    start = time.perf_counter()
    b = np.tensordot(c, planes, 1)
    alpha = (t_full * b).sum(1) / ((b @ gram) * b).sum(1)
    for i in range(planes.shape[0]):
        b_without = np.tensordot(c, planes, 1) - c[i] * planes[i]
        t = t_full - (alpha[:, None] * b_without) @ gram
        s = alpha * c[i]
        beta = planes[i]
        for n in range(gram.shape[0]):
            beta[:, n] = 0
            g = 2 * (s * (beta @ gram[:, n]) - t[:, n])
            beta[:, n] = -np.sign(g)
            beta[np.abs(g) < s * gram[n, n], n] = 0
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", default="resnet20,resnet18")
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed for the blocked sweep")
    parser.add_argument("--rows", type=int, default=15000)
    args = parser.parse_args(argv)
    print(
        f"ofwa_rr, W{BITS} ({BITS - 1} planes), {args.rows} calibration rows, "
        f"jax {jax.__version__}, "
        f"{jax.devices()[0].platform}"
    )
    print(
        "| layer | W (M x N) | blocked s/epoch | sequential s/epoch "
        "| numpy (the code's loop) s/epoch "
        "| sequential / blocked | numpy / blocked |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.layers.split(","):
        out_features, fan_in = LAYERS[name]
        stats, planes, alpha = problem(out_features, fan_in, args.rows)
        blocked = time_jax(stats, planes, alpha, args.epochs, sequential=False)
        sequential = time_jax(stats, planes, alpha, 1, sequential=True)
        reference = numpy_epoch(stats[0], stats[1], planes, alpha)
        print(
            f"| {name} | {out_features} x {fan_in} | {blocked:.3f} | {sequential:.3f} "
            f"| {reference:.3f} "
            f"| {sequential / blocked:.1f} | {reference / blocked:.1f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

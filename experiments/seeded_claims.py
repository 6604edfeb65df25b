r"""Two contested claims settled with seeds, CPU scale, CIFAR-10 (JPEG-rebuilt).

``--claim binreg``: LSQ + Bin Regularization beats LSQ at 2 bits. Both arms fine-tune the same
full-precision SmallCNN (`configs/cifar10_lsq_cpu.py` at 32 bits, seed 0) with the budget of
`configs/cifar10_binreg_cpu.py` (6 epochs, Adam 2e-3 cosine; BR two-stage, CE only for the
first 2 epochs, lambda 0.5), one run per seed; the seed sets the data order, augmentation and
the fine-tuning's own randomness.

``--claim mbquant``: MBQuant's amortised branch selection beats the naive one (branch 0 at every
bit-width), at each bit-width 2..8: `configs/cifar10_mbquant_cpu.py` with
``mbquant.selection`` amortised or naive, one run per seed (from scratch, as the config).

For each bit-width the script prints the mean and standard deviation (n - 1) over the seeds of
each arm, the difference of the means, and a verdict: **holds** when the claimed arm is ahead by
more than twice the standard error of the difference (sqrt(s1^2/n + s2^2/n)), **does not hold**
when it is behind by more than that, else **within noise**. Runs are resumed, not retrained, so
rerunning prints the table again; the tables go to WORKDIR/<claim>.md.

  python experiments/seeded_claims.py --claim binreg --data_dir /tmp/tfds_data \
      [--workdir runs/seeded_claims] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import numpy as np

from jaxquant import cli

HERE = pathlib.Path(__file__).resolve().parent
CONFIGS = HERE / "configs"


def accuracies(workdir: pathlib.Path) -> dict[int, float]:
    """``{bits: test accuracy in %}`` of a finished run."""
    results = json.loads((workdir / "results.json").read_text())["accuracy"]
    return {int(b): 100 * a for b, a in results.items()}


def verdict(claimed: list[float], other: list[float]) -> tuple[float, float, str]:
    """``(difference of means, its standard error, verdict)`` for 'claimed beats other'."""
    n = len(claimed)
    difference = float(np.mean(claimed) - np.mean(other))
    if n < 2:
        return difference, math.nan, "one seed: no verdict"
    se = math.sqrt(np.var(claimed, ddof=1) / n + np.var(other, ddof=1) / n)
    if difference > 2 * se:
        return difference, se, "holds"
    if difference < -2 * se:
        return difference, se, "does not hold"
    return difference, se, "within noise"


def table(title: str, claimed: str, other: str, runs: dict[str, list[dict[int, float]]]) -> str:
    bits = sorted(runs[claimed][0])
    lines = [
        f"**{title}** ({len(runs[claimed])} seeds; mean ± std in %)",
        "",
        f"| bits | {claimed} | {other} | difference | 2 x std. error | claim |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for b in bits:
        a = [r[b] for r in runs[claimed]]
        o = [r[b] for r in runs[other]]
        difference, se, word = verdict(a, o)
        lines.append(
            f"| {b} | {np.mean(a):.2f} ± {np.std(a, ddof=1) if len(a) > 1 else 0:.2f} "
            f"| {np.mean(o):.2f} ± {np.std(o, ddof=1) if len(o) > 1 else 0:.2f} "
            f"| {difference:+.2f} | {2 * se:.2f} | {word} |"
        )
    per_seed = [
        f"- {name}, seed by seed: "
        + "; ".join(" / ".join(f"{r[b]:.2f}" for b in bits) for r in results)
        for name, results in runs.items()
    ]
    return "\n".join(lines + [""] + per_seed)


def train(config: pathlib.Path, workdir: pathlib.Path, overrides: list[str], args) -> None:
    argv = cli.train_argv(
        config, workdir, overrides, data_dir=args.data_dir, progress=not args.no_progress
    )
    cli.run_train(argv, workdir.name)


def binreg_claim(root: pathlib.Path, args) -> str:
    fp = root / "fp_smallcnn"
    train(CONFIGS / "cifar10_lsq_cpu.py", fp, ["--config.bits=32"], args)
    runs = {"LSQ + BR": [], "LSQ": []}
    for seed in args.seeds:
        for name, method in (("LSQ", "lsq"), ("LSQ + BR", "binreg")):
            workdir = root / f"{method}_2_seed{seed}"
            overrides = [f"--config.method={method}", "--config.bits=2", f"--config.seed={seed}"]
            train(
                CONFIGS / "cifar10_binreg_cpu.py",
                workdir,
                overrides + [f"--config.init_from={fp}"],
                args,
            )
            runs[name].append(accuracies(workdir))
    title = (
        "LSQ + BR vs LSQ at 2 bits, fine-tuned from one FP SmallCNN, CIFAR-10 (JPEG-rebuilt), "
        "10,000 test images"
    )
    return table(title, "LSQ + BR", "LSQ", runs)


def mbquant_claim(root: pathlib.Path, args) -> str:
    runs = {"amortised": [], "naive": []}
    for seed in args.seeds:
        for selection in runs:
            workdir = root / f"mbquant_{selection}_seed{seed}"
            overrides = [f"--config.mbquant.selection={selection}", f"--config.seed={seed}"]
            train(CONFIGS / "cifar10_mbquant_cpu.py", workdir, overrides, args)
            runs[selection].append(accuracies(workdir))
    title = "MBQuant amortised vs naive selection, CIFAR-10 (JPEG-rebuilt), 10,000 test images"
    return table(title, "amortised", "naive", runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claim", choices=("binreg", "mbquant"), required=True)
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--workdir", default="runs/seeded_claims")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args()
    root = pathlib.Path(args.workdir)
    start = time.perf_counter()
    text = (binreg_claim if args.claim == "binreg" else mbquant_claim)(root, args)
    print("\n" + text)
    (root / f"{args.claim}.md").write_text(text + "\n")
    print(f"\nsaved {root / f'{args.claim}.md'}; {time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()

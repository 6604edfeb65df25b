r"""LSQ vs LSQ + Bin Regularization on CIFAR-10 (JPEG-rebuilt), CPU scale.

Trains (resuming any finished run in the workdir) with `jaxquant train` and
`configs/cifar10_binreg_cpu.py`:
  - dedicated LSQ and LSQ + BR (two-stage, the paper's schedule) models at 2, 3 and 4 bits;
  - the schedule ablation at 2 bits: BR joint from the start, and alternating epochs;
  - BR in code units (``w/s`` against the integer code) at 2 bits, the reading the paper leaves
    open;
then prints the accuracy tables, the weight quantization MSE and bin statistics per run
(`jaxquant.methods.binreg.bin_report`), and writes them to WORKDIR/table.md with the bin plot of
the largest quantized layer, LSQ vs LSQ + BR at 2 bits (WORKDIR/binreg_bins.png).

  python experiments/binreg_cifar10.py --data_dir /tmp/tfds_data \
      [--workdir runs/binreg_cifar10] [--epochs 6]

Nine runs of 6 epochs: about 35 minutes on the 2-core machine when it is quiet.
Build the data first (tfds downloads it when online):
  jaxquant data prepare cifar10 --data-dir /tmp/tfds_data
Offline, from a folder holding `cifar-10-binary.tar.gz`:
  jaxquant data prepare cifar10 --data-dir /tmp/tfds_data --manual-dir FOLDER_WITH_ARCHIVES
adding --no-verify-checksums for an archive that differs from the official one (such as the
JPEG-rebuilt copy the numbers in experiments/README.md were measured on).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

import numpy as np

from jaxquant import cli
from jaxquant.config import apply_overrides, load_config
from jaxquant.methods import binreg
from jaxquant.report import format_table, plot_accuracy
from jaxquant.runs import load_run

HERE = pathlib.Path(__file__).resolve().parent
CONFIG = HERE / "configs" / "cifar10_binreg_cpu.py"
TITLE = (
    "CIFAR-10 (JPEG-rebuilt) test accuracy (%), SmallCNN 16/32/64/64, dedicated models, "
    "10,000 test images"
)


@dataclasses.dataclass(frozen=True)
class Run:
    """One `jaxquant train` call: a table row ``label`` at ``bits``, workdir ``name``."""

    label: str
    name: str
    bits: int
    overrides: tuple[tuple[str, str], ...] = ()
    table: str = "main"  # main (the bit-width table) | ablation (2-bit rows)


PLAN = tuple(
    [
        run
        for b in (2, 3, 4)
        for run in (
            Run("LSQ", f"lsq_{b}", b, (("method", "lsq"),)),
            Run("LSQ + BR (two-stage)", f"binreg_{b}", b),
        )
    ]
    + [
        Run(
            "LSQ + BR, joint from the start",
            "binreg_2_joint",
            2,
            (("binreg.schedule", "joint"),),
            "ablation",
        ),
        Run(
            "LSQ + BR, alternating epochs",
            "binreg_2_alternating",
            2,
            (("binreg.schedule", "alternating"),),
            "ablation",
        ),
        Run(
            "LSQ + BR (two-stage), code units",
            "binreg_2_code",
            2,
            (("binreg.units", "code"),),
            "ablation",
        ),
    ]
)


def train_argv(run: Run, root: pathlib.Path, args) -> list[str]:
    overrides = [f"--config.bits={run.bits}"] + [
        f"--config.{key}={value}" for key, value in run.overrides
    ]
    return cli.train_argv(
        CONFIG,
        root / run.name,
        overrides,
        data_dir=args.data_dir,
        epochs=args.epochs,
        progress=not args.no_progress,
    )


def accuracy(workdir: pathlib.Path, bits: int) -> float:
    return json.loads((workdir / "results.json").read_text())["accuracy"][str(bits)]


def run_statistics(workdir: pathlib.Path, dataset) -> tuple[dict, tuple]:
    """The `bin_report` of a run at its (one) bit-width, and its ``(params, layers)``."""
    _, _, trainer, state, _ = load_run(workdir, dataset)
    layers = binreg.model_layers(trainer.model, dataset.train_images[:1].astype(np.float32))
    return binreg.bin_report(state.params, layers, 0), (state.params, layers)


def spread_line(report: dict) -> tuple[float, float]:
    """Count-weighted mean |offset| and mean standard deviation of the bins, in steps."""
    bins = [b for name, r in report.items() if name != "total" for b in r["bins"]]
    counts = np.array([b["count"] for b in bins], float)
    offsets = np.abs([b["mean_offset"] for b in bins])
    stds = np.sqrt(np.maximum([b["variance"] for b in bins], 0.0))
    return float(np.sum(counts * offsets) / counts.sum()), float(
        np.sum(counts * stds) / counts.sum()
    )


def summarize(root: pathlib.Path, plan, dataset, seconds: dict | None = None) -> str:
    """The accuracy tables, the MSE table, the per-layer 2-bit comparison and the bin plot."""
    main_rows: dict[str, dict[int, float]] = {}
    ablation: dict[str, dict[int, float]] = {}
    statistics = {}
    for run in plan:
        acc = accuracy(root / run.name, run.bits)
        if run.table == "main":
            main_rows.setdefault(run.label, {})[run.bits] = acc
        if run.bits == 2:
            ablation[run.label] = {2: acc}
        statistics[run] = run_statistics(root / run.name, dataset)
    text = format_table(main_rows, title=TITLE)
    text += "\n\n" + format_table(
        ablation, title="2 bits: schedule and units ablation (test accuracy, %)"
    )
    lines = [
        "**Weight quantization error per run** (all quantized layers; MSE in weight units and in "
        "steps^2; BR summed over layers; bin offsets and spreads in steps, count-weighted)",
        "",
        "| run | bits | MSE | MSE / s^2 | BR | BR / s^2 | mean abs(bin offset) | mean bin std |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run, (report, _) in statistics.items():
        total = report["total"]
        offset, std = spread_line(report)
        lines.append(
            f"| {run.label} | {run.bits} | {total['mse']:.3e} | {total['mse_code']:.4f} | "
            f"{total['br']:.3e} | "
            f"{total['br_code']:.4f} | {offset:.4f} | {std:.4f} |"
        )
    text += "\n\n" + "\n".join(lines)

    pair = [run for run in plan if run.bits == 2 and run.table == "main"]
    if len(pair) == 2:
        (lsq_report, (lsq_params, lsq_layers)), (br_report, (br_params, br_layers)) = (
            statistics[r] for r in pair
        )
        rows = [
            "**2-bit, per layer: quantization MSE (steps^2) and step, LSQ vs LSQ + BR**",
            "",
            "| layer | weights | LSQ MSE / s^2 | LSQ + BR MSE / s^2 | LSQ step | LSQ + BR step |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name in lsq_report:
            if name != "total":
                a, b = lsq_report[name], br_report[name]
                rows.append(
                    f"| {name} | {a['weights']:,} | {a['mse_code']:.4f} | {b['mse_code']:.4f} | "
                    f"{a['step']:.4g} | {b['step']:.4g} |"
                )
        text += "\n\n" + "\n".join(rows)
        name = binreg.largest_layer(lsq_layers, lsq_params)
        path = tuple(name.split("/"))
        png = binreg.plot_bins(
            [
                (pair[0].label, binreg.get_path(lsq_params, path), lsq_layers[path], 0),
                (pair[1].label, binreg.get_path(br_params, path), br_layers[path], 0),
            ],
            root / "binreg_bins.png",
            title=f"{name}: 2-bit weights by bin",
        )
        text += f"\n\nbin plot of {name} (the largest quantized layer): {png.name}"
    if seconds:
        text += (
            "\n\nwall-clock seconds per `jaxquant train` call (2-core CPU; a finished run resumes "
            "and only evaluates): " + ", ".join(f"{k}: {v:.0f}" for k, v in seconds.items())
        )
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--workdir", default="runs/binreg_cifar10")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    root = pathlib.Path(args.workdir)
    seconds = {}
    for run in PLAN:
        seconds[run.name] = cli.run_train(train_argv(run, root, args))

    from jaxquant.data import load_dataset

    dataset = load_dataset("cifar10", args.data_dir or None)
    text = summarize(root, PLAN, dataset, seconds)
    config = json.loads((root / PLAN[1].name / "config.json").read_text())
    lam = binreg.resolve_lambda(apply_overrides(load_config(CONFIG), {"method": config["method"]}))
    text += (
        f"\n\nconfig: {config['epochs']} epochs, batch {config['batch_size']}, "
        f"seed {config['seed']}, lambda {lam:g} (LSQ rows: 0), "
        f"BR from epoch {config['binreg_start_epochs']:g} (two-stage), "
        f"{config['binreg_units']} units, {config['binreg_layer_reduction']} over layers"
    )
    print("\n" + text)
    (root / "table.md").write_text(text + "\n")
    main_rows = {}
    for run in PLAN:
        if run.table == "main":
            main_rows.setdefault(run.label, {})[run.bits] = accuracy(root / run.name, run.bits)
    plot_accuracy(
        main_rows, root / "binreg_cifar10.png", title="CIFAR-10 (JPEG-rebuilt): LSQ vs LSQ + BR"
    )
    print(
        f"saved {root / 'table.md'}, {root / 'binreg_bins.png'} and {root / 'binreg_cifar10.png'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

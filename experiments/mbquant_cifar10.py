r"""MBQuant on CIFAR-10 (JPEG-rebuilt), CPU scale: amortised vs naive branch selection vs no
distillation vs the Any-Precision baseline of the same quantized-body size, at every bit-width 2..8.

Trains (resuming any finished run in the workdir) with `jaxquant train`:
  - MBQuant, amortised selection, distillation from 8 bits (`configs/cifar10_mbquant_cpu.py`);
  - the same with ``selection=naive`` (branch 0 at every bit-width: the paper's ablation);
  - the same with ``distillation=none``;
  - Any-Precision DNN with as many quantized body weights (`configs/cifar10_anyprecision_cpu.py`);
then prints the accuracy table, the quantized-body weight counts and the BitOPs per bit-width,
and writes the table and a plot to the workdir.

  python experiments/mbquant_cifar10.py --data_dir /tmp/tfds_data \
      [--workdir runs/mbquant_cifar10] [--epochs 2]

Build the data first (tfds downloads it when online):
  jaxquant data prepare cifar10 --data-dir /tmp/tfds_data
Offline, from a folder holding `cifar-10-binary.tar.gz`:
  jaxquant data prepare cifar10 --data-dir /tmp/tfds_data --manual-dir FOLDER_WITH_ARCHIVES
adding --no-verify-checksums for an archive that differs from the official one (such as the
JPEG-rebuilt copy the numbers in experiments/README.md were measured on).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import numpy as np

from jaxquant import cli
from jaxquant.config import load_config
from jaxquant.methods import mbquant
from jaxquant.report import format_table, plot_accuracy

HERE = pathlib.Path(__file__).resolve().parent
TITLE = "CIFAR-10 (JPEG-rebuilt) test accuracy (%), 10,000 test images"
RUNS = {  # row label: (config file, overrides)
    "MBQuant, amortised selection, distillation": ("cifar10_mbquant_cpu.py", []),
    "MBQuant, naive selection, distillation": (
        "cifar10_mbquant_cpu.py",
        ["--config.mbquant.selection=naive"],
    ),
    "MBQuant, amortised selection, no distillation": (
        "cifar10_mbquant_cpu.py",
        ["--config.distillation=none"],
    ),
    "Any-Precision DNN, same quantized-body size": ("cifar10_anyprecision_cpu.py", []),
}
FOLDERS = dict(zip(RUNS, ("amortised", "naive", "no_distillation", "anyprecision")))


def train(config_file: str, overrides: list[str], workdir: pathlib.Path, args) -> float:
    return cli.run_train(
        cli.train_argv(
            HERE / "configs" / config_file,
            workdir,
            overrides,
            data_dir=args.data_dir,
            epochs=args.epochs,
            progress=not args.no_progress,
        )
    )


def accuracies(workdir: pathlib.Path) -> dict[int, float]:
    return {
        int(b): a for b, a in json.loads((workdir / "results.json").read_text())["accuracy"].items()
    }


def quantized_body_weights(config_file: str) -> int:
    """Weights of the quantized convs (MBQuant: all G branches; Any-Precision: the body convs
    between the FP stem and the FP classifier), from the model's own initialisation."""
    from jaxquant.data import NORMALIZATION, ArrayDataset
    from jaxquant.methods import build_trainer

    config = load_config(HERE / "configs" / config_file)
    images = np.zeros((2, 32, 32, 3), np.uint8)
    labels = np.zeros(2, np.int32)
    dataset = ArrayDataset("cifar10", images, labels, images, labels, 10, *NORMALIZATION["cifar10"])
    trainer = build_trainer(config, dataset, 1)
    params = jax.eval_shape(lambda: trainer.init(jax.random.key(0), images)).params
    return sum(
        int(np.prod(layer["kernel"].shape))
        for name, layer in params.items()
        if name.startswith("conv") and "kernel" in layer
    )


def bitops_lines(config_file: str) -> list[str]:
    config = load_config(HERE / "configs" / config_file)
    convs = mbquant.multibranch_cnn_convs(
        tuple(config.widths), tuple(config.mbquant.partial_widths), 32, config.stem_pool
    )
    table = mbquant.bitops_table(convs, tuple(config.bits))
    return [
        f"{b}-bit {ours / 1e6:.1f} M ({ratio:.3f} x b*b)" for b, (ours, _, ratio) in table.items()
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--workdir", default="runs/mbquant_cifar10")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    root = pathlib.Path(args.workdir)
    seconds, table = {}, {}
    for label, (config_file, overrides) in RUNS.items():
        workdir = root / FOLDERS[label]
        seconds[FOLDERS[label]] = train(config_file, overrides, workdir, args)
        table[label] = accuracies(workdir)

    config = json.loads((root / "amortised" / "config.json").read_text())
    text = format_table(table, title=TITLE)
    text += (
        "\n\nquantized body weights: MBQuant "
        f"{quantized_body_weights('cifar10_mbquant_cpu.py'):,}"
        f" (4 branches), Any-Precision {quantized_body_weights('cifar10_anyprecision_cpu.py'):,}"
    )
    text += "\nMBQuant BitOPs of the quantized convs: " + ", ".join(
        bitops_lines("cifar10_mbquant_cpu.py")
    )
    text += (
        f"\n\nconfig: {config['epochs']} epochs, batch {config['batch_size']}, "
        f"seed {config['seed']}, MBQuant widths {tuple(config['widths'])}"
    )
    text += (
        "\nwall-clock seconds per `jaxquant train` call (2-core CPU; a finished run resumes "
        "and only evaluates): " + ", ".join(f"{k}: {v:.0f}" for k, v in seconds.items())
    )
    print("\n" + text)
    (root / "table.md").write_text(text + "\n")
    plot_accuracy(
        table,
        root / "mbquant_cifar10.png",
        title="CIFAR-10 (JPEG-rebuilt): MBQuant ablations vs Any-Precision",
    )
    print(f"saved {root / 'table.md'} and {root / 'mbquant_cifar10.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

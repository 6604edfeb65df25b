r"""Any-Precision (one model, bits 2/4/8/FP) vs dedicated LSQ models (one per bit-width) on
Fashion-MNIST, same SmallCNN and budget. Trains every run with `jaxquant train` (resuming any
finished run in the workdir), then prints the table and writes it with a plot.

  python experiments/fashion_mnist.py --data_dir /tmp/tfds_data \
      [--workdir runs/fashion_mnist] [--epochs 3]

Build the data first (tfds downloads it when online):
  jaxquant data prepare fashion_mnist --data-dir /tmp/tfds_data
Offline, from a folder holding its four official `.gz` archives:
  jaxquant data prepare fashion_mnist --data-dir /tmp/tfds_data --manual-dir FOLDER_WITH_ARCHIVES
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from jaxquant import cli
from jaxquant.report import format_table, plot_accuracy

HERE = pathlib.Path(__file__).resolve().parent
RUNS = [  # (table row, config file, bits override)
    ("Any-Precision (one model)", "fashion_mnist_anyprecision.py", None),
    ("dedicated LSQ 2-bit", "fashion_mnist_lsq.py", "2"),
    ("dedicated LSQ 4-bit", "fashion_mnist_lsq.py", "4"),
    ("dedicated LSQ 8-bit", "fashion_mnist_lsq.py", "8"),
    ("dedicated FP", "fashion_mnist_lsq.py", "32"),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--workdir", default="runs/fashion_mnist")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    root = pathlib.Path(args.workdir)
    table, dedicated, seconds = {}, {}, {}
    for row, config_file, bits in RUNS:
        workdir = root / (config_file[:-3] + (f"_{bits}" if bits else ""))
        argv = cli.train_argv(
            HERE / "configs" / config_file,
            workdir,
            [f"--config.bits={bits}"] if bits else [],
            data_dir=args.data_dir,
            epochs=args.epochs,
            progress=not args.no_progress,
        )
        seconds[row] = cli.run_train(argv, label=row)
        accuracies = {
            int(b): a
            for b, a in json.loads((workdir / "results.json").read_text())["accuracy"].items()
        }
        if bits:
            dedicated.update(accuracies)
        else:
            table[row] = accuracies
    table["dedicated models (one per bit-width)"] = dedicated
    title = "Fashion-MNIST test accuracy (%), SmallCNN, 10,000 test images"
    text = format_table(table, title=title)
    text += "\n\nwall-clock seconds per run (2-core CPU): " + ", ".join(
        f"{k}: {v:.0f}" for k, v in seconds.items()
    )
    print("\n" + text)
    (root / "table.md").write_text(text + "\n")
    plot_accuracy(table, root / "fashion_mnist.png", title="Fashion-MNIST: one model vs dedicated")
    print(f"saved {root / 'table.md'} and {root / 'fashion_mnist.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

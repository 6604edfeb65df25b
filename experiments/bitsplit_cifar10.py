"""BitSplit post-training quantization on CIFAR-10 (JPEG-rebuilt), CPU scale.

Trains (or resumes) the FP ResNet-20 of `configs/cifar10_fp_resnet20_cpu.py` with `jaxquant train`,
then runs `jaxquant ptq` with `configs/cifar10_bitsplit_cpu.py`: W8A8, W4A8, W3A8, W2A8 and W4A4,
each by per-channel round-to-nearest, BitSplit and BitSplit + ECAQ, with the calibration time of
each. Prints the tables and the wall-clock time of both stages; writes the PTQ files, the table
and the plot to WORKDIR/ptq.

  python experiments/bitsplit_cifar10.py --data_dir /tmp/tfds_data [--workdir runs/bitsplit_cifar10]

Build the data first (tfds downloads it when online):
  jaxquant data prepare cifar10 --data-dir /tmp/tfds_data
Offline, from a folder holding `cifar-10-binary.tar.gz`:
  jaxquant data prepare cifar10 --data-dir /tmp/tfds_data --manual-dir FOLDER_WITH_ARCHIVES
adding --no-verify-checksums for an archive that differs from the official one (such as the
JPEG-rebuilt copy the numbers in experiments/README.md were measured on).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from jaxquant import cli, ptq
from jaxquant.config import apply_overrides, load_config

HERE = pathlib.Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--workdir", default="runs/bitsplit_cifar10")
    parser.add_argument(
        "--epochs", type=int, default=None, help="FP training epochs (default: the config's 3)"
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    fp_run = pathlib.Path(args.workdir) / "fp"
    train_seconds = cli.run_train(
        cli.train_argv(
            HERE / "configs" / "cifar10_fp_resnet20_cpu.py",
            fp_run,
            data_dir=args.data_dir,
            epochs=args.epochs,
            progress=not args.no_progress,
        )
    )
    config = load_config(HERE / "configs" / "cifar10_bitsplit_cpu.py")
    print(
        f"\n=== jaxquant ptq --workdir {fp_run} "
        f"--config {HERE / 'configs' / 'cifar10_bitsplit_cpu.py'}",
        flush=True,
    )
    start = time.perf_counter()
    ptq.run(
        fp_run,
        apply_overrides(config, {}),
        pathlib.Path(args.workdir) / "ptq",
        progress=not args.no_progress,
    )
    ptq_seconds = time.perf_counter() - start
    print(
        f"\nwall-clock: FP training {train_seconds:.0f} s (a finished run only evaluates), "
        f"PTQ {ptq_seconds:.0f} s, total {(train_seconds + ptq_seconds) / 60:.1f} min"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

r"""Fine-tuning from a full-precision model, as Bin Regularization's paper does, CPU scale:
CIFAR-10 (JPEG-rebuilt), post-activation ResNet-20.

1. The FP model: `configs/cifar10_fp_resnet20_cpu.py` (3 epochs), or an existing run
   (``--fp_run``).
2. 2-bit LSQ and 2-bit LSQ + BR, each started from it with ``--config.init_from``
   (`configs/cifar10_binreg_finetune_cpu.py`: lr 0.01 cosine, weight decay 2.5e-5 at 2 bits,
   BR lambda 0.5 after a first CE-only epoch).

Every run evaluates at step 0 (the fine-tuned runs: the FP weights with fresh 2-bit step sizes)
and after every epoch; the script prints those evaluations from the runs' ``metrics.jsonl`` as
one table and writes it to WORKDIR/table.md. Finished runs are resumed, not retrained.

  python experiments/binreg_finetune_cifar10.py --data_dir /tmp/tfds_data \
      [--workdir runs/binreg_finetune_cifar10] [--fp_run runs/fp_resnet20_cpu]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

from jaxquant import cli
from jaxquant.training.metrics import read_metrics

HERE = pathlib.Path(__file__).resolve().parent
FP_CONFIG = HERE / "configs" / "cifar10_fp_resnet20_cpu.py"
FINETUNE_CONFIG = HERE / "configs" / "cifar10_binreg_finetune_cpu.py"


def evaluations(workdir: pathlib.Path, label: str) -> dict[float, float]:
    """``{epoch: test accuracy in %}`` of a run's evaluations at bit-width ``label``."""
    key = f"eval/accuracy/{label}"
    return {r["epoch"]: 100 * r[key] for r in read_metrics(workdir) if key in r}


def table(rows: list[tuple[str, pathlib.Path, str]]) -> str:
    """One row per run: its evaluations by epoch (from ``metrics.jsonl``), its final test
    accuracy and training seconds (from ``results.json``)."""
    epochs = sorted({e for _, w, label in rows for e in evaluations(w, label)})
    header = "| run | " + " | ".join(f"epoch {e:g}" for e in epochs) + " | final | seconds |"
    lines = [header, "|---|" + "---:|" * (len(epochs) + 2)]
    for name, workdir, label in rows:
        accuracy = evaluations(workdir, label)
        results = json.loads((workdir / "results.json").read_text())
        final = 100 * next(iter(results["accuracy"].values()))
        cells = [f"{accuracy[e]:.2f}" if e in accuracy else "-" for e in epochs]
        cells += [f"{final:.2f}", str(results.get("train_seconds", "-"))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def start_without_reestimation(fp: pathlib.Path, data_dir: str) -> float:
    """The 2-bit LSQ model's first evaluation (%) when fine-tuning keeps the FP run's BatchNorm
    statistics (``init_from_bn_batches=0``): what the re-estimation buys."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxquant.config import load_config
    from jaxquant.data import load_config_dataset
    from jaxquant.methods import build_trainer
    from jaxquant.training import evaluate_dataset
    from jaxquant.training.init_from import initialize_from, load_source

    config = load_config(FINETUNE_CONFIG)
    config.method, config.data_dir = "lsq", data_dir
    dataset = load_config_dataset(config)
    trainer = build_trainer(config, dataset, dataset.train_size // config.batch_size)
    sample = dataset.train_examples(np.arange(config.batch_size))[0]
    state = trainer.init(jax.random.key(0), jnp.asarray(sample))
    state = initialize_from(trainer, state, load_source(fp), sample, jax.random.key(1))
    return 100 * evaluate_dataset(trainer, state, dataset, config.eval_batch_size)[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--workdir", default="runs/binreg_finetune_cifar10")
    parser.add_argument("--fp_run", default="", help="an existing FP run (default: train one)")
    parser.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default 3)")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args()
    root = pathlib.Path(args.workdir)
    start = time.perf_counter()
    fp = pathlib.Path(args.fp_run) if args.fp_run else root / "fp"
    if not args.fp_run:
        cli.run_train(
            cli.train_argv(FP_CONFIG, fp, data_dir=args.data_dir, progress=not args.no_progress),
            "FP ResNet-20",
        )
    runs = [("FP ResNet-20 (the source)", fp, "FP")]
    for name, method in (("2-bit LSQ from FP", "lsq"), ("2-bit LSQ + BR from FP", "binreg")):
        workdir = root / f"{method}_2_finetuned"
        overrides = [f"--config.method={method}", f"--config.init_from={fp}"]
        cli.run_train(
            cli.train_argv(
                FINETUNE_CONFIG,
                workdir,
                overrides,
                data_dir=args.data_dir,
                epochs=args.epochs,
                progress=not args.no_progress,
            ),
            name,
        )
        runs.append((name, workdir, "2-bit"))
    text = (
        "CIFAR-10 (JPEG-rebuilt) test accuracy (%) at each evaluation, 10,000 test images "
        "(epoch 0: the first evaluation, before any fine-tuning step)\n\n" + table(runs)
    )
    text += (
        "\n\nThe 2-bit LSQ model's first evaluation without re-estimating BatchNorm "
        f"(init_from_bn_batches=0): {start_without_reestimation(fp, args.data_dir):.2f}"
    )
    print("\n" + text)
    (root / "table.md").parent.mkdir(parents=True, exist_ok=True)
    (root / "table.md").write_text(text + "\n")
    print(f"\nsaved {root / 'table.md'}; {time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()

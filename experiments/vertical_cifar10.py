r"""Vertical Layering vs dedicated LSQ models vs MSB-slicing, on CIFAR-10 (JPEG-rebuilt), CPU scale.

Trains (resuming any finished run in the workdir) with `jaxquant train`:
  - one Vertical Layering model for bits 2..8 and FP (`configs/cifar10_vertical_cpu.py`);
  - one dedicated LSQ model per bit-width 2..8 and an FP model (`configs/cifar10_lsq_cpu.py`);
then evaluates the dedicated 8-bit model with its weights MSB-sliced to k bits (the paper's
motivation: slicing a normally trained model collapses at low bits), exports the VL model's
bit-plane artefact and reads it back at every bit-width. Prints the table and writes it, with a
plot, to the workdir.

  python experiments/vertical_cifar10.py --data_dir /tmp/tfds_data \
      [--workdir runs/vertical_cifar10] [--epochs 4]

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
import jax.numpy as jnp
import numpy as np

from jaxquant import cli
from jaxquant import quantizers as q
from jaxquant.config import with_bits
from jaxquant.export import export_vertical, load_vertical
from jaxquant.methods import build_model, vertical
from jaxquant.report import format_table, plot_accuracy
from jaxquant.runs import load_run
from jaxquant.training import accuracy

HERE = pathlib.Path(__file__).resolve().parent
DEDICATED_BITS = (2, 3, 4, 5, 6, 7, 8, 32)
TITLE = "CIFAR-10 (JPEG-rebuilt) test accuracy (%), SmallCNN 16/32/64/64, 10,000 test images"


def train(config_file: str, workdir: pathlib.Path, args, bits: int | None = None) -> float:
    return cli.run_train(
        cli.train_argv(
            HERE / "configs" / config_file,
            workdir,
            [f"--config.bits={bits}"] if bits else [],
            data_dir=args.data_dir,
            epochs=args.epochs,
            progress=not args.no_progress,
        )
    )


def accuracies(workdir: pathlib.Path) -> dict[int, float]:
    return {
        int(b): a for b, a in json.loads((workdir / "results.json").read_text())["accuracy"].items()
    }


def msb_sliced_accuracy(
    run, dataset, rounded: bool, slice_weights: bool = True
) -> dict[int, float]:
    """Test accuracy of the dedicated 8-bit LSQ model with its weight codes cut to their top k bits
    (`methods.vertical.msb_sliced_weights`: floor, or rounded by the next bit) and activations at
    k bits with the 8-bit step scaled by ``Qp_8 / Qp_k`` (the same clipping range); BatchNorm of
    the 8-bit model, untouched.
    ``slice_weights=False`` keeps the 8-bit weights: only the activations go to k bits.
    ``run``: the dedicated model's `jaxquant.runs.load_run`."""
    config, _, trainer, state, _ = run
    source_bits = int(config.bits[0])
    spec = vertical.frozen_weight_spec(trainer.model.spec)
    result = {}
    for k in range(2, source_bits + 1):
        params = vertical.msb_sliced_weights(
            state.params, k if slice_weights else source_bits, source_bits, rounded=rounded
        )
        _, qp_k = q.quant_range(k, False)
        _, qp_source = q.quant_range(source_bits, False)
        ratio = float(qp_source) / float(qp_k)
        params = jax.tree_util.tree_map_with_path(
            lambda path, leaf: (
                leaf * ratio if getattr(path[-1], "key", None) == "act_step" else leaf
            ),
            params,
        )
        model = build_model(with_bits(config, (k,)), dataset.num_classes, spec)
        apply = jax.jit(
            lambda v, x: model.apply(v, trainer.preprocess(x, False, None), 0, train=False)
        )
        variables = {"params": params, "batch_stats": state.batch_stats}
        result[k] = accuracy(
            lambda x: apply(variables, jnp.asarray(x)), dataset.test_images, dataset.test_labels
        )
    return result


def code_usage(run) -> str:
    """How much of its 8-bit range the dedicated model's weights use: mean |q_8| and the share of
    codes that a floor slice to 4 bits sends to 0 or -1 (|q_8| < 16): why slicing collapses.
    ``run``: the dedicated model's `jaxquant.runs.load_run`."""
    config, _, _, state, _ = run
    source_bits = int(config.bits[0])
    codes = []
    for path in vertical.quantized_layers(state.params):
        layer = vertical.get_path(state.params, path)
        step = layer["weight_step"][0]
        codes.append(
            np.abs(np.asarray(q.lsq_codes(layer["kernel"], step, source_bits, signed=True))).ravel()
        )
    codes = np.concatenate(codes)
    return (
        f"dedicated 8-bit model's weight codes: mean |q_8| = {codes.mean():.1f} of 128, "
        f"{100 * np.mean(codes < 16):.1f}% have |q_8| < 16 (their top 4 bits are sign only)"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--workdir", default="runs/vertical_cifar10")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    root = pathlib.Path(args.workdir)
    seconds = {}
    vl_dir = root / "vertical"
    seconds["VL (bits 2..8, FP)"] = train("cifar10_vertical_cpu.py", vl_dir, args)
    dedicated = {}
    for bits in DEDICATED_BITS:
        workdir = root / f"lsq_{bits}"
        seconds[f"LSQ {bits}"] = train("cifar10_lsq_cpu.py", workdir, args, bits)
        dedicated.update(accuracies(workdir))

    from jaxquant.data import load_dataset

    config = json.loads((vl_dir / "config.json").read_text())
    dataset = load_dataset("cifar10", args.data_dir or None)
    lsq_8 = load_run(root / "lsq_8", dataset)
    table = {
        "Vertical Layering (one model)": accuracies(vl_dir),
        "dedicated LSQ (one model per bit-width)": dedicated,
        "dedicated 8-bit, MSB-sliced (floor)": msb_sliced_accuracy(lsq_8, dataset, rounded=False),
        "dedicated 8-bit, MSB-sliced (rounded)": msb_sliced_accuracy(lsq_8, dataset, rounded=True),
        "dedicated 8-bit, 8-bit weights, activations at k": msb_sliced_accuracy(
            lsq_8, dataset, False, False
        ),
    }

    # The artefact: one file, every bit-width a prefix of it; re-evaluate each from the file.
    summary = export_vertical(
        vl_dir, root / "vertical.vl", basic_bits=2, dataset=dataset, log=print
    )
    from_file, bytes_read = {}, {}
    for k in summary["bits"]:
        model = load_vertical(root / "vertical.vl", k)
        from_file[k] = accuracy(model, dataset.test_images, dataset.test_labels)
        bytes_read[k] = model.bytes_read
    table["VL read from the artefact (k-bit prefix)"] = from_file

    text = format_table(table, title=TITLE)
    text += (
        "\n\nartefact bytes read per bit-width (of "
        + f"{summary['file_bytes']:,}): "
        + ", ".join(f"{k}-bit {b:,}" for k, b in bytes_read.items())
    )
    text += "\n\n" + code_usage(lsq_8)
    text += (
        f"\n\nconfig: {config['epochs']} epochs, batch {config['batch_size']}, "
        f"seed {config['seed']}"
    )
    text += (
        "\nwall-clock seconds per `jaxquant train` call (2-core CPU; a finished run resumes and "
        "only evaluates): " + ", ".join(f"{k}: {v:.0f}" for k, v in seconds.items())
    )
    print("\n" + text)
    (root / "table.md").write_text(text + "\n")
    plot_accuracy(
        {k: v for k, v in table.items() if "artefact" not in k},
        root / "vertical_cifar10.png",
        title="CIFAR-10 (JPEG-rebuilt): Vertical Layering vs dedicated vs MSB slicing",
    )
    print(f"saved {root / 'table.md'} and {root / 'vertical_cifar10.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

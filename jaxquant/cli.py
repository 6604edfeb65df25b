"""``jaxquant train|eval``: ml_collections configs, a progress bar, and a per-bit-width table.

  jaxquant train [--config FILE] [--workdir DIR] [--config.KEY=VALUE ...]
  jaxquant eval  --workdir DIR
  jaxquant export --workdir DIR --out model.vl [--basic-bits 2] [--recalibrate-batches N]
  jaxquant bins  --workdir DIR [--layer NAME] [--bits B] [--plot PNG [--compare DIR ...]]
  jaxquant ptq   --workdir FP_RUN [--config FILE] [--out DIR] [--config.KEY=VALUE ...]
  jaxquant compare CONFIG [--workdir DIR] [--config.KEY=VALUE ...] [--no-progress]
  jaxquant data prepare NAME [NAME ...] [--data-dir DIR] [--manual-dir DIR]
                [--file-format array_record|tfrecord] [--no-verify-checksums]

Without ``--config`` the embedded default runs (Any-Precision on scikit-learn's digits, offline).
A user error prints one line and exits with code 2; nothing in the workdir is overwritten.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Sequence

EXIT_USER_ERROR = 2


def _split_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Separate ``--config.key=value`` (or ``--config.key value``) from the other arguments."""
    rest, overrides = [], {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            if "=" in arg:
                key, value = arg[len("--config.") :].split("=", 1)
            elif i + 1 < len(argv):
                key, value = arg[len("--config.") :], argv[i + 1]
                i += 1
            else:
                from jaxquant.errors import ConfigError

                raise ConfigError(f"{arg} needs a value: {arg}=VALUE")
            overrides[key] = value
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxquant", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model (resumes from --workdir)")
    train.add_argument(
        "--config",
        default=None,
        help="config file with get_config() (default: embedded digits run)",
    )
    train.add_argument("--workdir", default=None, help="run folder (default: runs/<config name>)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate = sub.add_parser(
        "eval", help="evaluate the latest checkpoint of a workdir at every bit-width"
    )
    evaluate.add_argument("--workdir", required=True)
    evaluate.add_argument(
        "--recalibrate-batches",
        type=int,
        default=0,
        help="vertical: re-estimate BatchNorm of untrained bit-widths from N training batches",
    )
    export = sub.add_parser("export", help="write the vertical-layered artefact of a vertical run")
    export.add_argument("--workdir", required=True)
    export.add_argument("--out", required=True, help="artefact path, e.g. model.vl")
    export.add_argument(
        "--basic-bits", type=int, default=2, help="bits of the basic layer (the lowest bit-width)"
    )
    export.add_argument(
        "--recalibrate-batches",
        type=int,
        default=0,
        help="re-estimate BatchNorm of untrained bit-widths from N training batches",
    )
    export.add_argument(
        "--no-eval", action="store_true", help="do not evaluate the loaded models on the test set"
    )
    bins = sub.add_parser(
        "bins", help="weight quantization MSE and bin statistics per layer (Bin Regularization)"
    )
    bins.add_argument("--workdir", required=True)
    bins.add_argument("--layer", default=None, help="one layer (e.g. conv0); prints its bins")
    bins.add_argument(
        "--bits", type=int, default=None, help="one trained bit-width (default: every integer one)"
    )
    bins.add_argument("--out", default=None, help="JSON path (default: WORKDIR/bins.json)")
    bins.add_argument(
        "--plot",
        default=None,
        help="PNG of the layer's weights coloured by bin (--layer, else the largest)",
    )
    bins.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="DIR",
        help="another workdir whose same layer is drawn beside it (repeatable)",
    )
    ptq = sub.add_parser(
        "ptq", help="post-training quantization (BitSplit, round-to-nearest) of an FP run"
    )
    ptq.add_argument(
        "--workdir", required=True, help="a full-precision training run (bits include 32)"
    )
    ptq.add_argument(
        "--config",
        default=None,
        help="PTQ config file (default: the code's values, jaxquant/configs/ptq.py)",
    )
    ptq.add_argument("--out", default=None, help="output folder (default: WORKDIR/ptq)")
    ptq.add_argument("--no-progress", action="store_true", help="no progress bar")
    compare = sub.add_parser(
        "compare", help="train / PTQ every method of a compare config; one table (docs/compare.md)"
    )
    compare.add_argument(
        "config", help="compare config, e.g. experiments/configs/compare_digits.py"
    )
    compare.add_argument("--workdir", default=None, help="default: runs/<config name>")
    compare.add_argument("--no-progress", action="store_true", help="no progress bar")
    data = sub.add_parser("data", help="tfds datasets").add_subparsers(dest="action", required=True)
    prepare = data.add_parser(
        "prepare", help="build tfds datasets: download, or offline from their archives"
    )
    prepare.add_argument("names", nargs="+", metavar="NAME", help="e.g. mnist fashion_mnist")
    prepare.add_argument(
        "--data-dir", default=None, help="default: $TFDS_DATA_DIR or ~/tensorflow_datasets"
    )
    prepare.add_argument(
        "--manual-dir",
        default=None,
        help="build offline from the archives in this folder (or in its NAME/ subfolder)",
    )
    prepare.add_argument(
        "--file-format", default="array_record", choices=["array_record", "tfrecord"]
    )
    prepare.add_argument(
        "--no-verify-checksums",
        action="store_true",
        help="build from archives whose checksum differs from the official one",
    )
    return parser


def _report(
    config, dataset, accuracies: dict, workdir: pathlib.Path, seconds: float | None
) -> None:
    from jaxquant.report import format_table, plot_accuracy, save_results

    run = f"{config.method} {config.model}"
    title = f"{dataset.name}: test accuracy by bit-width ({dataset.test_size} test images)"
    print()
    print(format_table({run: accuracies}, title=title))
    untrained = [b for b in accuracies if b not in tuple(config.bits)]
    if untrained:
        print(
            "\nnot trained, run from the cascade with borrowed BatchNorm: "
            f"{', '.join(map(str, untrained))}-bit"
        )
    extra = {
        "method": config.method,
        "model": config.model,
        "dataset": dataset.name,
        "test_examples": int(dataset.test_size),
        "trained_bits": [int(b) for b in config.bits],
    }
    seconds = _recorded_train_seconds(workdir) if seconds is None else seconds  # jaxquant eval
    if seconds is not None:
        extra["train_seconds"] = round(seconds, 1)
    json_path = save_results(workdir, accuracies, extra)
    png_path = plot_accuracy({run: accuracies}, workdir / "accuracy_vs_bits.png", title=title)
    print(f"\nsaved {json_path} and {png_path}")


def _accuracies(config, dataset, trainer, state, recalibrate_batches: int = 0) -> dict[int, float]:
    """Test accuracy per trained bit-width, or the method's own evaluation (`Method.evaluate`; a
    vertical run: every bit-width 2..B it can run at)."""
    from jaxquant.methods import get_method

    method = get_method(config.method)
    if method.evaluate is not None:
        return method.evaluate(config, dataset, trainer, state, recalibrate_batches)
    from jaxquant.training import evaluate_dataset

    return evaluate_dataset(trainer, state, dataset, config.eval_batch_size)


def _fit_final_evaluation(config, trainer, workdir: pathlib.Path, total_steps: int):
    """``fit``'s own evaluation of the final state (``{bits: accuracy}``, from ``metrics.jsonl``'s
    record at ``total_steps``), when it is the one `_accuracies` would compute: a method without
    its own evaluation, on one process. None otherwise, or when ``fit`` did not evaluate there."""
    import jax

    from jaxquant.methods import get_method
    from jaxquant.report import bits_label
    from jaxquant.training.metrics import read_metrics

    if get_method(config.method).evaluate is not None or jax.process_count() != 1:
        return None
    tags = {int(b): f"eval/accuracy/{bits_label(b)}" for b in trainer.bits}
    for record in reversed(read_metrics(workdir)):
        if record.get("step") == total_steps and all(tag in record for tag in tags.values()):
            return {b: float(record[tag]) for b, tag in tags.items()}
    return None


def train(args, overrides: dict[str, str]) -> int:
    from jaxquant import config as config_lib

    config = config_lib.apply_overrides(config_lib.load_config(args.config), overrides)
    config_lib.check_run_config(config)
    config_lib.check_init_from(config)
    if config.multihost:
        import jax

        jax.distributed.initialize()
    name = pathlib.Path(args.config).stem if args.config else "default"
    workdir = pathlib.Path(args.workdir or pathlib.Path("runs") / name)
    from jaxquant.data import StreamingDataset, load_config_dataset

    dataset = load_config_dataset(config)

    import jax.numpy as jnp

    from jaxquant.methods import build_trainer
    from jaxquant.training import fit

    steps_per_epoch = dataset.train_size // config.batch_size
    trainer = build_trainer(config, dataset, max(steps_per_epoch, 1))
    print(
        f"jaxquant train: {config.method} / {config.model} on {dataset.name} "
        f"({dataset.train_size} train images"
        f"{', streamed' if isinstance(dataset, StreamingDataset) else ''}), "
        f"bits {tuple(config.bits)}, {config.epochs} epochs, distillation {trainer.distillation}, "
        f"precisions by {trainer.precision_mode}, "
        f"compute {jnp.dtype(trainer.compute_dtype).name}, "
        f"workdir {workdir}",
        flush=True,
    )
    from jaxquant.methods import binreg

    if binreg.describe(config):
        print(f"  {binreg.describe(config)}", flush=True)

    def write_config():
        (workdir / "config.json").write_text(
            json.dumps(config_lib.to_dict(config), indent=2) + "\n"
        )

    finished_seconds = _finished_train_seconds(workdir, steps_per_epoch * config.epochs)
    start = time.perf_counter()
    state = fit(
        trainer,
        dataset,
        workdir=str(workdir),
        seed=config.seed,
        epochs=config.epochs,
        batch_size=config.batch_size,
        checkpoint_every_steps=config.checkpoint_every_steps,
        keep_checkpoints=config.keep_checkpoints,
        log_every_steps=config.log_every_steps,
        progress=not args.no_progress,
        on_start=write_config,
        eval_every_steps=config.eval_every_epochs * max(steps_per_epoch, 1),
        eval_batch_size=config.eval_batch_size,
        init_from=config.init_from or None,
        init_from_bn_batches=config.init_from_bn_batches,
    )
    seconds = time.perf_counter() - start if finished_seconds is None else finished_seconds
    # fit evaluated the final state already (eval_every_epochs > 0): its numbers, not a second pass
    accuracies = _fit_final_evaluation(
        config, trainer, workdir, steps_per_epoch * config.epochs
    ) or _accuracies(config, dataset, trainer, state)
    _report(config, dataset, accuracies, workdir, seconds)
    return 0


def _recorded_train_seconds(workdir: pathlib.Path) -> float | None:
    """The training seconds a run's ``results.json`` holds, if any."""
    results = workdir / "results.json"
    if not results.is_file():
        return None
    try:
        return json.loads(results.read_text()).get("train_seconds")
    except json.JSONDecodeError:
        return None


def _finished_train_seconds(workdir: pathlib.Path, total_steps: int) -> float | None:
    """The recorded training seconds of a run whose last checkpoint is its last step: rerunning
    it trains nothing, so its report keeps the time of the training."""
    checkpoints = workdir / "checkpoints"
    steps = (
        [int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()]
        if checkpoints.is_dir()
        else []
    )
    return _recorded_train_seconds(workdir) if max(steps, default=-1) == total_steps else None


def evaluate_workdir(args) -> int:
    from jaxquant.runs import load_run

    config, dataset, trainer, state, step = load_run(args.workdir)
    print(f"jaxquant eval: {args.workdir} at step {step}")
    accuracies = _accuracies(config, dataset, trainer, state, args.recalibrate_batches)
    _report(config, dataset, accuracies, pathlib.Path(args.workdir), None)
    return 0


def export_workdir(args) -> int:
    """Write the artefact, then load it at every bit-width: bytes read and test accuracy."""
    from jaxquant.data import load_config_dataset
    from jaxquant.export import export_vertical, load_vertical
    from jaxquant.runs import config_from_json
    from jaxquant.training import batches_accuracy

    config = config_from_json(pathlib.Path(args.workdir) / "config.json")
    dataset = load_config_dataset(config)
    summary = export_vertical(
        args.workdir,
        args.out,
        basic_bits=args.basic_bits,
        recalibrate_batches=args.recalibrate_batches,
        dataset=dataset,
    )
    print(
        f"jaxquant export: wrote {summary['path']} ({summary['file_bytes']:,} bytes, "
        f"{summary['layers']} bit-plane layers, bits {summary['bits'][0]}..{summary['bits'][-1]})"
    )
    rows = ["| bits | bytes read | share of file | test accuracy |", "|---:|---:|---:|---:|"]
    for k in summary["bits"]:
        model = load_vertical(args.out, k)
        accuracy = "-"
        if not args.no_eval:
            batches = dataset.test_batches(config.eval_batch_size)
            accuracy = f"{100.0 * batches_accuracy(model, batches):.2f}"
        rows.append(
            f"| {k} | {model.bytes_read:,} | {model.bytes_read / model.file_bytes:.1%} "
            f"| {accuracy} |"
        )
    print("\n".join(rows))
    return 0


def bins_workdir(args) -> int:
    """Print and write (JSON) the per-layer weight quantization MSE and bin statistics of a run's
    latest checkpoint at each trained integer bit-width; optionally plot one layer's bins."""
    import numpy as np

    from jaxquant.errors import BitWidthError, ConfigError
    from jaxquant.methods import binreg
    from jaxquant.runs import load_run

    runs = [load_run(args.workdir)]
    config, dataset, trainer, state, step = runs[0]
    integer_bits = [int(b) for b in config.bits if b < 32]
    if args.bits is not None and args.bits not in integer_bits:
        raise BitWidthError(
            f"{args.workdir} was trained at bits {tuple(config.bits)}; "
            f"pass --bits one of {integer_bits}"
        )
    if not integer_bits:
        raise BitWidthError(
            f"{args.workdir} has no quantized bit-width (bits {tuple(config.bits)})"
        )
    layers = binreg.model_layers(
        trainer.model, dataset.train_examples(np.arange(1))[0].astype("float32")
    )
    print(
        f"jaxquant bins: {args.workdir} at step {step} ({config.method}, bits {tuple(config.bits)})"
    )
    payload = {
        "workdir": str(args.workdir),
        "step": int(step or 0),
        "method": config.method,
        "bits": {},
    }
    for b in [args.bits] if args.bits is not None else integer_bits:
        report = binreg.bin_report(
            state.params, layers, list(config.bits).index(b), only=args.layer
        )
        print("\n" + binreg.format_report(report, title=f"{b}-bit weights"))
        payload["bits"][str(b)] = report
    out = pathlib.Path(args.out or pathlib.Path(args.workdir) / "bins.json")
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nsaved {out}")
    if args.plot:
        b = args.bits if args.bits is not None else integer_bits[0]
        name = args.layer or binreg.largest_layer(layers, state.params)
        panels = []
        for workdir in [args.workdir] + list(args.compare):
            run = runs[0] if workdir == args.workdir else load_run(workdir, dataset)
            run_config, _, run_trainer, run_state, _ = run
            if b not in tuple(run_config.bits):
                raise BitWidthError(
                    f"{workdir} was not trained at {b} bits (bits {tuple(run_config.bits)})"
                )
            run_layers = binreg.model_layers(
                run_trainer.model, dataset.train_examples(np.arange(1))[0].astype("float32")
            )
            path = next((p for p in run_layers if binreg.layer_name(p) == name), None)
            if path is None:
                raise ConfigError(f"{workdir} has no quantized layer {name!r}")
            label = f"{run_config.method} ({pathlib.Path(workdir).name})"
            panels.append(
                (
                    label,
                    binreg.get_path(run_state.params, path),
                    run_layers[path],
                    list(run_config.bits).index(b),
                )
            )
        png = binreg.plot_bins(panels, args.plot, title=f"{name}: weights by bin, {b}-bit")
        print(f"saved {png}")
    return 0


def train_argv(
    config: str | pathlib.Path,
    workdir: str | pathlib.Path,
    overrides: Sequence[str] = (),
    *,
    data_dir: str = "",
    epochs: int | None = None,
    progress: bool = True,
) -> list[str]:
    """The argv of ``jaxquant train --config CONFIG --workdir WORKDIR [overrides]``, with
    ``--config.data_dir`` and ``--config.epochs`` added when given (what experiment scripts run)."""
    argv = ["train", "--config", str(config), "--workdir", str(workdir), *overrides]
    argv += [f"--config.data_dir={data_dir}"] if data_dir else []
    argv += [f"--config.epochs={epochs}"] if epochs else []
    argv += [] if progress else ["--no-progress"]
    return argv


def run_train(argv: list[str], label: str = "") -> float:
    """Print the command, run it (a finished run resumes and only evaluates) and return its
    wall-clock seconds; exit with code 2 when it fails (its one-line error is already printed)."""
    print(f"\n=== {label + ': ' if label else ''}jaxquant {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    if main(argv) != 0:
        raise SystemExit(EXIT_USER_ERROR)
    return time.perf_counter() - start


def data_prepare(args) -> int:
    """``jaxquant data prepare``: each NAME reads ``--manual-dir``'s NAME/ subfolder if it has
    one, else the folder itself."""
    from jaxquant.data.prepare import prepare
    from jaxquant.data.sources import default_data_dir

    for name in args.names:
        manual = args.manual_dir
        if manual and (pathlib.Path(manual) / name).is_dir():
            manual = str(pathlib.Path(manual) / name)
        prepare(
            name,
            default_data_dir(args.data_dir),
            manual,
            args.file_format,
            not args.no_verify_checksums,
        )
    return 0


def ptq_workdir(args, overrides: dict[str, str]) -> int:
    """BitSplit / round-to-nearest PTQ of an FP run: the accuracy table, the models, a plot."""
    from jaxquant import config as config_lib
    from jaxquant import ptq

    path = args.config or pathlib.Path(config_lib.__file__).parent / "configs" / "ptq.py"
    config = config_lib.apply_overrides(config_lib.load_config(path), overrides)
    ptq.run(args.workdir, config, args.out, progress=not args.no_progress)
    return 0


def compare_workdir(args, overrides: dict[str, str]) -> int:
    """Every method of a compare config, run or resumed in WORKDIR/<entry>; one table."""
    from jaxquant.compare import compare

    workdir = args.workdir or pathlib.Path("runs") / pathlib.Path(args.config).stem
    return compare(args.config, workdir, overrides, progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    from jaxquant.errors import JaxquantError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        rest, overrides = _split_overrides(argv)
        args = _parser().parse_args(rest)
        if args.command == "train":
            return train(args, overrides)
        if args.command == "ptq":
            return ptq_workdir(args, overrides)
        if args.command == "compare":
            return compare_workdir(args, overrides)
        if overrides:
            raise JaxquantError(
                "--config.KEY overrides only apply to `jaxquant train`, `ptq` and `compare`"
            )
        if args.command == "export":
            return export_workdir(args)
        if args.command == "bins":
            return bins_workdir(args)
        if args.command == "data":
            return data_prepare(args)
        return evaluate_workdir(args)
    except JaxquantError as e:
        print(f"jaxquant: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(
            "jaxquant: interrupted; rerun the same command to resume from the last checkpoint",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())

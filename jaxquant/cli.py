"""``jaxquant train|eval``: ml_collections configs, a progress bar, and a per-bit-width table.

  jaxquant train [--config FILE] [--workdir DIR] [--config.KEY=VALUE ...]
  jaxquant eval  --workdir DIR
  jaxquant export --workdir DIR --out model.vl [--basic-bits 2] [--recalibrate-batches N]

Without ``--config`` the embedded default runs (Any-Precision on scikit-learn's digits, offline).
A user error prints one line and exits with code 2; nothing in the workdir is overwritten.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

EXIT_USER_ERROR = 2


def _split_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Separate ``--config.key=value`` (or ``--config.key value``) from the other arguments."""
    rest, overrides = [], {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            if "=" in arg:
                key, value = arg[len("--config."):].split("=", 1)
            elif i + 1 < len(argv):
                key, value = arg[len("--config."):], argv[i + 1]
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
    parser = argparse.ArgumentParser(prog="jaxquant", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model (resumes from --workdir)")
    train.add_argument("--config", default=None, help="config file with get_config() (default: embedded digits run)")
    train.add_argument("--workdir", default=None, help="run folder (default: runs/<config name>)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate = sub.add_parser("eval", help="evaluate the latest checkpoint of a workdir at every bit-width")
    evaluate.add_argument("--workdir", required=True)
    evaluate.add_argument("--recalibrate-batches", type=int, default=0,
                          help="vertical: re-estimate BatchNorm of untrained bit-widths from N training batches")
    export = sub.add_parser("export", help="write the vertical-layered artefact of a vertical run")
    export.add_argument("--workdir", required=True)
    export.add_argument("--out", required=True, help="artefact path, e.g. model.vl")
    export.add_argument("--basic-bits", type=int, default=2, help="bits of the basic layer (the lowest bit-width)")
    export.add_argument("--recalibrate-batches", type=int, default=0,
                        help="re-estimate BatchNorm of untrained bit-widths from N training batches")
    export.add_argument("--no-eval", action="store_true", help="do not evaluate the loaded models on the test set")
    return parser


def _load_dataset(config):
    from jaxquant.data import load_dataset
    return load_dataset(config.dataset, config.data_dir or None)


def _report(config, dataset, accuracies: dict, workdir: pathlib.Path, seconds: float | None) -> None:
    from jaxquant.report import format_table, plot_accuracy, save_results
    run = f"{config.method} {config.model}"
    title = f"{dataset.name}: test accuracy by bit-width ({len(dataset.test_labels)} test images)"
    print()
    print(format_table({run: accuracies}, title=title))
    untrained = [b for b in accuracies if b not in tuple(config.bits)]
    if untrained:
        print(f"\nnot trained, run from the cascade with borrowed BatchNorm: {', '.join(map(str, untrained))}-bit")
    extra = {"method": config.method, "model": config.model, "dataset": dataset.name,
             "test_examples": int(len(dataset.test_labels)), "trained_bits": [int(b) for b in config.bits]}
    if seconds is not None:
        extra["train_seconds"] = round(seconds, 1)
    json_path = save_results(workdir, accuracies, extra)
    png_path = plot_accuracy({run: accuracies}, workdir / "accuracy_vs_bits.png", title=title)
    print(f"\nsaved {json_path} and {png_path}")


def _accuracies(config, dataset, trainer, state, recalibrate_batches: int = 0) -> dict[int, float]:
    """Test accuracy per trained bit-width; a vertical run, at every bit-width 2..B it can run at."""
    if config.method == "vertical":
        from jaxquant.export import evaluate_every_bit_width
        return evaluate_every_bit_width(config, dataset, trainer, state, recalibrate_batches)
    from jaxquant.training import evaluate
    return evaluate(trainer, state, dataset.test_images, dataset.test_labels, config.eval_batch_size)


def train(args, overrides: dict[str, str]) -> int:
    from jaxquant import config as config_lib
    config = config_lib.apply_overrides(config_lib.load_config(args.config), overrides)
    if config.multihost:
        import jax
        jax.distributed.initialize()
    name = pathlib.Path(args.config).stem if args.config else "default"
    workdir = pathlib.Path(args.workdir or pathlib.Path("runs") / name)
    dataset = _load_dataset(config)

    from jaxquant.methods import build_trainer
    from jaxquant.training import fit
    steps_per_epoch = len(dataset.train_labels) // config.batch_size
    trainer = build_trainer(config, dataset, max(steps_per_epoch, 1))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"jaxquant train: {config.method} / {config.model} on {dataset.name} "
          f"({len(dataset.train_labels)} train images), bits {tuple(config.bits)}, "
          f"{config.epochs} epochs, distillation {trainer.distillation}, precisions by {trainer.precision_mode}, "
          f"workdir {workdir}", flush=True)

    def write_config():
        (workdir / "config.json").write_text(json.dumps(config_lib.to_dict(config), indent=2) + "\n")

    start = time.perf_counter()
    state = fit(trainer, dataset, workdir=str(workdir), seed=config.seed, epochs=config.epochs,
                batch_size=config.batch_size, checkpoint_every_steps=config.checkpoint_every_steps,
                keep_checkpoints=config.keep_checkpoints, progress=not args.no_progress,
                on_start=write_config)
    seconds = time.perf_counter() - start
    _report(config, dataset, _accuracies(config, dataset, trainer, state), workdir, seconds)
    return 0


def evaluate_workdir(args) -> int:
    from jaxquant.export import load_run
    config, dataset, trainer, state, step = load_run(args.workdir)
    print(f"jaxquant eval: {args.workdir} at step {step}")
    accuracies = _accuracies(config, dataset, trainer, state, args.recalibrate_batches)
    _report(config, dataset, accuracies, pathlib.Path(args.workdir), None)
    return 0


def export_workdir(args) -> int:
    """Write the artefact, then load it at every bit-width: bytes read and test accuracy."""
    from jaxquant.data import load_dataset
    from jaxquant.export import config_from_json, export_vertical, load_vertical
    from jaxquant.training import accuracy as test_accuracy
    config = config_from_json(pathlib.Path(args.workdir) / "config.json")
    dataset = load_dataset(config.dataset, config.data_dir or None)
    summary = export_vertical(args.workdir, args.out, basic_bits=args.basic_bits,
                              recalibrate_batches=args.recalibrate_batches, dataset=dataset)
    print(f"jaxquant export: wrote {summary['path']} ({summary['file_bytes']:,} bytes, "
          f"{summary['layers']} bit-plane layers, bits {summary['bits'][0]}..{summary['bits'][-1]})")
    rows = ["| bits | bytes read | share of file | test accuracy |", "|---:|---:|---:|---:|"]
    for k in summary["bits"]:
        model = load_vertical(args.out, k)
        accuracy = "-"
        if not args.no_eval:
            accuracy = f"{100.0 * test_accuracy(model, dataset.test_images, dataset.test_labels, config.eval_batch_size):.2f}"
        rows.append(f"| {k} | {model.bytes_read:,} | {model.bytes_read / model.file_bytes:.1%} | {accuracy} |")
    print("\n".join(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    from jaxquant.errors import JaxquantError
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        rest, overrides = _split_overrides(argv)
        args = _parser().parse_args(rest)
        if args.command == "train":
            return train(args, overrides)
        if overrides:
            raise JaxquantError("--config.KEY overrides only apply to `jaxquant train`")
        if args.command == "export":
            return export_workdir(args)
        return evaluate_workdir(args)
    except JaxquantError as e:
        print(f"jaxquant: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("jaxquant: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

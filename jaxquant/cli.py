"""``jaxquant train|eval``: ml_collections configs, a progress bar, and a per-bit-width table.

  jaxquant train [--config FILE] [--workdir DIR] [--config.KEY=VALUE ...]
  jaxquant eval  --workdir DIR

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
    extra = {"method": config.method, "model": config.model, "dataset": dataset.name,
             "test_examples": int(len(dataset.test_labels))}
    if seconds is not None:
        extra["train_seconds"] = round(seconds, 1)
    json_path = save_results(workdir, accuracies, extra)
    png_path = plot_accuracy({run: accuracies}, workdir / "accuracy_vs_bits.png", title=title)
    print(f"\nsaved {json_path} and {png_path}")


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
    from jaxquant.training import evaluate, fit
    steps_per_epoch = len(dataset.train_labels) // config.batch_size
    trainer = build_trainer(config, dataset, max(steps_per_epoch, 1))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"jaxquant train: {config.method} / {config.model} on {dataset.name} "
          f"({len(dataset.train_labels)} train images), bits {tuple(config.bits)}, "
          f"{config.epochs} epochs, workdir {workdir}", flush=True)

    def write_config():
        (workdir / "config.json").write_text(json.dumps(config_lib.to_dict(config), indent=2) + "\n")

    start = time.perf_counter()
    state = fit(trainer, dataset, workdir=str(workdir), seed=config.seed, epochs=config.epochs,
                batch_size=config.batch_size, checkpoint_every_steps=config.checkpoint_every_steps,
                keep_checkpoints=config.keep_checkpoints, progress=not args.no_progress,
                on_start=write_config)
    seconds = time.perf_counter() - start
    accuracies = evaluate(trainer, state, dataset.test_images, dataset.test_labels, config.eval_batch_size)
    _report(config, dataset, accuracies, workdir, seconds)
    return 0


def evaluate_workdir(args) -> int:
    import ml_collections

    from jaxquant.checkpoint import Checkpointer
    from jaxquant.errors import CheckpointError
    from jaxquant.methods import build_trainer
    from jaxquant.training import evaluate
    workdir = pathlib.Path(args.workdir)
    config_path = workdir / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{workdir} has no config.json; is it a `jaxquant train` workdir?")
    try:
        config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path} is not valid JSON ({e}); restore it or retrain") from e
    for key in ("bits", "widths", "loss_weights"):
        config[key] = tuple(config[key])
    config.optimizer.step_epochs = tuple(config.optimizer.step_epochs)
    dataset = _load_dataset(config)
    trainer = build_trainer(config, dataset, max(len(dataset.train_labels) // config.batch_size, 1))
    import jax
    template = trainer.init(jax.random.key(0), jax.numpy.asarray(dataset.train_images[:config.batch_size]))
    checkpointer = Checkpointer(workdir)
    try:
        state = checkpointer.restore(template)
        step = checkpointer.latest_step()
    finally:
        checkpointer.close()
    print(f"jaxquant eval: {workdir} at step {step}")
    accuracies = evaluate(trainer, state, dataset.test_images, dataset.test_labels, config.eval_batch_size)
    _report(config, dataset, accuracies, workdir, None)
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
        return evaluate_workdir(args)
    except JaxquantError as e:
        print(f"jaxquant: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("jaxquant: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

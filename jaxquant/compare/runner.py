"""Running a compare's plan: train / PTQ every run that is not finished, resume the others."""

from __future__ import annotations

import json
import pathlib
import pprint

from jaxquant.compare.planner import Entry, Run, config_json


def train_finished(run: Run) -> bool:
    """A finished training run of this config: ``results.json`` written after ``config.json``
    (the report follows the last step), and ``config.json`` is this run's config."""
    results, stored = run.workdir / "results.json", run.workdir / "config.json"
    if not (results.is_file() and stored.is_file()):
        return False
    if results.stat().st_mtime < stored.stat().st_mtime:
        return False
    try:
        return json.loads(stored.read_text()) == config_json(run.config)
    except json.JSONDecodeError:
        return False


def ptq_finished(run: Run, source: Run) -> bool:
    """A finished PTQ of this PTQ config, written after its source's results."""
    results = run.workdir / "ptq_results.json"
    if not results.is_file():
        return False
    source_results = source.workdir / "results.json"
    if source_results.is_file() and results.stat().st_mtime < source_results.stat().st_mtime:
        return False
    try:
        return json.loads(results.read_text()).get("config") == config_json(run.config)
    except json.JSONDecodeError:
        return False


def config_file(run: Run, root: pathlib.Path) -> pathlib.Path:
    """Write the run's config as a ``get_config()`` file, ``WORKDIR/configs/<run>.py``."""
    path = root / "configs" / f"{run.name}.py"
    text = (
        f'"""`jaxquant compare`: the config of run {run.name}, written by jaxquant.compare.\n'
        f'  jaxquant train --config {path} --workdir {run.workdir}\n"""\n\n'
        "import ml_collections\n\n"
        f"CONFIG = {pprint.pformat(run.config.to_dict(), sort_dicts=False)}\n\n\n"
        "def get_config():\n"
        "    return ml_collections.ConfigDict(CONFIG)\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def run_entries(entries: list[Entry], root: pathlib.Path, progress: bool = True) -> int:
    """Train / PTQ every unfinished run, in entry order; returns 0, or the exit code of the first
    ``jaxquant train`` that failed (its one-line error already printed). Each run's line starts
    with ``[k/N]`` and the compare's elapsed time."""
    import time

    from jaxquant import cli, ptq

    by_name = {e.name: e for e in entries}
    runs = [(entry, run) for entry in entries for run in entry.runs]
    start = time.perf_counter()
    for k, (entry, run) in enumerate(runs, 1):
        head = f"=== [{k}/{len(runs)}, {time.perf_counter() - start:.0f} s] {run.name}"
        if entry.kind == "train":
            if train_finished(run):
                print(f"{head}: finished, reading {run.workdir / 'results.json'}")
                continue
            argv = ["train", "--config", str(config_file(run, root)), "--workdir"]
            argv += [str(run.workdir)] + ([] if progress else ["--no-progress"])
            print(f"\n{head}: jaxquant {' '.join(argv)}", flush=True)
            code = cli.main(argv)
            if code != 0:
                return code
            continue
        source = by_name[entry.source].runs[0]
        if ptq_finished(run, source):
            print(f"{head}: finished, reading {run.workdir / 'ptq_results.json'}")
            continue
        print(
            f"\n{head}: jaxquant ptq --workdir {source.workdir} --out {run.workdir} "
            f'--config.settings="{tuple(run.config.settings)}" '
            f'--config.methods="{tuple(run.config.methods)}"',
            flush=True,
        )
        ptq.run(source.workdir, run.config, run.workdir, progress=progress)
    return 0

"""A run's record of training: ``metrics.jsonl`` and TensorBoard event files in its workdir.

Every record is ``{"step": s, "epoch": e, tag: value, ...}``: one line of ``metrics.jsonl`` and
one event in ``WORKDIR/tensorboard/`` (`jaxquant.training.events`, no TensorFlow needed). Tags:
``train/loss``, ``train/loss/<b>-bit``, ``train/accuracy/<b>-bit`` (means since the previous log
point), ``learning_rate/model``, ``learning_rate/quantizer``, ``eval/accuracy/<b>-bit``.

A run resumed from the checkpoint at step S first drops every record after S (written by the
killed run after its last checkpoint), so the files hold each step once:
  tensorboard --logdir WORKDIR/tensorboard
"""

from __future__ import annotations

import json
import os
import pathlib

from jaxquant.training.events import EventWriter, truncate_event_files

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (a torn last line is skipped)."""
    path = pathlib.Path(workdir) / METRICS_FILE
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


class MetricWriter:
    """Appends records to ``metrics.jsonl`` and a TensorBoard event file; `open` it with the
    step training resumes from."""

    def __init__(self, workdir: str | os.PathLike, resume_step: int | None):
        """``resume_step``: the checkpoint's step, or None for a run starting from scratch (an
        earlier attempt's records are then all dropped)."""
        self.workdir = pathlib.Path(workdir)
        last = -1 if resume_step is None else int(resume_step)
        path = self.workdir / METRICS_FILE
        if path.exists():
            kept = [r for r in read_metrics(self.workdir) if r.get("step", 0) <= last]
            tmp = path.with_name(METRICS_FILE + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, path)
        logdir = self.workdir / TENSORBOARD_DIR
        if logdir.is_dir():
            truncate_event_files(logdir, last)
        self._jsonl = open(path, "a")
        self._events = EventWriter(logdir)

    def write(self, step: int, epoch: float, values: dict[str, float]) -> None:
        record = {"step": int(step), "epoch": round(float(epoch), 4)}
        record.update({k: float(v) for k, v in values.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        self._events.scalars(step, values)

    def close(self) -> None:
        self._jsonl.close()
        self._events.close()

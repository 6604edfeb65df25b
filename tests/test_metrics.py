"""The record of training: TensorBoard event files (written without TensorFlow, read back by
TensorBoard's own reader) and ``metrics.jsonl``; evaluation during training; a killed and resumed
run appends each step once."""

import collections
import json
import struct

import pytest

from jaxquant.training import events
from jaxquant.training.metrics import read_metrics


def test_crc32c_and_masked_crc_match_the_standard_check_values():
    assert events.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value (RFC 3720)
    assert events.crc32c(b"") == 0
    crc = 0xE3069283
    assert events.masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & (
        2**32 - 1
    )


def test_event_encoding_round_trips_and_frames_as_tfrecord(tmp_path):
    event = events.encode_event(12.5, 2**40 + 3, {"train/loss": 0.25, "eval/accuracy/2-bit": 0.5})
    decoded = events.decode_event(event)
    assert decoded["wall_time"] == 12.5 and decoded["step"] == 2**40 + 3
    assert decoded["scalars"] == {"train/loss": 0.25, "eval/accuracy/2-bit": 0.5}
    record = events.frame(event)
    (length,) = struct.unpack("<Q", record[:8])
    assert length == len(event) and record[12 : 12 + length] == event
    path = tmp_path / "events.out.tfevents.1"
    path.write_bytes(record + events.frame(b"x") + record[:-3])  # a torn last record
    assert [r for r in events.read_records(path)] == [event, b"x"]


def test_truncate_drops_scalars_after_the_step_and_keeps_the_header(tmp_path):
    writer = events.EventWriter(tmp_path)
    for step in (5, 10, 15, 20):
        writer.scalars(step, {"a": step})
    writer.close()
    events.truncate_event_files(tmp_path, 10)
    kept = events.read_events(writer.path)
    assert kept[0]["file_version"] == "brain.Event:2"
    assert [e["step"] for e in kept[1:]] == [5, 10]


def _records_by_step(records):
    """``{(step, kind): count}``: kind is ``train`` or ``eval``."""
    kinds = collections.Counter()
    for r in records:
        kind = "eval" if any(k.startswith("eval/") for k in r) else "train"
        kinds[(r["step"], kind)] += 1
    return kinds


@pytest.mark.slow
def test_two_epoch_run_writes_metrics_and_tensorboard_reads_them(tmp_path):
    from jaxquant import cli

    workdir = tmp_path / "run"
    argv = ["train", "--workdir", str(workdir), "--no-progress", "--config.epochs=2"]
    argv += ["--config.widths=(8, 8)", "--config.log_every_steps=5"]
    assert cli.main(argv) == 0
    records = read_metrics(workdir)
    steps_per_epoch = 1437 // 64
    train = [r for r in records if "train/loss" in r]
    evals = [r for r in records if "eval/accuracy/2-bit" in r]
    total = 2 * steps_per_epoch  # evaluation points and the last (checkpointed) step log too
    logged = sorted({*range(5, total + 1, 5), steps_per_epoch, total})
    assert [r["step"] for r in train] == logged
    for r in train:  # per precision: loss and accuracy; both learning rates
        for label in ("2-bit", "4-bit", "8-bit", "FP"):
            assert 0 <= r[f"train/accuracy/{label}"] <= 1 and r[f"train/loss/{label}"] > 0
        assert r["learning_rate/model"] > 0 and r["learning_rate/quantizer"] > 0
    assert [(r["step"], r["epoch"]) for r in evals] == [
        (steps_per_epoch, 1.0),
        (2 * steps_per_epoch, 2.0),
    ]
    results = json.loads((workdir / "results.json").read_text())
    final = evals[-1]["eval/accuracy/FP"]
    assert final == pytest.approx(
        results["accuracy"]["32"], abs=1e-9
    )  # the same evaluation as the table

    accumulator_module = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    accumulator = accumulator_module.EventAccumulator(str(workdir / "tensorboard"))
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    assert {"train/loss", "train/accuracy/2-bit", "eval/accuracy/FP", "learning_rate/model"} <= set(
        tags
    )
    read = [(e.step, e.value) for e in accumulator.Scalars("eval/accuracy/FP")]
    assert [s for s, _ in read] == [steps_per_epoch, 2 * steps_per_epoch]
    assert read[-1][1] == pytest.approx(final, abs=1e-6)


@pytest.mark.slow
def test_the_report_takes_fits_final_evaluation_instead_of_a_second_pass(tmp_path, monkeypatch):
    """With an evaluation at the last step, `jaxquant train` reports fit's numbers and does not
    evaluate again; they equal a fresh evaluation of the final checkpoint (`jaxquant eval`).
    Without one (``eval_every_epochs=0``) the report evaluates."""
    import jaxquant.training
    from jaxquant import cli

    calls = []
    evaluate_dataset = jaxquant.training.evaluate_dataset

    def counted(*args, **kwargs):
        calls.append(1)
        return evaluate_dataset(*args, **kwargs)

    monkeypatch.setattr(jaxquant.training, "evaluate_dataset", counted)
    argv = ["--no-progress", "--config.epochs=1", "--config.widths=(8, 8)"]
    workdir = tmp_path / "run"
    assert cli.main(["train", "--workdir", str(workdir), *argv]) == 0
    assert calls == []  # fit's own evaluations do not go through the patched name
    trained = json.loads((workdir / "results.json").read_text())["accuracy"]
    assert set(trained) == {"2", "4", "8", "32"}
    assert cli.main(["eval", "--workdir", str(workdir)]) == 0
    assert len(calls) == 1
    assert json.loads((workdir / "results.json").read_text())["accuracy"] == trained

    no_eval = tmp_path / "no_eval"
    argv += ["--config.eval_every_epochs=0"]
    assert cli.main(["train", "--workdir", str(no_eval), *argv]) == 0
    assert len(calls) == 2


class _Killed(Exception):
    pass


class _KilledAt:
    """A dataset whose training batch for ``step`` raises: the run dies there as if killed."""

    def __init__(self, dataset, step):
        self._dataset, self._step = dataset, step

    def __getattr__(self, name):
        return getattr(self._dataset, name)

    def train_examples(self, indices, seed=0, step=0, offset=0):
        if step == self._step:
            raise _Killed(f"killed at step {step}")
        return self._dataset.train_examples(indices, seed, step, offset)


@pytest.mark.slow
def test_killed_and_resumed_run_appends_each_step_once(tmp_path):
    from test_training import _tiny_fit_trainer

    from jaxquant.training import fit
    from jaxquant.training.events import read_events

    def run(workdir, dataset):
        trainer, _ = _tiny_fit_trainer()
        fit(
            trainer,
            dataset,
            workdir=str(workdir),
            seed=0,
            epochs=2,
            batch_size=128,
            checkpoint_every_steps=8,
            log_every_steps=3,
            eval_every_steps=5,
            progress=False,
        )

    _, dataset = _tiny_fit_trainer()
    run(tmp_path / "whole", dataset)
    with pytest.raises(_Killed):  # dies at step 13: logs 3..12 and evals 5, 10 were written,
        run(tmp_path / "resumed", _KilledAt(dataset, 13))  # the last checkpoint is step 8
    killed = read_metrics(tmp_path / "resumed")
    assert max(r["step"] for r in killed) == 12
    run(tmp_path / "resumed", dataset)

    whole = _records_by_step(read_metrics(tmp_path / "whole"))
    resumed = _records_by_step(read_metrics(tmp_path / "resumed"))
    assert resumed == whole  # every step once: nothing duplicated, nothing missing
    assert max(whole.values()) == 1 and (10, "eval") in whole
    steps = [
        e["step"]
        for path in sorted((tmp_path / "resumed" / "tensorboard").glob("events.out.tfevents.*"))
        for e in read_events(path)
        if e["scalars"]
    ]
    assert sorted(steps) == sorted(step for step, _ in whole.elements())

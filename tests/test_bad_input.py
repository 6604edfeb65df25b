"""Bad input through ``jaxquant train``: each is refused with exit code 2 and one line on stderr
(no traceback), before anything is written: a new workdir is not created, and a finished run's
files are untouched."""

import pytest
from helpers import assert_user_error
from test_cli import TINY, run, tree_digest

from jaxquant import cli

BAD = [
    (["--config.epochs=-1"], "config.epochs is -1"),
    (["--config.batch_size=0"], "config.batch_size is 0"),
    (["--config.batch_size=5000"], "batch_size 5000 is larger than the 1437 training"),
    (["--config.eval_batch_size=0"], "config.eval_batch_size is 0"),
    (["--config.log_every_steps=0"], "config.log_every_steps is 0"),
    (["--config.checkpoint_every_steps=-3"], "config.checkpoint_every_steps is -3"),
    (["--config.keep_checkpoints=0"], "config.keep_checkpoints is 0"),
    (["--config.eval_every_epochs=-1"], "config.eval_every_epochs is -1"),
    (["--config.seed=-1"], "config.seed is -1"),
    (["--config.crop_padding=-2"], "config.crop_padding is -2"),
    (["--config.widths=(0, 8)"], "config.widths is (0, 8)"),
    (["--config.loss_weights=(1.0, -1.0, 1.0, 1.0)"], "config.loss_weights is"),
    (["--config.loss_weights=(1.0,)"], "loss_weights has 1 entries but bits has 4"),
    (["--config.optimizer.learning_rate=0"], "config.optimizer.learning_rate is 0.0"),
    (["--config.optimizer.learning_rate=-0.1"], "config.optimizer.learning_rate is -0.1"),
    (["--config.optimizer.quantizer_learning_rate=0"], "quantizer_learning_rate is 0.0"),
    (["--config.optimizer.momentum=1.5"], "config.optimizer.momentum is 1.5; use in [0, 1)"),
    (["--config.optimizer.weight_decay=-1e-4"], "config.optimizer.weight_decay is -0.0001"),
    (["--config.optimizer.warmup_epochs=-1"], "config.optimizer.warmup_epochs is -1.0"),
    (["--config.optimizer.step_factor=0"], "config.optimizer.step_factor is 0.0"),
    (["--config.optimizer.schedule=linear"], "config.optimizer.schedule is 'linear'"),
    (["--config.optimizer.weight_decay_by_bits=((4, 1e-4),)"], "sets the decay of a run at one"),
    (["--config.augment=rotate"], "config.augment is 'rotate'"),
    (["--config.dtype=float16"], "config.dtype is 'float16'"),
    (["--config.distillation=bogus"], "config.distillation is 'bogus'"),
    (["--config.precision_mode=bogus"], "config.precision_mode is 'bogus'"),
    (["--config.bits=(2, 99)"], "bit-width 99 is not supported"),
    (["--config.bits=()"], "no bit-widths given"),
    (["--config.first_last_bits=40"], "bit-width 40 is not supported"),
    (["--config.method=nosuch"], "unknown method 'nosuch'"),
    (["--config.model=nosuch"], "unknown model 'nosuch'"),
    (["--config.dataset=nosuch"], "unknown dataset 'nosuch'"),
    (["--config.epochs=abc"], "config.epochs expects an int"),
    (["--config.no_such_key=1"], "unknown config key 'no_such_key'"),
    (["--config.init_from=/nonexistent/run"], "config.init_from: /nonexistent/run does not exist"),
]


@pytest.mark.parametrize("argv, match", BAD, ids=[a[0].split("=")[0][9:] for a, _ in BAD])
def test_bad_input_exits_2_with_one_line_and_creates_nothing(tmp_path, capsys, argv, match):
    workdir = tmp_path / "w"
    code, _, err = run(capsys, "train", "--workdir", str(workdir), "--no-progress", *argv)
    assert_user_error(code, err, match)
    assert not workdir.exists()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bad") / "run"
    assert cli.main(["train", "--workdir", str(workdir), "--no-progress", *TINY]) == 0
    return workdir


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--config.optimizer.momentum=-0.5"], "config.optimizer.momentum is -0.5"),
        (["--config.widths=(8, 8, 16)"], "use a new --workdir"),
        (["--config.init_from=/nonexistent/run"], "does not exist"),
    ],
)
def test_bad_input_leaves_a_finished_run_untouched(finished, capsys, argv, match):
    before = tree_digest(finished)
    code, _, err = run(capsys, "train", "--workdir", str(finished), "--no-progress", *TINY, *argv)
    assert_user_error(code, err, match)
    assert tree_digest(finished) == before


def test_init_from_a_run_of_another_model_names_the_first_mismatched_path(
    finished, tmp_path, capsys
):
    workdir = tmp_path / "w"
    code, _, err = run(
        capsys,
        "train",
        "--workdir",
        str(workdir),
        "--no-progress",
        "--config.widths=(8, 16, 8)",
        f"--config.init_from={finished}",
    )
    assert_user_error(code, err, "init_from: bn0/bias has shape (4, 8) in the source but (4, 16)")
    assert not workdir.exists()

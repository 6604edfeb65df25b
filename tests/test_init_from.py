"""Fine-tuning from a trained run (``--config.init_from``): weights and BatchNorm matched by
path, per-precision rows by bit-width, quantizer steps re-initialised from the loaded weights,
BatchNorm re-estimated, and the per-bit-width weight decay."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_one_line

from jaxquant import cli
from jaxquant.config import load_config
from jaxquant.errors import CheckpointError, ConfigError
from jaxquant.methods import optimizer_config
from jaxquant.training.init_from import _map_leaf, load_source
from jaxquant.training.metrics import read_metrics

SMALL = ["--no-progress", "--config.checkpoint_every_steps=1000"]


def test_per_precision_rows_are_taken_by_bit_width():
    source = np.arange(4 * 3, dtype=np.float32).reshape(4, 3)  # rows for bits 2, 4, 8, 32
    target = jnp.zeros((2, 3))
    np.testing.assert_array_equal(
        _map_leaf(("bn0", "scale"), target, source, (2, 4, 8, 32), (4, 8)), source[[1, 2]]
    )
    # a bit-width the source lacks takes its full-precision row, else its widest
    np.testing.assert_array_equal(
        _map_leaf(("bn0", "mean"), target, source, (2, 4, 8, 32), (3, 5)), source[[3, 3]]
    )
    np.testing.assert_array_equal(
        _map_leaf(("bn0", "var"), target, source[:2], (2, 4), (3, 2)), source[[1, 0]]
    )
    # a shared source leaf (or one row) goes into every row
    np.testing.assert_array_equal(
        _map_leaf(("bn0", "bias"), target, source[0], None, (2, 4)), source[[0, 0]]
    )
    np.testing.assert_array_equal(
        _map_leaf(("bn0", "bias"), target, source[:1], (32,), (2, 4)), source[[0, 0]]
    )
    # a kernel is never read as per precision, even when its first axis happens to match
    kernel = np.arange(2 * 3, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(
        _map_leaf(("conv0", "kernel"), target, kernel, (2, 4), (4, 2)), kernel
    )
    with pytest.raises(CheckpointError) as error:
        _map_leaf(("conv0", "kernel"), jnp.zeros((3, 3)), kernel, None, (2,))
    assert_one_line(error.value, "conv0/kernel", "(2, 3)", "(3, 3)")


def test_weight_decay_by_bits_sets_the_decay_of_a_one_bit_width_run():
    config = load_config()
    config.optimizer.weight_decay_by_bits = ((2, 2.5e-5), (3, 5e-5), (4, 1e-4))
    config.bits = (3,)
    assert optimizer_config(config).weight_decay == 5e-5
    config.bits = (8,)
    with pytest.raises(ConfigError, match="no entry for 8 bits"):
        optimizer_config(config)
    config.bits = (2, 4)
    with pytest.raises(ConfigError, match="sets the decay of a run at one bit-width"):
        optimizer_config(config)


@pytest.fixture(scope="module")
def fp_run(tmp_path_factory):
    """A full-precision digits run (LSQ at 32 bits) to fine-tune from."""
    workdir = tmp_path_factory.mktemp("fp") / "run"
    argv = ["train", "--workdir", str(workdir), *SMALL, "--config.method=lsq"]
    assert cli.main(argv + ["--config.bits=(32,)", "--config.epochs=3"]) == 0
    return workdir


def test_fine_tuned_state_holds_the_fp_weights_with_fresh_steps(fp_run):
    from jaxquant.data import load_digits
    from jaxquant.methods import build_trainer
    from jaxquant.quantizers.lsq import lsq_init_step
    from jaxquant.training.init_from import initialize_from

    config = load_config()
    config.method, config.bits = "lsq", (2, 4)
    dataset = load_digits()
    trainer = build_trainer(config, dataset, 22)
    sample = dataset.train_examples(np.arange(64))[0]
    fresh = trainer.init(jax.random.key(0), jnp.asarray(sample))
    source = load_source(fp_run)
    state = initialize_from(trainer, fresh, source, sample, jax.random.key(1))
    params = jax.device_get(state.params)
    kernel = source.params[("conv0", "kernel")]
    np.testing.assert_array_equal(params["conv0"]["kernel"], kernel)
    fp_scale = source.params[("bn0", "scale")]  # (1, C): the FP row, into both precisions' rows
    np.testing.assert_array_equal(params["bn0"]["scale"], np.repeat(fp_scale, 2, 0))
    fp_mean = source.batch_stats[("bn0", "mean")]
    np.testing.assert_array_equal(state.batch_stats["bn0"]["mean"], np.repeat(fp_mean, 2, 0))
    # LSQ's init from the loaded kernel, 2 mean|w| / sqrt(Qp), at each bit-width
    expected = [float(lsq_init_step(jnp.asarray(kernel), b, signed=True)) for b in (2, 4)]
    np.testing.assert_allclose(params["conv0"]["weight_step"], expected, rtol=1e-6)
    assert not np.allclose(params["conv0"]["weight_step"], fresh.params["conv0"]["weight_step"])
    # re-estimated BatchNorm: each precision's row moves to its own quantized statistics
    batches = [dataset.train_examples(np.arange(i * 64, (i + 1) * 64))[0] for i in range(5)]
    tuned = initialize_from(trainer, fresh, source, sample, jax.random.key(1), batches)
    mean = np.asarray(tuned.batch_stats["bn0"]["mean"])
    assert not np.allclose(mean[0], fp_mean[0]) and not np.allclose(mean[0], mean[1])
    np.testing.assert_array_equal(tuned.params["conv0"]["kernel"], kernel)


@pytest.mark.slow
def test_fine_tuning_re_estimates_batch_norm_and_starts_far_above_chance(fp_run, tmp_path):
    workdir = tmp_path / "ft"
    step = sorted(p.name for p in (fp_run / "checkpoints").iterdir() if p.name.isdigit())[-1]
    argv = ["train", "--workdir", str(workdir), *SMALL, "--config.method=lsq"]
    argv += ["--config.bits=(2,)", "--config.epochs=1"]
    argv += [f"--config.init_from={fp_run / 'checkpoints' / step}"]  # one checkpoint folder
    assert cli.main(argv) == 0
    first = read_metrics(workdir)[0]
    assert first["step"] == 0 and first["eval/accuracy/2-bit"] > 0.8  # chance is 0.1
    fp = json.loads((fp_run / "results.json").read_text())["accuracy"]["32"]
    assert fp > 0.9
    # a rerun resumes its own checkpoint; the source is not read again
    assert cli.main(argv) == 0
    assert [r["step"] for r in read_metrics(workdir) if "eval/accuracy/2-bit" in r] == [0, 22]

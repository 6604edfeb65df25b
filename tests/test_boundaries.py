"""The public API's boundaries: a wrong precision axis or precision index is one line.

Per-precision arrays (BatchNorm statistics and affine, LSQ steps, interval bounds) carry a
leading axis of one row per bit-width, and a precision index picks a row. JAX would clamp an
index past the end and broadcast or silently misread rows of another model, so every entry point
that takes them refuses a wrong one with a one-line `jaxquant.errors` error naming the expected
and the received shape (or the index and its range). Results a user trusts are checked finite.
"""

from __future__ import annotations

import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import assert_one_line

from jaxquant.checkpoint import Checkpointer
from jaxquant.errors import CheckpointError, NonFiniteError, PrecisionError
from jaxquant.interception import quantize
from jaxquant.layers import MultiBranchConv, QuantConv, QuantDense, QuantSpec
from jaxquant.methods import mbquant
from jaxquant.models import SmallCNN
from jaxquant.training import MultiPrecisionTrainer, accuracy, evaluate

X = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 1)), jnp.float32)
Y = jnp.arange(2)


def _trainer(bits, widths=(4, 4)):
    return MultiPrecisionTrainer(SmallCNN(bits=bits, widths=widths), bits, optax.sgd(0.1))


@pytest.fixture(scope="module")
def trainers():
    """``{bits: (trainer, state)}`` of SmallCNNs built for three and for two bit-widths."""
    out = {}
    for bits in ((2, 4, 8), (2, 4)):
        trainer = _trainer(bits)
        out[bits] = trainer, trainer.init(jax.random.key(0), X)
    return out


# ----------------------------------------------------------------------------------------------
# A state, checkpoint or variables built for another number of bit-widths.


def test_a_trainer_refuses_a_state_built_for_other_bits(trainers):
    (trainer2, state2), (trainer3, state3) = trainers[(2, 4)], trainers[(2, 4, 8)]
    with pytest.raises(PrecisionError) as error:
        jax.jit(trainer2.train_step)(state3, X, Y, jax.random.key(1))
    assert_one_line(
        error.value, "stem_bn", "has shape (3, 4)", "(2, 4) is expected", "2 bit-widths"
    )
    with pytest.raises(PrecisionError) as error:
        jax.jit(trainer3.train_step)(state2, X, Y, jax.random.key(1))
    assert_one_line(error.value, "has shape (2, 4)", "(3, 4) is expected for 3 bit-widths")
    # Only the BatchNorm statistics of the other model (the parameters fit): still refused.
    with pytest.raises(PrecisionError) as error:
        trainer2.logits(state2.params, state3.batch_stats, X)
    assert_one_line(error.value, "batch_stats 'mean' has shape (3, 4)", "(2, 4) is expected")
    with pytest.raises(PrecisionError) as error:
        evaluate(trainer2, state2.replace(batch_stats=state3.batch_stats), X, Y, batch_size=2)
    assert_one_line(error.value, "batch_stats 'mean'", "(3, 4)", "(2, 4)")


def test_a_trainer_refuses_a_model_built_for_other_bits():
    with pytest.raises(PrecisionError) as error:
        MultiPrecisionTrainer(SmallCNN(bits=(2, 4, 8)), (2, 4), optax.sgd(0.1))
    assert_one_line(error.value, "model is built for bits (2, 4, 8)", "given (2, 4)")


@pytest.mark.parametrize(
    "spec, name, received, expected",
    [
        (QuantSpec("lsq", "lsq"), "act_step", "(3,)", "(2,)"),
        (QuantSpec("lsq", "none", per_channel=True), "weight_step", "(3, 5)", "(2, 5)"),
        (QuantSpec("none", "interval"), "act_lower", "(3,)", "(2,)"),
    ],
)
def test_quantizer_params_of_other_bits_are_refused(spec, name, received, expected):
    """`layers.quantizer_params` (every QuantConv, QuantDense and intercepted layer)."""
    x = X.reshape(2, -1)
    params = QuantDense(5, bits=(2, 4, 8), spec=spec).init(jax.random.key(0), x, 0)
    with pytest.raises(PrecisionError) as error:
        QuantDense(5, bits=(2, 4), spec=spec).apply(params, x, 0)
    assert_one_line(
        error.value, f"'{name}' has shape {received}", f"{expected} is expected", "bits (2, 4)"
    )


def test_a_multi_branch_conv_refuses_activation_intervals_of_other_bits():
    selection = mbquant.branch_selection((2, 4))
    x = jnp.ones((1, 4, 4, selection.num_branches, 3))
    layer = MultiBranchConv(4, bits=(2, 4), selection=selection)
    params = layer.init(jax.random.key(0), x, 0)["params"]
    wrong = {**params, "act_lower": jnp.concatenate([params["act_lower"]] * 2)}
    with pytest.raises(PrecisionError) as error:
        layer.apply({"params": wrong}, x, 0)
    shape = params["act_lower"].shape
    assert_one_line(error.value, f"has shape {(4, shape[1])}", f"{shape} is expected")
    with pytest.raises(PrecisionError) as error:
        layer.apply({"params": params}, x, 2)
    assert_one_line(error.value, "precision index 2 is out of range", "0..1")


def test_a_checkpoint_of_another_number_of_bit_widths_is_refused(tmp_path):
    """A run trained at 4 bit-widths, restored by a config of 3 (`jaxquant train` resuming,
    `eval`, `export`, `load_run`: all restore through `Checkpointer.restore`)."""
    state4 = _trainer((2, 3, 4, 8)).init(jax.random.key(0), X)
    checkpointer = Checkpointer(tmp_path)
    checkpointer.save(1, state4)
    checkpointer.close()
    checkpointer = Checkpointer(tmp_path)
    template = _trainer((2, 4, 8)).init(jax.random.key(0), X)
    with pytest.raises(CheckpointError) as error:
        checkpointer.restore(template)
    checkpointer.close()
    assert_one_line(
        error.value,
        "written for 4 bit-widths and this config has 3",
        "is (4, 4) in the checkpoint and (3, 4) in this config's model",
        "use a new --workdir",
    )
    # Other widths: the shapes differ elsewhere too, and the message says how many.
    checkpointer = Checkpointer(tmp_path)
    with pytest.raises(CheckpointError) as error:
        checkpointer.restore(_trainer((2, 3, 4, 8), widths=(4, 8)).init(jax.random.key(0), X))
    checkpointer.close()
    assert_one_line(error.value, "arrays have other shapes", "(4, 4) in the checkpoint")


# ----------------------------------------------------------------------------------------------
# A precision index out of range (a Python int failed deep inside with a bare IndexError, an
# array was clamped to the last row).


@pytest.mark.parametrize("precision", [3, -4, np.int64(7), jnp.int32(3)])
def test_a_precision_index_out_of_range_is_refused(trainers, precision):
    trainer, state = trainers[(2, 4, 8)]
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    for call in (
        lambda: trainer.logits(state.params, state.batch_stats, X, precision=precision),
        lambda: trainer.model.apply(variables, X, precision),  # the model itself
    ):
        with pytest.raises(PrecisionError) as error:
            call()
        assert_one_line(error.value, f"precision index {int(precision)} is out of range", "0..2")


def test_a_negative_index_counts_from_the_end(trainers):
    trainer, state = trainers[(2, 4, 8)]
    chex.assert_trees_all_equal(
        trainer.logits(state.params, state.batch_stats, X, precision=-1),
        trainer.logits(state.params, state.batch_stats, X, precision=2),
    )


@pytest.mark.parametrize("precision", [1.0, True, jnp.arange(2), "1"])
def test_a_precision_index_must_be_an_integer(trainers, precision):
    trainer, state = trainers[(2, 4, 8)]
    with pytest.raises(PrecisionError) as error:
        trainer.logits(state.params, state.batch_stats, X, precision=precision)
    assert_one_line(error.value, "must be an integer", "bits (2, 4, 8)")


def test_a_traced_precision_index_is_not_refused(trainers):
    """Under jit (and the trainer's vmap) the index has no value to check: every one runs."""
    trainer, state = trainers[(2, 4, 8)]
    jitted = jax.jit(lambda p: trainer.logits(state.params, state.batch_stats, X, precision=p))
    chex.assert_trees_all_close(
        [jitted(p) for p in range(3)],
        list(trainer.logits(state.params, state.batch_stats, X)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_a_layer_refuses_an_index_past_its_bits():
    layer = QuantConv(4, bits=(2, 4))
    variables = layer.init(jax.random.key(0), X, 0)
    with pytest.raises(PrecisionError) as error:
        layer.apply(variables, X, 2)
    assert_one_line(error.value, "precision index 2 is out of range for bits (2, 4)", "0..1")


class _LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x))
        return nn.Dense(10)(jnp.mean(nn.relu(x), axis=(1, 2)))


def test_a_quantized_linen_model_refuses_an_index_and_variables_of_other_bits():
    model = quantize(_LinenCNN(), bits=(2, 4, 32))
    variables = model.init(jax.random.key(0), X)
    with pytest.raises(PrecisionError) as error:
        model.apply(variables, X, 3)
    assert_one_line(error.value, "precision index 3 is out of range for bits (2, 4, 32)")
    with pytest.raises(PrecisionError) as error:
        quantize(_LinenCNN(), bits=(2, 32)).apply(variables, X, 0)
    assert_one_line(error.value, "has shape (3,)", "(2,) is expected", "Conv_0")


class _NNXCNN(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.fc = nnx.Linear(4, 10, rngs=rngs)

    def __call__(self, x):
        return self.fc(jnp.mean(nnx.relu(self.bn(self.conv(x))), axis=(1, 2)))


def test_a_quantized_nnx_model_refuses_an_index_and_variables_of_other_bits():
    model3, model2 = (quantize(_NNXCNN(nnx.Rngs(0)), bits=b) for b in ((2, 4, 8), (2, 4)))
    variables3 = model3.init(jax.random.key(0), X)
    model2.init(jax.random.key(0), X)
    with pytest.raises(PrecisionError) as error:
        model3.apply(variables3, X, 3)
    assert_one_line(error.value, "precision index 3 is out of range for bits (2, 4, 8)")
    with pytest.raises(PrecisionError) as error:
        model2.apply(variables3, X, 0)
    assert_one_line(error.value, "has shape (3, 4)", "(2, 4) is expected for 2 bit-widths")


# ----------------------------------------------------------------------------------------------
# Results a user trusts are finite.


def test_evaluate_refuses_a_state_with_nan(trainers):
    trainer, state = trainers[(2, 4)]
    params = jax.tree.map(lambda a: a, state.params)
    params["classifier"]["kernel"] = params["classifier"]["kernel"].at[0, 0].set(jnp.nan)
    with pytest.raises(NonFiniteError) as error:
        evaluate(trainer, state.replace(params=params), X, Y, batch_size=2)
    assert_one_line(error.value, "params['classifier']['kernel'] holds NaN or infinity")


def test_accuracy_refuses_non_finite_predictions():
    predict = lambda images: jnp.full((len(images), 10), jnp.inf)  # noqa: E731
    with pytest.raises(NonFiniteError) as error:
        accuracy(predict, np.zeros((3, 8, 8, 1)), np.zeros(3, int), batch_size=2)
    assert_one_line(error.value, "predict's output for examples 0..1 holds NaN or infinity")


def test_the_library_does_not_import_chex():
    """chex is a test dependency (the ``dev`` extra): the trainer must load on an image with only
    jax, flax, optax and orbax."""
    code = (
        "import sys, jaxquant.methods, jaxquant.training, jaxquant.models, jaxquant.layers, "
        "jaxquant.interception, jaxquant.checkpoint, jaxquant.quantizers; "
        "print('chex' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

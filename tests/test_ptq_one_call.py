"""One-call PTQ of a user's Linen model (`jaxquant.ptq.quantize`): BitSplit keeps the FP
accuracy at W4A8, and the saved result reloads in a fresh process and predicts identically."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest

from jaxquant import ptq
from jaxquant.data import load_dataset
from jaxquant.errors import CheckpointError, ConfigError

MODEL = """
import flax.linen as nn

class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.avg_pool(nn.relu(nn.Conv(16, (3, 3))(x)), (2, 2), (2, 2))
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.relu(nn.Dense(64)(x.reshape((x.shape[0], -1))))
        return nn.Dense(10)(x)
"""
namespace: dict = {}
exec(MODEL, namespace)  # noqa: S102  (the same source runs in the fresh process below)
CNN = namespace["CNN"]


@pytest.fixture(scope="module")
def trained():
    """A full-precision CNN trained on normalised digits with a plain optax loop."""
    dataset = load_dataset("digits")
    x_train, y_train = dataset.train_examples(np.arange(dataset.train_size))
    x_test, y_test = next(iter(dataset.test_batches(dataset.test_size)))[:2]
    norm = lambda x: (np.asarray(x, np.float32) - dataset.mean) / dataset.std
    x_train, x_test = norm(x_train), norm(x_test)
    model = CNN()
    params = model.init(jax.random.key(0), x_train[:2])
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, x, y):
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
            model.apply(p, x), y
        ).mean()
        grads = jax.grad(loss)(params)
        updates, opt = tx.update(grads, opt)
        return optax.apply_updates(params, updates), opt

    rng = np.random.default_rng(0)
    for _ in range(300):
        idx = rng.choice(len(x_train), 128, replace=False)
        params, opt = step(params, opt, x_train[idx], y_train[idx])
    return model, params, x_train, x_test, np.asarray(y_test)


def _accuracy(logits, labels):
    return float(np.mean(np.argmax(np.asarray(logits), -1) == labels))


FAST = dict(epochs=10, ofwa_epochs=5, calibration_rows=2000, bn_batches=0, calibration_images=256)


def test_bitsplit_in_one_call_keeps_the_fp_accuracy(trained):
    model, params, x_train, x_test, y_test = trained
    fp = _accuracy(model.apply(params, x_test), y_test)
    result = ptq.quantize(model, params, x_train, "bitsplit", 4, 8, train_kwarg=None, **FAST)
    assert fp > 0.9 and _accuracy(result.predict(x_test), y_test) > fp - 0.03
    for name, w in result.weights.items():  # integer codes and per-channel scales per layer
        assert w["codes"].dtype == np.int32 and w["alpha"].shape == (w["codes"].shape[0],)
        assert np.abs(w["codes"]).max() <= 2 ** (w["bits"] - 1)
    assert result.weights["Conv_1"]["bits"] == 4 and result.weights["Conv_0"]["bits"] == 8


def test_the_saved_result_reloads_in_a_fresh_process(trained, tmp_path):
    model, params, x_train, x_test, _ = trained
    result = ptq.quantize(model, params, x_train, "rtn", 4, 8, train_kwarg=None, **FAST)
    saved = result.save(tmp_path / "cnn_w4a8")
    x_path, y_path = str(tmp_path / "x.npy"), str(tmp_path / "y.npy")
    np.save(x_path, x_test)
    script = MODEL + textwrap.dedent(f"""
        import numpy as np
        from jaxquant import ptq
        loaded = ptq.load({str(saved)!r}, CNN(), train_kwarg=None)
        np.save({y_path!r}, np.asarray(loaded.predict(np.load({x_path!r}))))
    """)  # fmt: skip
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), np.asarray(result.predict(x_test)))
    with pytest.raises(CheckpointError, match="exists"):
        result.save(saved)


def test_bad_calls_are_one_line_errors(trained):
    model, params, x_train, _, _ = trained
    with pytest.raises(ConfigError, match="unknown PTQ method 'gptq'"):
        ptq.quantize(model, params, x_train, "gptq", train_kwarg=None)
    with pytest.raises(ConfigError, match="unknown PTQ setting 'epoch'"):
        ptq.quantize(model, params, x_train, train_kwarg=None, epoch=3)
    with pytest.raises(CheckpointError, match="not a saved PTQ result"):
        ptq.load("/nonexistent", model)


NNX_MODEL = """
import functools
from flax import nnx

class NNXCNN(nnx.Module):
    def __init__(self, *, rngs):
        self.conv1 = nnx.Conv(1, 16, kernel_size=(3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(16, rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, kernel_size=(3, 3), rngs=rngs)
        self.pool = functools.partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        self.linear1 = nnx.Linear(128, 64, rngs=rngs)
        self.linear2 = nnx.Linear(64, 10, rngs=rngs)

    def __call__(self, x):
        x = self.pool(nnx.relu(self.bn1(self.conv1(x))))
        x = self.pool(nnx.relu(self.conv2(x)))
        return self.linear2(nnx.relu(self.linear1(x.reshape(x.shape[0], -1))))
"""
exec(NNX_MODEL, namespace)  # noqa: S102
NNXCNN = namespace["NNXCNN"]


def test_an_nnx_model_in_one_call_and_reloaded_in_a_fresh_process(trained, tmp_path):
    from flax import nnx

    _, _, x_train, x_test, y_test = trained
    _, y_train = load_dataset("digits").train_examples(np.arange(len(x_train)))
    model = NNXCNN(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
        optimizer.update(model, nnx.grad(loss)(model))

    rng = np.random.default_rng(0)
    model.train()
    for _ in range(300):
        idx = rng.choice(len(x_train), 128, replace=False)
        step(model, optimizer, x_train[idx], y_train[idx])
    model.eval()
    fp = _accuracy(model(x_test), y_test)
    result = ptq.quantize(model, None, x_train, "bitsplit", 4, 8, **FAST)
    assert fp > 0.9 and _accuracy(result.predict(x_test), y_test) > fp - 0.03
    assert set(result.weights) == {"conv1", "conv2", "linear1", "linear2"}
    saved = result.save(tmp_path / "nnx_w4a8")
    x_path, y_path = str(tmp_path / "x.npy"), str(tmp_path / "y.npy")
    np.save(x_path, x_test)
    script = NNX_MODEL + textwrap.dedent(f"""
        import numpy as np
        from jaxquant import ptq
        loaded = ptq.load({str(saved)!r}, NNXCNN(rngs=nnx.Rngs(1)))  # other weights: from the file
        np.save({y_path!r}, np.asarray(loaded.predict(np.load({x_path!r}))))
    """)  # fmt: skip
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    np.testing.assert_array_equal(np.load(y_path), np.asarray(result.predict(x_test)))

"""Bring your own Linen model: `jaxquant.quantize` runs an unchanged model (written as Flax's
examples write them, no jaxquant import) at every bit-width by method interception."""

from __future__ import annotations

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from numpy.testing import assert_allclose

from jaxquant import quantizers as q
from jaxquant.data import load_dataset, make_preprocess
from jaxquant.errors import BitWidthError, ConfigError
from jaxquant.interception import Rule, quantize
from jaxquant.layers import QuantSpec
from jaxquant.models import CifarResNet, SmallCNN
from jaxquant.models.common import avg_pool_all
from jaxquant.training import (
    MultiPrecisionTrainer,
    OptimizerConfig,
    evaluate_dataset,
    fit,
    make_optimizer,
)

X = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))


class CNN(nn.Module):
    """A user's CNN, as Flax's MNIST example writes one (with BatchNorm)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(32, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.relu(x)
        x = nn.Conv(64, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.relu(x)
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.Dense(128)(x)
        x = nn.relu(x)
        return nn.Dense(10)(x)


class ExampleCNN(nn.Module):
    """The CNN of Flax's MNIST example, unchanged."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(features=32, kernel_size=(3, 3))(x)
        x = nn.relu(x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = nn.Conv(features=64, kernel_size=(3, 3))(x)
        x = nn.relu(x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.Dense(features=256)(x)
        x = nn.relu(x)
        x = nn.Dense(features=10)(x)
        return x


class PlainSmallCNN(nn.Module):
    """The bundled `SmallCNN` (widths 8/16/16) written with plain Linen layers."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
        bn = lambda name: nn.BatchNorm(not train, momentum=0.9, epsilon=1e-5, name=name)
        x = nn.Conv(8, (3, 3), use_bias=False, kernel_init=init, name="stem")(x)
        x = nn.relu(bn("stem_bn")(x))
        for i, width in enumerate((16, 16)):
            x = nn.Conv(width, (3, 3), use_bias=False, kernel_init=init, name=f"conv{i}")(x)
            x = nn.relu(bn(f"bn{i}")(x))
            if min(x.shape[1:3]) >= 4:
                x = nn.max_pool(x, (2, 2), (2, 2))
        return nn.Dense(10, name="classifier")(avg_pool_all(x))


def test_at_full_precision_the_wrapped_model_is_the_users_model():
    plain = CNN()
    variables = plain.init(jax.random.key(1), X)
    wrapped = quantize(plain, bits=(32,))
    wrapped_variables = wrapped.init(jax.random.key(1), X, 0)
    # The user's tree, plus the quantizers' steps and a precision axis on BatchNorm.
    shapes = jax.tree_util.tree_map(jnp.shape, wrapped_variables)
    for layer in ("Conv_0", "Conv_1", "Dense_0", "Dense_1"):
        params = variables["params"][layer]
        assert set(shapes["params"][layer]) == set(params) | {"weight_step", "act_step"}
        assert_allclose(wrapped_variables["params"][layer]["kernel"], params["kernel"])
    for name in ("scale", "bias"):
        assert shapes["params"]["BatchNorm_0"][name] == (1, 32)
    assert shapes["batch_stats"]["BatchNorm_1"] == {"mean": (1, 64), "var": (1, 64)}
    for train in (False, True):
        kwargs = {"mutable": ["batch_stats"]} if train else {}
        y = plain.apply(variables, X, train=train, **kwargs)
        y_wrapped = wrapped.apply(wrapped_variables, X, 0, train=train, **kwargs)
        logits = (y[0], y_wrapped[0]) if train else (y, y_wrapped)
        assert_allclose(logits[1], logits[0], atol=1e-6, rtol=1e-6)


class PlainCifarResNet8(nn.Module):
    """The bundled post-activation `CifarResNet` (depth 8) written with plain Linen layers."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
        conv = lambda f, s, name, k=(3, 3): nn.Conv(
            f, k, s, use_bias=False, kernel_init=init, name=name
        )
        bn = lambda name: nn.BatchNorm(not train, momentum=0.9, epsilon=1e-5, name=name)
        x = nn.relu(bn("stem_bn")(conv(16, (1, 1), "stem")(x)))
        for stage in range(3):
            features, strides = 16 * 2**stage, (2, 2) if stage else (1, 1)
            name = f"stage{stage}_block0"
            shortcut = x
            if stage:
                projected = conv(features, strides, f"{name}_shortcut", (1, 1))(x)
                shortcut = bn(f"{name}_shortcut_bn")(projected)
            out = nn.relu(bn(f"{name}_bn0")(conv(features, strides, f"{name}_conv0")(x)))
            x = nn.relu(bn(f"{name}_bn1")(conv(features, (1, 1), f"{name}_conv1")(out)) + shortcut)
        return nn.Dense(10, name="classifier")(avg_pool_all(x))


BUNDLED = {
    "small_cnn": (
        lambda bits: SmallCNN(widths=(8, 16, 16), bits=bits, spec=QuantSpec()),
        PlainSmallCNN,
        [Rule.keep_fp("stem"), Rule.keep_fp("classifier"), Rule("conv")],
    ),
    "cifar_resnet8": (
        lambda bits: CifarResNet(depth=8, bits=bits, spec=QuantSpec()),
        PlainCifarResNet8,
        [Rule.keep_fp("stem|shortcut|classifier"), Rule("conv")],
    ),
}


@pytest.mark.parametrize("name", BUNDLED)
def test_the_bundled_model_through_the_wrapper_equals_its_quantconv_form(name):
    """Same parameters, same logits at every precision, in training and evaluation: the
    interception computes exactly what QuantConv and PrecisionBatchNorm compute."""
    bits = (2, 4, 32)
    make_bundled, plain, rules = BUNDLED[name]
    bundled = make_bundled(bits)
    variables = bundled.init(jax.random.key(2), X, 0, train=True)
    wrapped = quantize(plain(), rules, bits)
    shapes = jax.tree_util.tree_map(jnp.shape, wrapped.init(jax.random.key(2), X, 0, train=True))
    assert shapes == jax.tree_util.tree_map(jnp.shape, variables)
    for p in range(len(bits)):
        for train in (False, True):
            mutable = ["batch_stats"] if train else False
            y = bundled.apply(variables, X, p, train=train, mutable=mutable)
            y_wrapped = wrapped.apply(variables, X, p, train=train, mutable=mutable)
            for got, want in zip(
                jax.tree_util.tree_leaves(y_wrapped), jax.tree_util.tree_leaves(y)
            ):
                assert_allclose(got, want, atol=2e-6, rtol=1e-6)


def _train(model, bits, dataset, epochs, workdir):
    steps = dataset.train_size // 128
    trainer = MultiPrecisionTrainer(
        model,
        bits,
        make_optimizer(OptimizerConfig(), steps * epochs, steps),
        precision_mode="unroll",
        preprocess=make_preprocess(dataset.mean, dataset.std),
    )
    state = fit(trainer, dataset, workdir=str(workdir), seed=0, epochs=epochs, batch_size=128,
                progress=False, log=lambda _: None)  # fmt: skip
    return evaluate_dataset(trainer, state, dataset, 500)


BITS = (2, 4, 8, 32)


@pytest.fixture(scope="module")
def bundled_accuracy(tmp_path_factory):
    """The bundled SmallCNN's digits accuracy per bit-width after 8 epochs: the band to reach."""
    model = SmallCNN(bits=BITS, spec=QuantSpec())
    return _train(model, BITS, load_dataset("digits"), 8, tmp_path_factory.mktemp("bundled"))


def test_a_users_cnn_trains_at_every_bit_width_as_the_bundled_one_does(tmp_path, bundled_accuracy):
    bits, bundled = BITS, bundled_accuracy
    rules = [Rule.keep_fp("Conv_0"), Rule.keep_fp("Dense_1"), Rule(".*")]  # as SmallCNN
    wrapped = quantize(ExampleCNN(), rules, bits, train_kwarg=None)  # its __call__ takes no mode
    ours = _train(wrapped, bits, load_dataset("digits"), 8, tmp_path / "ours")
    for b in bits:
        assert ours[b] > 0.9 and ours[b] > bundled[b] - 0.05, (b, ours, bundled)


def test_rules_give_a_4_bit_body_with_8_bit_first_and_last_layers(tmp_path):
    rules = [
        Rule("Conv_0", bits=(8,), activation=q.LSQ.for_activations(signed=True)),
        Rule("Dense_1", bits=(8,)),
        Rule(".*"),
    ]
    wrapped = quantize(CNN(), rules, bits=(4,))
    params = wrapped.init(jax.random.key(0), X, 0)["params"]
    assert params["Conv_1"]["weight_step"].shape == (1,)
    steps_8 = q.lsq_init_step(params["Conv_0"]["kernel"], 8, signed=True)
    assert_allclose(params["Conv_0"]["weight_step"], [steps_8], rtol=1e-6)  # initialised at 8 bits
    accuracy = _train(wrapped, (4,), load_dataset("digits"), 4, tmp_path)
    assert accuracy[4] > 0.5


def test_bad_rules_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"rule\(s\) \['attention'\] matched no nn.Conv/nn.Dense"):
        quantize(CNN(), [Rule("attention"), Rule(".*")], bits=(4, 32)).init(jax.random.key(0), X)
    with pytest.raises(BitWidthError, match="rule 'Conv_0'.*bit-width 1 is not supported"):
        quantize(CNN(), [Rule("Conv_0", bits=(1,))], bits=(4, 32))
    with pytest.raises(BitWidthError, match="one bit-width or one per precision"):
        quantize(CNN(), [Rule("Conv_0", bits=(4, 8, 8))], bits=(4, 32))
    with pytest.raises(ConfigError, match="not a regex"):
        Rule("Conv_(")
    with pytest.raises(ConfigError, match="takes a flax.linen or flax.nnx Module"):
        quantize(lambda x: x)


def test_the_users_mode_keyword_is_passed_through():
    class Deterministic(nn.Module):
        @nn.compact
        def __call__(self, x, deterministic: bool = True):
            x = nn.Dense(8)(x.reshape((x.shape[0], -1)))
            return nn.Dropout(0.5, deterministic=deterministic)(x)

    wrapped = quantize(Deterministic(), bits=(4, 32), train_kwarg="deterministic")
    variables = wrapped.init(jax.random.key(0), X, 0)
    y = wrapped.apply(variables, X, 1, train=True, rngs={"dropout": jax.random.key(1)})
    assert np.mean(np.asarray(y) == 0) > 0.2  # dropout is on in training
    assert np.all(wrapped.apply(variables, X, 1) == Deterministic().apply(variables, X))


def test_the_trainer_takes_the_users_loss():
    """``loss_fn(logits, labels)`` is each precision's task loss; distillation still applies
    (``largest``: ``L_b = 0.5 softCE(z_b, z_max) + 0.5 loss_fn``, the teacher's is loss_fn)."""
    wrapped = quantize(ExampleCNN(), bits=(2, 32), train_kwarg=None)
    one_hot = jax.nn.one_hot(jnp.arange(4) % 10, 10)
    for distillation in ("none", "largest"):
        trainer = MultiPrecisionTrainer(
            wrapped,
            (2, 32),
            make_optimizer(OptimizerConfig(), 10, 1),
            distillation=distillation,
            loss_fn=lambda logits, labels: jnp.mean(jnp.sum((logits - labels) ** 2, -1)),
        )
        state = trainer.init(jax.random.key(0), X)
        logits = trainer.logits(state.params, state.batch_stats, X)
        _, metrics = trainer.train_step(state, X, one_hot, jax.random.key(1))
        mse = jnp.mean(jnp.sum((logits - one_hot) ** 2, -1), axis=1)
        soft = -jnp.mean(jnp.sum(jax.nn.softmax(logits[1]) * jax.nn.log_softmax(logits[0]), -1))
        expected = mse if distillation == "none" else jnp.stack([0.5 * soft + 0.5 * mse[0], mse[1]])
        assert_allclose(metrics["loss_per_precision"], expected, rtol=1e-5)
        assert metrics["accuracy_per_precision"].shape == (2,)  # one-hot labels: argmax


# ----------------------------------------------------------------------------------------------
# NNX.


class NNXCNN(nnx.Module):
    """The CNN of Flax's NNX MNIST tutorial (for 8x8 inputs), with a BatchNorm."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(32, rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
        self.avg_pool = functools.partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        self.linear1 = nnx.Linear(256, 256, rngs=rngs)
        self.linear2 = nnx.Linear(256, 10, rngs=rngs)

    def __call__(self, x):
        x = self.avg_pool(nnx.relu(self.bn1(self.conv1(x))))
        x = self.avg_pool(nnx.relu(self.conv2(x)))
        x = x.reshape(x.shape[0], -1)
        x = nnx.relu(self.linear1(x))
        return self.linear2(x)


def test_nnx_at_full_precision_is_the_users_model():
    model = NNXCNN(rngs=nnx.Rngs(0))
    wrapped = quantize(model, bits=(32,))
    variables = wrapped.init(jax.random.key(0), X, 0, train=True)
    assert isinstance(model.conv1, nnx.Conv)  # the user's model is left unchanged
    users = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    shapes = jax.tree_util.tree_map(jnp.shape, variables)
    for layer in ("conv1", "conv2", "linear1", "linear2"):
        assert set(shapes["params"][layer]) == set(users[layer]) | {"weight_step", "act_step"}
        assert_allclose(variables["params"][layer]["kernel"], users[layer]["kernel"])
    assert shapes["params"]["bn1"] == {"scale": (1, 32), "bias": (1, 32)}
    assert shapes["batch_stats"]["bn1"] == {"mean": (1, 32), "var": (1, 32)}
    for train in (False, True):
        model.train() if train else model.eval()
        expected = model(X)
        got = wrapped.apply(
            variables, X, 0, train=train, mutable=["batch_stats"] if train else False
        )
        assert_allclose(got[0] if train else got, expected, atol=1e-6, rtol=1e-6)


def test_an_nnx_cnn_trains_at_every_bit_width_in_one_step(tmp_path, bundled_accuracy):
    rules = [Rule.keep_fp("conv1"), Rule.keep_fp("linear2"), Rule(".*")]
    wrapped = quantize(NNXCNN(rngs=nnx.Rngs(0)), rules, BITS)
    ours = _train(wrapped, BITS, load_dataset("digits"), 8, tmp_path)
    params = wrapped.init(jax.random.key(0), X, 0)["params"]
    assert params["conv2"]["weight_step"].shape == (len(BITS),)
    assert params["bn1"]["scale"].shape == (len(BITS), 32)
    for b in BITS:
        assert ours[b] > 0.9 and ours[b] > bundled_accuracy[b] - 0.05, (b, ours, bundled_accuracy)


def test_nnx_bad_rules_are_one_line_errors():
    model = NNXCNN(rngs=nnx.Rngs(0))
    with pytest.raises(
        ConfigError, match=r"rule\(s\) \['attention'\] matched no nnx.Conv/nnx.Linear"
    ):
        quantize(model, [Rule("attention")], bits=(4, 32))
    with pytest.raises(BitWidthError, match="rule 'conv1'"):
        quantize(model, [Rule("conv1", bits=(1,))], bits=(4, 32))


@pytest.mark.parametrize(
    "make",
    [
        lambda: quantize(CNN(), bits=(2, 32)),
        lambda: quantize(NNXCNN(rngs=nnx.Rngs(0)), bits=(2, 32)),
    ],
    ids=["linen", "nnx"],
)
def test_vmap_and_unroll_steps_agree(make):
    """All precisions in one jitted step, vmapped over the precision index or unrolled."""
    labels = jnp.arange(4) % 10
    results = []
    for mode in ("vmap", "unroll"):
        trainer = MultiPrecisionTrainer(
            make(), (2, 32), make_optimizer(OptimizerConfig(), 10, 1), precision_mode=mode
        )
        state = trainer.init(jax.random.key(0), X)
        results.append(jax.jit(trainer.train_step)(state, X, labels, jax.random.key(1)))
    (state_v, metrics_v), (state_u, metrics_u) = results
    assert_allclose(metrics_v["loss_per_precision"], metrics_u["loss_per_precision"], rtol=1e-5)
    chex.assert_trees_all_close(state_v.params, state_u.params, rtol=1e-4, atol=1e-5)


def test_conv_transpose_is_intercepted_and_exact_at_full_precision():
    class Decoder(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.ConvTranspose(4, (3, 3), strides=(2, 2))(x)
            x = nn.ConvTranspose(2, (2, 2), padding="VALID", transpose_kernel=True)(nn.relu(x))
            return x

    plain = Decoder()
    variables = plain.init(jax.random.key(0), X)
    wrapped = quantize(plain, bits=(32,), train_kwarg=None)
    wrapped_variables = wrapped.init(jax.random.key(0), X, 0)
    assert set(wrapped_variables["params"]["ConvTranspose_1"]) == {
        "kernel", "bias", "weight_step", "act_step"
    }  # fmt: skip
    assert_allclose(wrapped.apply(wrapped_variables, X, 0), plain.apply(variables, X), atol=1e-6)
    low = quantize(plain, bits=(2,), train_kwarg=None)
    low_variables = low.init(jax.random.key(0), X, 0)
    y = np.asarray(low.apply(low_variables, X, 0))
    assert y.shape == plain.apply(variables, X).shape and not np.allclose(
        y, plain.apply(variables, X)
    )

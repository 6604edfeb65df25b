"""Extension in one file: a new quantizer family and a new method, defined here alone (no package
file changes), registered, and trained through the trainer and through ``jaxquant train``.

The quantizers: symmetric min-max weights (``s = max|w| / (2^(b-1) - 1)``, no parameters) and
PACT activations (Choi et al., 2018: ``y = clip(x, 0, alpha)``, ``y_q = round(y n / alpha)
alpha / n`` with ``n = 2^b - 1``, a learned ``alpha`` per bit-width whose gradient is
``dy_q/dalpha = [x >= alpha]``, the rounding straight-through)."""

from __future__ import annotations

import dataclasses
import json
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose

from jaxquant import cli
from jaxquant import quantizers as q
from jaxquant.configs.base import base_config
from jaxquant.data import load_dataset
from jaxquant.layers import QuantSpec
from jaxquant.methods import Method, build_trainer, register, section, unregister
from jaxquant.training import fit


@dataclasses.dataclass(frozen=True)
class MinMaxWeight(q.Quantizer):
    """Symmetric min-max: ``w_hat = round(w / s) s``, ``s = max|w| / (2^(b-1) - 1)`` (not
    learned)."""

    name: ClassVar[str] = "minmax"

    def _scale(self, w, bits):
        return jax.lax.stop_gradient(jnp.max(jnp.abs(w))) / (q.pow2(bits - 1) - 1.0)

    def quantize(self, x, params, bits):
        x = q.as_float32(x)
        quantized = q.ste_round(x / self._scale(x, bits)) * self._scale(x, bits)
        return jnp.where(q.is_full_precision(bits), x, quantized)

    def grid_scale(self, x, params, bits):
        return q.grid_scale_or_one(bits, self._scale(q.as_float32(x), bits))


@dataclasses.dataclass(frozen=True)
class PACT(q.Quantizer):
    """PACT activations with a learned clip ``alpha`` per bit-width (ReLU at full precision)."""

    alpha_init: float = 6.0
    name: ClassVar[str] = "pact"
    param_names: ClassVar[tuple[str, ...]] = ("alpha",)

    def init(self, x, bits):
        return {"alpha": jnp.full((len(bits),), self.alpha_init, jnp.float32)}

    def at(self, params, precision):
        return {"alpha": params["alpha"][precision]}

    def quantize(self, x, params, bits):
        x, alpha = q.as_float32(x), params["alpha"]
        y = q.clip_inclusive(x, 0.0, alpha)  # dy/dalpha = 1 where x > alpha
        n = q.pow2(bits) - 1.0
        quantized = y + jax.lax.stop_gradient(jnp.round(y * n / alpha) * alpha / n - y)
        return jnp.where(q.is_full_precision(bits), jax.nn.relu(x), quantized)

    def grid_scale(self, x, params, bits):
        return q.grid_scale_or_one(bits, params["alpha"] / (q.pow2(bits) - 1.0))


def pact_spec(config) -> QuantSpec:
    return QuantSpec(
        MinMaxWeight(), PACT(alpha_init=float(section(config, PACT_METHOD).alpha_init))
    )


PACT_METHOD = Method(
    name="pact", quant_spec=pact_spec, section={"alpha_init": 4.0}, distillation="largest"
)


@pytest.fixture
def registered():
    q.register("minmax", weight=MinMaxWeight)
    q.register("pact", activation=PACT)
    register(PACT_METHOD)
    yield
    unregister("pact")
    q.unregister("minmax")
    q.unregister("pact")


def test_the_new_quantizers_match_their_formulas(registered):
    w = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3, 2, 4)), jnp.float32)
    s = float(np.max(np.abs(w))) / 7.0
    assert_allclose(MinMaxWeight().quantize(w, {}, 4), np.round(np.asarray(w) / s) * s, rtol=1e-6)
    x = jnp.linspace(-1.0, 3.0, 41)
    pact = q.activation_quantizer(
        "pact", alpha_init=2.0
    )  # the name table builds the registered type
    params = pact.at(pact.init(x, (2, 4)), 0)
    expected = np.round(np.clip(np.asarray(x), 0, 2.0) * 3 / 2.0) * 2.0 / 3
    assert_allclose(pact.quantize(x, params, 2), expected, atol=1e-6)
    dx, dalpha = jax.grad(lambda x, p: pact.quantize(x, p, 2).sum(), argnums=(0, 1))(x, params)
    assert_allclose(dx, ((np.asarray(x) >= 0) & (np.asarray(x) <= 2.0)).astype(np.float32))
    assert float(dalpha["alpha"]) == float(np.sum(np.asarray(x) > 2.0))  # PACT: 1 per clipped input
    assert_allclose(pact.quantize(x, params, 32), jax.nn.relu(x))


def _config(**overrides):
    config = base_config()
    config.method, config.bits, config.widths, config.epochs = "pact", (2, 4, 32), (8, 8), 1
    for key, value in overrides.items():
        config[key] = value
    return config


def test_the_new_method_trains_through_the_trainer(registered, tmp_path):
    config = _config()
    assert config.pact.alpha_init == 4.0  # the method's section, with its defaults
    dataset = load_dataset("digits")
    steps = dataset.train_size // config.batch_size
    trainer = build_trainer(config, dataset, steps)
    assert trainer.distillation == "largest"
    state = fit(
        trainer,
        dataset,
        workdir=str(tmp_path),
        seed=0,
        epochs=1,
        batch_size=config.batch_size,
        progress=False,
        log=lambda _: None,
    )
    conv = state.params["conv0"]
    assert set(conv) == {"kernel", "act_alpha"} and conv["act_alpha"].shape == (3,)
    assert not np.allclose(conv["act_alpha"], 4.0)  # alpha learned (the quantizer optimizer group)
    assert int(state.step) == steps


def test_the_new_method_trains_and_evaluates_through_the_cli(registered, tmp_path, capsys):
    workdir = tmp_path / "pact"
    assert (
        cli.main(
            [
                "train",
                "--workdir",
                str(workdir),
                "--config.method=pact",
                "--config.bits=(2, 4)",
                "--config.pact.alpha_init=3.0",
                "--config.epochs=4",
                "--config.widths=(16, 16)",
                "--no-progress",
            ]
        )
        == 0
    )
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["method"] == "pact" and saved["pact"] == {"alpha_init": 3.0}
    accuracy = json.loads((workdir / "results.json").read_text())["accuracy"]
    assert set(accuracy) == {"2", "4"} and min(accuracy.values()) > 0.25  # it learns (chance: 0.10)
    capsys.readouterr()
    assert cli.main(["eval", "--workdir", str(workdir)]) == 0
    assert "| pact small_cnn |" in capsys.readouterr().out

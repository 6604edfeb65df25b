"""Post-training quantization of a user's Linen model in one call (`quantize`), and its result
saved with orbax (integer codes, per-channel scales, input steps) and loaded back (`load`).

The result takes what `quantize` was calibrated on (`jaxquant.data.InputContract.of_inputs`: the
per-example shape and dtype kind of those images; a batch, a batch without a one-channel axis, or
one image), and `predict` applies the user's ``preprocess`` to it as calibration did; the contract
is saved in ``meta.json``, and a wrong shape or dtype is a one-line `jaxquant.InputError`."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxquant.configs.ptq import ptq_config
from jaxquant.data.contract import InputContract
from jaxquant.errors import CheckpointError, ConfigError
from jaxquant.interception.linen import mode_kwargs
from jaxquant.ptq.calibration import CalibrationData, sample_rows
from jaxquant.ptq.capture import ActivationQuant, Network, Quantizer, act_arrays, find_layers
from jaxquant.ptq.fit import QuantizedModel, quantize_model
from jaxquant.ptq.methods import get_ptq_method


def linen_network(model: nn.Module, train_kwarg: str | None = "train", preprocess=None) -> Network:
    """A user's Linen model as a PTQ `Network`: ``train_kwarg`` names its mode keyword
    (`jaxquant.interception.linen.mode_kwargs`); ``preprocess(images, train, key)`` makes its
    inputs."""

    def apply(variables, x, train):
        if not train:
            return model.apply(variables, x, **mode_kwargs(train_kwarg, False))
        logits, updates = model.apply(
            variables, x, **mode_kwargs(train_kwarg, True), mutable=["batch_stats"]
        )
        return logits, updates.get("batch_stats", variables.get("batch_stats", {}))

    return Network(apply, preprocess)


@dataclasses.dataclass(repr=False)
class PTQResult:
    """A quantized model: ``variables`` (kernels ``alpha * codes``, re-estimated BatchNorm),
    ``weights`` (per layer ``bits``, integer ``codes`` [out, fan-in] and ``alpha`` [out]),
    ``activations`` (each layer's input step). ``predict(x)`` runs it, inputs quantized, on
    images like those it was calibrated on (``input_contract``: their shape and dtype kind; the
    ``preprocess`` given to `quantize` is applied to them); ``input_shape`` is the model input's
    shape."""

    quantized: QuantizedModel
    network: Network
    quantizer: Quantizer
    input_shape: tuple[int, ...]
    input_contract: InputContract | None = None

    def __repr__(self) -> str:
        q = self.quantized
        contract = "" if self.input_contract is None else f"; takes {self.input_contract}"
        return (
            f"PTQResult({q.method} W{q.weight_bits}A{q.act_bits}, {len(q.weights)} layers"
            f"{contract})"
        )

    @property
    def variables(self) -> dict:
        return self.quantized.variables

    @property
    def weights(self) -> dict:
        return self.quantized.weights

    @property
    def activations(self) -> dict[str, ActivationQuant]:
        return self.quantized.activations

    def predict(self, x) -> jax.Array:
        """Logits of ``x``: images as `quantize` was given (checked against ``input_contract``,
        then through the ``preprocess``, if any, in evaluation mode)."""
        if self.input_contract is not None:
            x = self.input_contract.prepare(x)
        x = self.network.inputs(x, False)
        acts = act_arrays(self.quantizer.layers, self.activations)
        return self.quantizer.predict(self.variables, jnp.asarray(x), acts)

    def save(self, path: str | pathlib.Path) -> pathlib.Path:
        """An orbax checkpoint at ``path`` (a new directory) of the codes, scales, input steps
        and variables, plus ``meta.json`` (method, bit-widths, input shape and contract)."""
        import orbax.checkpoint as ocp

        path = pathlib.Path(path).resolve()
        if path.exists():
            raise CheckpointError(f"{path} exists; choose a new directory")
        q = self.quantized
        tree = {
            "variables": jax.tree_util.tree_map(np.asarray, q.variables),
            "weights": {
                n: {"codes": w["codes"], "alpha": w["alpha"]} for n, w in q.weights.items()
            },
            "act_steps": {n: np.float32(a.step) for n, a in q.activations.items()},
        }
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(path / "state", tree)
        checkpointer.wait_until_finished()  # orbax writes in the background
        checkpointer.close()
        meta = {
            "method": q.method,
            "weight_bits": q.weight_bits,
            "act_bits": q.act_bits,
            "input_shape": list(self.input_shape),
            "preprocess": self.network.preprocess is not None,
            "weight_layer_bits": {n: int(w["bits"]) for n, w in q.weights.items()},
            "activations": {
                n: {"bits": a.bits, "signed": a.signed} for n, a in q.activations.items()
            },
        }
        if self.input_contract is not None:
            meta["input_contract"] = self.input_contract.to_json()
        (path / "meta.json").write_text(json.dumps(meta, indent=1))
        return path


def _linen(model, variables, train_kwarg):
    """An NNX model as a Linen one (`nnx_bridge`), with its variables; a Linen model as given."""
    from flax import nnx

    if not isinstance(model, nnx.Module):
        if variables is None:
            raise ConfigError("pass the trained variables of a Linen model")
        return model, variables, train_kwarg
    from jaxquant.ptq.nnx_bridge import nnx_as_linen

    linen, nnx_variables = nnx_as_linen(model)
    return linen, nnx_variables if variables is None else variables, "train"


def _config(overrides: dict) -> ml_collections.ConfigDict:
    config = ptq_config()
    for key, value in overrides.items():
        if key not in config:
            raise ConfigError(f"unknown PTQ setting {key!r}; known: {', '.join(sorted(config))}")
        config[key] = value
    return config


def quantize(
    model: nn.Module,
    variables: dict,
    images,
    method: str = "bitsplit",
    weight_bits: int = 4,
    act_bits: int = 8,
    train_kwarg: str | None = "train",
    preprocess=None,
    **settings,
) -> PTQResult:
    """Quantize a trained full-precision Linen ``model`` with ``variables`` (or an NNX model,
    ``variables=None``: its own state) by ``method``
    (``bitsplit``, ``bitsplit_ecaq`` or ``rtn``) at ``W weight_bits A act_bits``, calibrated
    on training ``images`` (model inputs, or raw images with ``preprocess(images, train, key)``;
    ``calibration_images`` of them are drawn). ``settings`` override the keys of
    `jaxquant.configs.ptq.ptq_config` (``epochs``, ``first_last_weight_bits``, ...).

    The result's ``predict`` takes images like ``images`` (their per-example shape and integer or
    float dtype: ``result.input_contract``) and applies ``preprocess`` (evaluation mode) to them.
    """
    model, variables, train_kwarg = _linen(model, variables, train_kwarg)
    get_ptq_method(method)
    config = _config(settings)
    network = linen_network(model, train_kwarg, preprocess)
    images = np.asarray(images)
    contract = InputContract.of_inputs(images, preprocess is not None)
    config.calibration_images = min(int(config.calibration_images), len(images))
    data = CalibrationData.from_arrays(network, images, config, int(config.seed))
    layers = find_layers(network, variables, data.calibration[:2])
    quantizer = Quantizer(network, layers)
    rows, samples = sample_rows(
        np.random.default_rng(int(config.seed)),
        layers,
        int(data.calibration.shape[0]),
        int(config.calibration_rows),
        int(config.activation_samples),
    )
    none = act_arrays(layers, {})
    fp_rows = quantizer.capture(variables, data.calibration, none, rows, samples, train=False)
    quantized = quantize_model(
        quantizer, variables, data, fp_rows, method, weight_bits, act_bits, config, rows, samples
    )
    return PTQResult(quantized, network, quantizer, tuple(data.calibration.shape[1:]), contract)


def load(
    path: str | pathlib.Path, model, train_kwarg: str | None = "train", preprocess=None
) -> PTQResult:
    """The `PTQResult` saved at ``path`` for ``model``: the same Linen module definition, or
    an instance of the same NNX class (its conv, dense and BatchNorm values come from the
    file; other parameters, if any, from the instance). A result calibrated through a
    ``preprocess`` needs the same ``preprocess`` here; ``predict`` takes what the saved input
    contract says (a result saved before contracts: the saved input shape, any dtype)."""
    import orbax.checkpoint as ocp

    path = pathlib.Path(path).resolve()
    if not (path / "meta.json").is_file():
        raise CheckpointError(f"{path} is not a saved PTQ result (no meta.json)")
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("preprocess") and preprocess is None:
        raise ConfigError(
            f"{path} was calibrated on raw images through a preprocess; pass the same "
            "preprocess= to ptq.load"
        )
    if "input_contract" in meta:
        contract = InputContract.from_json(meta["input_contract"])
    else:  # saved before contracts: the model input's shape, unless a preprocess makes it
        shape = None if preprocess is not None else tuple(meta["input_shape"])
        contract = InputContract(shape, "any", None, name="PTQ")
    tree = ocp.StandardCheckpointer().restore(path / "state")
    model, _, train_kwarg = _linen(model, tree["variables"], train_kwarg)
    network = linen_network(model, train_kwarg, preprocess)
    sample = jnp.zeros((2, *meta["input_shape"]), jnp.float32)
    layers = find_layers(network, tree["variables"], sample)
    activations = {
        n: ActivationQuant(float(tree["act_steps"][n]), a["bits"], a["signed"])
        for n, a in meta["activations"].items()
    }
    weights = {
        n: {"bits": meta["weight_layer_bits"][n], **{k: np.asarray(v) for k, v in w.items()}}
        for n, w in tree["weights"].items()
    }
    quantized = QuantizedModel(
        meta["method"], meta["weight_bits"], meta["act_bits"], tree["variables"], activations,
        weights, 0.0,
    )  # fmt: skip
    return PTQResult(
        quantized, network, Quantizer(network, layers), tuple(meta["input_shape"]), contract
    )

"""The per-layer fit of each PTQ method (BitSplit, BitSplit + ECAQ, round-to-nearest) over a
whole model."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import jax
import numpy as np

from jaxquant.ptq.calibration import CalibrationData, mse_step, reestimate_batchnorm
from jaxquant.ptq.capture import (
    ActivationQuant,
    Layer,
    Quantizer,
    act_arrays,
    fake_quantize,
    fit_rows,
    get_kernel,
    layer_matrix,
    layer_params,
    matrix_kernel,
    set_kernels,
)
from jaxquant.ptq.methods import get_ptq_method
from jaxquant.quantizers import FP_BITS


@dataclasses.dataclass
class QuantizedModel:
    """A PTQ result: the variables (quantized kernels, re-estimated BN), each layer's input
    quantizer, the codes and scales of every weight, and how long calibration took."""

    method: str
    weight_bits: int
    act_bits: int
    variables: dict
    activations: dict[str, ActivationQuant]
    weights: dict[str, dict]  # layer -> {'bits', 'codes' [M, N] ints, 'alpha' [M]}
    seconds: float
    reconstruction: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    """layer -> (error at the start of ofwa_rr, error at its end), BitSplit only."""


def classifier_name(layers: Sequence[Layer]) -> str | None:
    """The classifier: the last dense layer (None if the model has none)."""
    return next((layer.name for layer in reversed(layers) if layer.kind == "dense"), None)


def reconstructs(layer: Layer, layers: Sequence[Layer], method: str, config) -> bool:
    """Whether ``method`` fits ``layer`` by `ofwa_rr` (BitSplit: every layer but the classifier,
    which the code fits by `ofwa` only, unless ``classifier_reconstruction``)."""
    return get_ptq_method(method).reconstructs and (
        layer.name != classifier_name(layers) or config.classifier_reconstruction
    )


def weight_placement(layers: Sequence[Layer], weight_bits: int, config) -> dict[str, int]:
    """Bits per layer: the first layer and the last dense (the classifier) at
    ``first_last_weight_bits``, every other layer at ``weight_bits``."""
    bits = {layer.name: weight_bits for layer in layers}
    bits[layers[0].name] = config.first_last_weight_bits
    classifier = classifier_name(layers)
    if classifier:
        bits[classifier] = config.first_last_weight_bits
    return bits


def activation_placement(layers: Sequence[Layer], act_bits: int, config) -> dict[str, int]:
    """Bits per quantized layer input: every layer's input at ``act_bits`` except the first
    layer's (the image, unless ``quantize_image_input``) and the classifier's
    (``last_activation_bits``). ``act_bits = 32``: none."""
    if act_bits >= FP_BITS:
        return {}
    bits = {layer.name: act_bits for layer in layers}
    if not config.quantize_image_input:
        bits.pop(layers[0].name)
    classifier = classifier_name(layers)
    if classifier in bits:
        bits[classifier] = config.last_activation_bits
    return bits


def _bias_free_target(y: jax.Array, variables: dict, layer: Layer) -> jax.Array:
    return y - layer_params(variables["params"], layer)["bias"] if layer.has_bias else y


def _input_quantizer(samples: jax.Array, bits: int) -> ActivationQuant:
    values = np.asarray(samples)
    signed = bool(values.min() < 0)
    return ActivationQuant(mse_step(values, bits, signed), bits, signed)


def quantize_model(
    quantizer: Quantizer,
    variables: dict,
    data: CalibrationData,
    fp_rows: dict,
    method: str,
    weight_bits: int,
    act_bits: int,
    config,
    rows: dict,
    samples: dict,
    progress: Callable[[str], None] | None = None,
) -> QuantizedModel:
    """Quantize the FP ``variables`` with ``method`` at ``W weight_bits A act_bits``.
    ``fp_rows`` is the FP network's `Quantizer.capture` on the calibration batch."""
    fitter = get_ptq_method(method)
    start = time.perf_counter()
    layers = quantizer.layers
    w_bits = weight_placement(layers, weight_bits, config)
    a_bits = activation_placement(layers, act_bits, config)
    ecaq = fitter.error_compensated
    kernels, weights, reconstruction, act = {}, {}, {}, {}
    say = progress or (lambda _: None)
    if ecaq:
        # The FP targets from the same training-mode forward the quantized inputs come from, so
        # the two differ only by the quantization before the layer.
        fp_rows = quantizer.capture(
            variables, data.calibration, act_arrays(layers, {}), rows, samples, train=True
        )
    current = variables  # ECAQ: the network with every layer before this one quantized
    for layer in layers:
        x_rows = fp_rows[layer.name]["x"]
        if ecaq and (layer.name in a_bits or layer is not layers[0]):
            captured = quantizer.capture(
                current, data.calibration, act_arrays(layers, act), rows, samples, train=True
            )[layer.name]
            x_rows = captured["x"]
            if layer.name in a_bits:
                act[layer.name] = _input_quantizer(captured["samples"], a_bits[layer.name])
                lo, hi = act[layer.name].bounds
                x_rows = fake_quantize(x_rows, act[layer.name].step, lo, hi)
        target = _bias_free_target(fp_rows[layer.name]["y"], variables, layer)
        w = layer_matrix(get_kernel(variables["params"], layer), layer)
        fitted, errors = fitter.fit(
            w,
            w_bits[layer.name],
            (fit_rows(x_rows, layer), target)
            if reconstructs(layer, layers, method, config)
            else None,
            config,
        )
        weights[layer.name] = {"bits": w_bits[layer.name], **fitted}
        kernels[layer.name] = matrix_kernel(fitted["alpha"][:, None] * fitted["codes"], layer)
        if ecaq:
            current = set_kernels(current, {layer.name: kernels[layer.name]}, layers)
        if errors:
            reconstruction[layer.name] = errors
        say(layer.name)
    if ecaq:
        quantized = reestimate_batchnorm(quantizer, current, data, act_arrays(layers, act))
    else:
        quantized = set_kernels(variables, kernels, layers)
        quantized = reestimate_batchnorm(quantizer, quantized, data, act_arrays(layers, {}))
        if a_bits:
            captured = quantizer.capture(
                quantized, data.calibration, act_arrays(layers, {}), rows, samples, train=False
            )
            act = {
                name: _input_quantizer(captured[name]["samples"], bits)
                for name, bits in a_bits.items()
            }
            quantized = reestimate_batchnorm(quantizer, quantized, data, act_arrays(layers, act))
    jax.block_until_ready(quantized)
    weights = {
        name: {
            "bits": int(v["bits"]),
            "codes": np.asarray(v["codes"]).astype(np.int32),
            "alpha": np.asarray(v["alpha"], np.float32),
        }
        for name, v in weights.items()
    }
    return QuantizedModel(
        method,
        weight_bits,
        act_bits,
        quantized,
        act,
        weights,
        time.perf_counter() - start,
        reconstruction,
    )

"""PTQ of depthwise convs: jaxquant's MobileNetV2 (3x3 depthwise convs, ``feature_group_count``
= channels) through `jaxquant.ptq.quantize`, its depthwise layers fitted per channel by
`bitsplit.ofwa_rr_dw` or round-to-nearest; other grouped convs are refused in one line."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxquant import ptq
from jaxquant.configs.base import base_config
from jaxquant.errors import ConfigError
from jaxquant.methods import bitsplit, build_model, get_method


class Classifier(nn.Module):
    """A jaxquant model (``model(x, precision, train=...)``) at its FP precision, as a Linen
    model ``model(x, train=...)`` for `ptq.quantize`."""

    net: nn.Module

    def __call__(self, x, train: bool = False):
        return self.net(x, 0, train=train)


FAST = dict(
    calibration_images=16,
    calibration_rows=300,
    activation_samples=4000,
    epochs=4,
    ofwa_epochs=4,
    bn_batches=0,  # keep the FP BatchNorm statistics: the logits then differ by quantization only
)


@pytest.fixture(scope="module")
def mobilenet():
    """An FP MobileNetV2 at width 0.25 built as `jaxquant.methods.build_model` builds it, with
    random weights and BatchNorm statistics settled on the random 32x32 images (so the
    activations neither vanish nor blow up through the seventeen blocks)."""
    config = base_config()
    config.model, config.width, config.bits, config.method = "mobilenet_v2", 0.25, (32,), "lsq"
    model = Classifier(build_model(config, 10, get_method("lsq").quant_spec(config)))
    images = np.random.default_rng(0).normal(size=(24, 32, 32, 3)).astype(np.float32)
    variables = jax.jit(model.init)(jax.random.key(0), images[:2])

    @jax.jit
    def settle(variables):
        def body(stats, _):
            _, updates = model.apply(
                {**variables, "batch_stats": stats}, images, train=True, mutable=["batch_stats"]
            )
            return updates["batch_stats"], None

        stats = jax.lax.scan(body, variables["batch_stats"], None, length=60)[0]
        return {**variables, "batch_stats": stats}

    variables = settle(variables)
    logits = np.asarray(jax.jit(model.apply)(variables, images))
    assert np.std(logits) > 1e-2  # a live network, not a collapsed one
    return model, variables, images, logits


def _depthwise(layers):
    return [layer for layer in layers if layer.depthwise]


def test_depthwise_layers_are_found_and_their_rows_reproduce_the_output(mobilenet):
    model, variables, images, _ = mobilenet
    network = ptq.linen_network(model)
    layers = ptq.find_layers(network, variables, jnp.asarray(images[:2]))
    depthwise = _depthwise(layers)
    assert len(depthwise) == 17  # one per inverted-residual block
    quantizer = ptq.Quantizer(network, layers)
    rows, samples = ptq.sample_rows(np.random.default_rng(1), layers, 8, 100, 100)
    captured = quantizer.capture(
        variables, jnp.asarray(images[:8]), ptq.act_arrays(layers, {}), rows, samples, False
    )
    for layer in layers:
        kernel = ptq.get_kernel(variables["params"], layer)
        w = np.asarray(ptq.layer_matrix(kernel, layer))
        np.testing.assert_array_equal(ptq.matrix_kernel(w, layer), kernel)
        x = np.asarray(ptq.fit_rows(captured[layer.name]["x"], layer))
        y = np.asarray(captured[layer.name]["y"])
        if layer.depthwise:
            channels = layer.features
            assert layer.groups == channels and layer.kernel_shape == (3, 3, 1, channels)
            assert w.shape == (channels, 9) and x.shape[1:] == (channels, 9)
            expected = np.einsum("kmn,mn->km", x, w)
        else:
            assert layer.groups == 1
            expected = x @ w.T
        if layer.has_bias:
            expected = expected + np.asarray(ptq.layer_params(variables["params"], layer)["bias"])
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5, err_msg=layer.name)


def _relative_error(logits, reference):
    return float(np.linalg.norm(logits - reference) / np.linalg.norm(reference))


@pytest.mark.parametrize("method", ["bitsplit", "rtn"])
def test_mobilenet_v2_is_quantized_end_to_end_and_stays_close_at_w8a8(mobilenet, method):
    model, variables, images, fp_logits = mobilenet
    result = ptq.quantize(model, variables, images[:16], method, 8, 8, **FAST)
    layers = result.quantizer.layers
    depthwise = _depthwise(layers)
    assert len(depthwise) == 17
    for layer in depthwise:
        fitted = result.weights[layer.name]
        codes, alpha = fitted["codes"], fitted["alpha"]
        assert fitted["bits"] == 8 and codes.shape == (layer.features, 9)
        assert codes.dtype == np.int32 and np.abs(codes).max() <= 127 and np.all(alpha > 0)
        kernel = ptq.get_kernel(result.variables["params"], layer)
        assert kernel.shape == (3, 3, 1, layer.features)
        np.testing.assert_allclose(
            ptq.layer_matrix(kernel, layer), alpha[:, None] * codes, rtol=1e-6, atol=1e-8
        )
        w = ptq.layer_matrix(ptq.get_kernel(variables["params"], layer), layer)
        if method == "rtn":  # per channel, max|w| / 127
            np.testing.assert_array_equal(codes, np.asarray(bitsplit.round_to_nearest(w, 8)[0]))
        else:  # fitted by ofwa_rr_dw, which never increases the channel's output error
            start, end = result.quantized.reconstruction[layer.name]
            assert end <= start * (1 + 1e-5) + 1e-9
    if method == "bitsplit":
        assert set(result.quantized.reconstruction) == {layer.name for layer in layers[:-1]}
    logits = np.asarray(result.predict(images))
    # 8-bit weights and activations everywhere. This random network is sensitive (its error
    # halves per weight bit: 2e-4 at W16A32, 0.05 at W8A32; 0.10-0.11 measured here at W8A8),
    # but a depthwise kernel fitted to the wrong channel or patch order would be off by ~1.
    assert _relative_error(logits, fp_logits) < 0.2
    assert np.mean(np.argmax(logits, 1) == np.argmax(fp_logits, 1)) >= 0.75


def test_depthwise_plain_linen_conv_is_accepted_and_other_groupings_refused():
    def layers_of(conv):
        x = jnp.zeros((1, 6, 6, 8))
        variables = conv.init(jax.random.key(0), x)
        network = ptq.Network(lambda v, x, train: conv.apply(v, x))
        return ptq.find_layers(network, variables, x)

    (layer,) = layers_of(nn.Conv(8, (3, 3), feature_group_count=8, use_bias=False))
    assert layer.depthwise and layer.kernel_shape == (3, 3, 1, 8) and layer.fan_in == 9
    for conv in (
        nn.Conv(8, (3, 3), feature_group_count=4),  # grouped, not depthwise
        nn.Conv(16, (3, 3), feature_group_count=8),  # depthwise with a channel multiplier
    ):
        with pytest.raises(ConfigError, match="ungrouped and depthwise convs only") as error:
            layers_of(conv)
        assert "\n" not in str(error.value)

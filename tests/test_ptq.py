"""The PTQ pipeline on small models: layers found through the interceptor, calibration rows with
``Y == X W^T`` before quantization, placement, activation steps, BN re-estimation, the three
methods, the saved file, and `jaxquant ptq` end to end (with its error paths)."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_user_error

from jaxquant import cli, ptq
from jaxquant.data import dataset_contract
from jaxquant.errors import BitWidthError, CheckpointError, ConfigError
from jaxquant.models import CifarResNet


def tiny_config(**overrides):
    config = ptq.ptq_config()
    config.update(
        dict(
            calibration_images=32,
            calibration_rows=300,
            activation_samples=5000,
            epochs=4,
            ofwa_epochs=5,
            block=16,
            bn_batches=3,
            bn_batch_size=16,
            settings=("W4A8", "W2A4"),
        )
    )
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def resnet():
    """A CIFAR ResNet-8 (stride-2 stages, 1x1 projection shortcuts) on random 8x8 images."""
    model = CifarResNet(depth=8, num_classes=5, bits=(32,))
    images = np.random.default_rng(0).normal(size=(40, 8, 8, 3)).astype(np.float32)
    variables = model.init(jax.random.key(0), images[:2], 0, train=True)
    network = ptq.Network.from_model(model)
    layers = ptq.find_layers(network, variables, jnp.asarray(images[:2]))
    return network, variables, images, layers


def test_find_layers_in_call_order(resnet):
    _, _, _, layers = resnet
    names = [layer.name for layer in layers]
    assert names[0] == "stem" and names[-1] == "classifier"
    assert "stage1_block0_shortcut" in names
    assert [layer.kind for layer in layers].count("dense") == 1
    shortcut = layers[names.index("stage1_block0_shortcut")]
    assert shortcut.kernel_shape == (1, 1, 16, 32) and shortcut.strides == (2, 2)
    assert layers[names.index("stage1_block0_conv0")].output_spatial == (4, 4)


def test_calibration_rows_satisfy_y_equals_x_w_before_quantization(resnet):
    network, variables, images, layers = resnet
    quantizer = ptq.Quantizer(network, layers)
    rows, samples = ptq.sample_rows(np.random.default_rng(1), layers, 40, 200, 100)
    captured = quantizer.capture(
        variables, jnp.asarray(images), ptq.act_arrays(layers, {}), rows, samples, train=False
    )
    for layer in layers:
        x, y = np.asarray(captured[layer.name]["x"]), np.asarray(captured[layer.name]["y"])
        w = np.asarray(ptq.layer_matrix(ptq.get_kernel(variables["params"], layer), layer))
        assert x.shape[1] == layer.fan_in and y.shape[1] == layer.features
        expected = x @ w.T
        if layer.has_bias:
            expected = expected + np.asarray(variables["params"][layer.name]["bias"])
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5, err_msg=layer.name)
    assert len(rows["stem"]) == 200  # 40 x 8 x 8 positions, 200 drawn
    assert len(np.unique(np.asarray(rows["stem"]), axis=0)) == 200


def test_layer_matrix_round_trips(resnet):
    _, variables, _, layers = resnet
    for layer in layers:
        kernel = ptq.get_kernel(variables["params"], layer)
        np.testing.assert_array_equal(
            ptq.matrix_kernel(ptq.layer_matrix(kernel, layer), layer), kernel
        )


def test_placement_keeps_first_and_last_layers_at_eight_bits(resnet):
    _, _, _, layers = resnet
    config = ptq.ptq_config()
    weights = ptq.weight_placement(layers, 3, config)
    assert (
        weights["stem"] == 8 and weights["classifier"] == 8 and weights["stage0_block0_conv0"] == 3
    )
    acts = ptq.activation_placement(layers, 4, config)
    assert "stem" not in acts and acts["classifier"] == 8 and acts["stage2_block0_conv1"] == 4
    assert ptq.activation_placement(layers, 32, config) == {}


def test_batchnorm_reestimation_scan_over_stacked_batches_equals_the_loop(resnet):
    """The stacked batches are the generator's, and one `lax.scan` over them moves the running
    statistics as the Python loop of `bn_update` calls does; the stats actually move."""
    network, variables, images, layers = resnet
    data = ptq.CalibrationData.from_arrays(
        network, images, tiny_config(bn_batches=4, bn_batch_size=8)
    )
    assert data.bn_stack is not None and data.bn_stack.shape == (4, 8, 8, 8, 3)
    np.testing.assert_array_equal(
        np.asarray(data.bn_stack), np.stack([np.asarray(x) for x in data.bn_batches()])
    )
    quantizer = ptq.Quantizer(network, layers)
    act = ptq.act_arrays(layers, {})
    scanned = ptq.reestimate_batchnorm(quantizer, variables, data, act)["batch_stats"]
    looped = ptq.reestimate_batchnorm(
        quantizer, variables, ptq.CalibrationData(data.calibration, data.bn_batches), act
    )["batch_stats"]
    chex_close = lambda a, b: np.testing.assert_allclose(
        np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6
    )  # noqa: E731
    jax.tree_util.tree_map(chex_close, scanned, looped)
    moved = jax.tree_util.tree_map(
        lambda a, b: float(jnp.max(jnp.abs(a - b))), scanned, variables["batch_stats"]
    )
    assert max(jax.tree_util.tree_leaves(moved)) > 1e-3


def test_batchnorm_batches_too_large_to_stack_stream(resnet, monkeypatch):
    network, _, images, _ = resnet
    monkeypatch.setattr(ptq.calibration, "BN_STACK_BYTES", 1000)
    data = ptq.CalibrationData.from_arrays(
        network, images, tiny_config(bn_batches=4, bn_batch_size=8)
    )
    assert data.bn_stack is None and len(list(data.bn_batches())) == 4


def test_mse_step_is_the_fixed_point_and_beats_the_max_scale():
    values = np.random.default_rng(2).exponential(size=20000)
    step = ptq.mse_step(values, 4, signed=False)
    q = np.clip(np.round(values / step), 0, 15)
    np.testing.assert_allclose(step, values @ q / (q @ q), rtol=1e-9)
    mse = lambda s: np.mean((values - s * np.clip(np.round(values / s), 0, 15)) ** 2)  # noqa: E731
    assert mse(step) < mse(values.max() / 15)
    assert ptq.mse_step(np.zeros(10), 4, signed=False) == 1.0


@pytest.mark.parametrize("text,expected", [("W4A8", (4, 8)), ("w2a4", (2, 4)), ("W3A32", (3, 32))])
def test_parse_setting(text, expected):
    assert ptq.parse_setting(text) == expected


@pytest.mark.parametrize(
    "text,error", [("4/8", ConfigError), ("W1A8", BitWidthError), ("W4A1", BitWidthError)]
)
def test_bad_settings_are_refused(text, error):
    with pytest.raises(error):
        ptq.parse_setting(text)


TINY_PTQ = [
    "--config.calibration_images=32",
    "--config.calibration_rows=300",
    "--config.epochs=3",
    "--config.bn_batches=2",
    "--config.bn_batch_size=16",
    "--config.activation_samples=2000",
]


@pytest.fixture(scope="module")
def fp_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fp") / "run"
    assert (
        cli.main(
            [
                "train",
                "--workdir",
                str(workdir),
                "--no-progress",
                "--config.method=lsq",
                "--config.bits=(32,)",
                "--config.epochs=8",
                "--config.widths=(16, 16)",
            ]
        )
        == 0
    )
    return workdir


def test_validate_config_names_what_is_wrong():
    assert ptq.validate_config(ptq.ptq_config())[0] == (4, 8)
    for key, value, match in [
        ("methods", ("gptq",), "unknown PTQ method"),
        ("settings", (), "empty"),
        ("calibration_rows", 0, "at least 1"),
        ("epochs", -1, "0 or more"),
        ("first_last_weight_bits", 1, "2..16"),
    ]:
        config = ptq.ptq_config()
        config[key] = value
        with pytest.raises((ConfigError, BitWidthError), match=match):
            ptq.validate_config(config)
    config = ptq.ptq_config()
    config.learning_rate = 0.1
    with pytest.raises(ConfigError, match="unknown PTQ config key"):
        ptq.validate_config(config)


@pytest.fixture(scope="module")
def digits_cnn(fp_run):
    """The FP SmallCNN of `fp_run`, as the pipeline sees it."""
    _, dataset, network, variables = ptq.fp_network(fp_run)
    return dataset, network, variables


@pytest.mark.parametrize("method", ptq.METHODS)
def test_quantize_model_puts_weights_on_the_grid_and_sets_the_input_quantizers(digits_cnn, method):
    dataset, network, variables = digits_cnn
    config = tiny_config()
    data = ptq.CalibrationData.from_arrays(network, dataset.train_images, config)
    layers = ptq.find_layers(network, variables, data.calibration[:2])
    quantizer = ptq.Quantizer(network, layers)
    rows, samples = ptq.sample_rows(
        np.random.default_rng(0), layers, 32, config.calibration_rows, config.activation_samples
    )
    fp_rows = quantizer.capture(
        variables, data.calibration, ptq.act_arrays(layers, {}), rows, samples, train=False
    )
    model = ptq.quantize_model(
        quantizer, variables, data, fp_rows, method, 3, 6, config, rows, samples
    )
    for layer in layers:
        fitted = model.weights[layer.name]
        qmax = 2 ** (fitted["bits"] - 1) - 1
        assert fitted["bits"] == (8 if layer in (layers[0], layers[-1]) else 3)
        assert np.abs(fitted["codes"]).max() <= qmax
        kernel = ptq.get_kernel(model.variables["params"], layer)
        np.testing.assert_allclose(
            ptq.layer_matrix(kernel, layer),
            fitted["alpha"][:, None] * fitted["codes"],
            rtol=1e-6,
            atol=1e-7,
        )
    assert set(model.activations) == {layer.name for layer in layers[1:]}
    assert model.activations[layers[-1].name].bits == 8
    assert all(not a.signed and a.step > 0 for a in model.activations.values())  # post-ReLU inputs
    changed = jax.tree_util.tree_map(
        lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
        model.variables["batch_stats"],
        variables["batch_stats"],
    )
    assert all(jax.tree_util.tree_leaves(changed))  # BN re-estimated
    if method != "rtn":  # the classifier is fitted by ofwa only, the others by ofwa_rr
        assert set(model.reconstruction) == {layer.name for layer in layers[:-1]}
        assert all(end <= start for start, end in model.reconstruction.values())
    test = (dataset.test_images, dataset.test_labels)
    fp_acc = ptq.accuracy(quantizer, variables, {}, *test)
    assert ptq.accuracy(quantizer, model.variables, model.activations, *test) > fp_acc - 0.15


def test_a_plain_linen_model_with_nn_conv_and_dense_is_quantized():
    class Plain(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.relu(
                nn.BatchNorm(use_running_average=not train)(
                    nn.Conv(6, (3, 3), strides=2, use_bias=False)(x)
                )
            )
            return nn.Dense(4)(x.mean((1, 2)))

    model = Plain()
    images = np.random.default_rng(3).normal(size=(24, 6, 6, 1)).astype(np.float32)
    variables = model.init(jax.random.key(0), images[:2])

    def apply(v, x, train):
        if train:
            out, updates = model.apply(v, x, train=True, mutable=["batch_stats"])
            return out, updates["batch_stats"]
        return model.apply(v, x)

    network = ptq.Network(apply)
    config = tiny_config(calibration_images=24, bn_batches=2, bn_batch_size=8)
    data = ptq.CalibrationData.from_arrays(network, images, config)
    layers = ptq.find_layers(network, variables, data.calibration[:2])
    assert [(layer.name, layer.kind) for layer in layers] == [
        ("Conv_0", "conv"),
        ("Dense_0", "dense"),
    ]
    quantizer = ptq.Quantizer(network, layers)
    rows, samples = ptq.sample_rows(np.random.default_rng(0), layers, 24, 100, 1000)
    fp_rows = quantizer.capture(
        variables, data.calibration, ptq.act_arrays(layers, {}), rows, samples, train=False
    )
    model_q = ptq.quantize_model(
        quantizer, variables, data, fp_rows, "bitsplit", 4, 8, config, rows, samples
    )
    assert set(model_q.activations) == {"Dense_0"}
    logits = quantizer.predict(
        model_q.variables, jnp.asarray(images), ptq.act_arrays(layers, model_q.activations)
    )
    assert logits.shape == (24, 4) and np.all(np.isfinite(np.asarray(logits)))


def test_grouped_convs_are_refused():
    class Grouped(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Conv(4, (3, 3), feature_group_count=2)(x)

    model = Grouped()
    x = jnp.zeros((1, 4, 4, 4))
    variables = model.init(jax.random.key(0), x)
    with pytest.raises(ConfigError, match="ungrouped"):
        ptq.find_layers(ptq.Network(lambda v, x, train: model.apply(v, x)), variables, x)


def test_saved_model_loads_back_and_a_corrupt_file_is_a_clear_error(tmp_path):
    model = ptq.QuantizedModel(
        "bitsplit",
        4,
        8,
        {"params": {"dense": {"kernel": np.ones((2, 3), np.float32)}}},
        {"dense": ptq.ActivationQuant(0.5, 8, False)},
        {"dense": {"bits": 8, "codes": np.ones((3, 2), np.int32), "alpha": np.ones(3, np.float32)}},
        1.5,
    )
    path = ptq.save_quantized(model, tmp_path / "m.msgpack", {"test_accuracy": 0.9})
    variables, activations, meta = ptq.load_quantized(path)
    np.testing.assert_array_equal(variables["params"]["dense"]["kernel"], np.ones((2, 3)))
    assert activations == {"dense": ptq.ActivationQuant(0.5, 8, False)}
    assert meta["method"] == "bitsplit" and meta["test_accuracy"] == 0.9
    (tmp_path / "bad.msgpack").write_bytes(b"not msgpack")
    with pytest.raises(CheckpointError, match="rerun `jaxquant ptq`"):
        ptq.load_quantized(tmp_path / "bad.msgpack")


def test_cli_ptq_writes_the_table_the_models_and_the_plot(fp_run, capsys):
    out = fp_run / "ptq_out"
    code = cli.main(
        [
            "ptq",
            "--workdir",
            str(fp_run),
            "--out",
            str(out),
            "--no-progress",
            *TINY_PTQ,
            "--config.settings=('W4A8', 'W3A32')",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert "| BitSplit + ECAQ (our reading) |" in text and "| W4A8 | W3A32 |" in text
    payload = json.loads((out / "ptq_results.json").read_text())
    assert set(payload["accuracy"]) == {"fp", "rtn", "bitsplit", "bitsplit_ecaq"}
    assert set(payload["accuracy"]["bitsplit"]) == {"W4A8", "W3A32"}
    assert (out / "ptq_accuracy.png").stat().st_size > 0
    variables, activations, meta = ptq.load_quantized(out / "bitsplit_W4A8.msgpack")
    assert meta["weight_bits"] == 4 and activations["classifier"].bits == 8
    assert meta["input_contract"] == dataset_contract("digits").to_json()  # what the model takes
    assert ptq.load_quantized(out / "rtn_W3A32.msgpack")[1] == {}  # A32: FP activations
    assert (fp_run / "checkpoints").is_dir()  # the FP run is untouched


def test_cli_ptq_errors_are_one_line(fp_run, tmp_path, capsys):
    code = cli.main(
        [
            "ptq",
            "--workdir",
            str(fp_run),
            "--out",
            str(tmp_path / "o"),
            "--config.settings=('W4B8',)",
        ]
    )
    assert_user_error(code, capsys.readouterr().err, "W<bits>A<bits>")
    code = cli.main(["ptq", "--workdir", str(fp_run), "--config.methods=('gptq',)"])
    assert_user_error(code, capsys.readouterr().err, "unknown PTQ method")
    quantized_run = tmp_path / "q"
    assert (
        cli.main(
            [
                "train",
                "--workdir",
                str(quantized_run),
                "--no-progress",
                "--config.epochs=1",
                "--config.widths=(8, 8)",
                "--config.bits=(2, 4)",
            ]
        )
        == 0
    )
    capsys.readouterr()
    code = cli.main(["ptq", "--workdir", str(quantized_run)])
    assert_user_error(code, capsys.readouterr().err, "no full-precision model")

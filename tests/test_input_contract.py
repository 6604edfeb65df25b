"""What a deployed model takes (`jaxquant.data.InputContract`, issue 18): a loaded vertical
artefact, a PTQ result and a run each record their input contract, scale the dataset's native
images themselves (raw scikit-learn digits 0..16, uint8 0..255) and refuse a wrong shape, dtype or
value range with one line that names what they take."""

from __future__ import annotations

import json
import pathlib
import re
import struct

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from jaxquant import cli, export, ptq, runs
from jaxquant.data import InputContract, dataset_contract, load_digits, make_preprocess
from jaxquant.errors import ConfigError, InputError, JaxquantError

DIGITS = (
    "images (N, 8, 8, 1) or (N, 8, 8): raw digits values 0..16 (float or int), "
    "or floats already in [0, 1]"
)


def one_line(excinfo, *names):
    """The error is one line and names each of ``names``."""
    message = str(excinfo.value)
    assert "\n" not in message, message
    for name in names:
        assert name in message, message
    return message


@pytest.fixture(scope="module")
def raw_digits():
    """scikit-learn's raw digits (0..16 float64, (N, 8, 8)), labels, and the indices of
    `jaxquant.data.load_digits`'s test split (the same stratified split of the same order)."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    digits = sk_digits()
    _, test = train_test_split(
        np.arange(len(digits.target)), test_size=0.2, random_state=0, stratify=digits.target
    )
    return digits.images, digits.target, test


@pytest.fixture(scope="module")
def artefact(tmp_path_factory):
    """A tiny vertical digits run (as tests/test_export.py trains one) and its artefact."""
    tmp = tmp_path_factory.mktemp("contract")
    workdir = tmp / "w"
    args = ["train", "--config.method=vertical", "--config.bits=(4, 8)", "--config.epochs=8"]
    args += ["--config.widths=(8, 8, 8)", "--config.batch_size=64", "--no-progress"]
    assert cli.main([*args, "--workdir", str(workdir)]) == 0
    path = tmp / "model.vl"
    export.export_vertical(workdir, path, log=lambda _: None)
    return workdir, path


# ----------------------------------------------------------------------------------------------
# The contract on its own.


def test_digits_contract_words_and_file_form():
    contract = dataset_contract("digits")
    assert contract.describe() == DIGITS
    assert contract.image_shape == (8, 8, 1) and contract.mean == (0.3032,)
    assert InputContract.from_json(contract.to_json()) == contract
    assert InputContract.from_json(json.dumps(contract.to_json())) == contract
    assert "normalised inside with mean (0.3032) and std (0.3826)" in str(contract)
    assert dataset_contract("cifar10").describe() == (
        "images (N, 32, 32, 3): uint8 0..255 as cifar10 stores them, or floats already in [0, 1]"
    )
    assert dataset_contract("imagenet2012", image_size=160).image_shape == (160, 160, 3)


def test_raw_digits_in_any_form_become_the_datasets_own_images(raw_digits):
    images, _, test = raw_digits
    dataset = load_digits()
    contract = dataset_contract("digits")
    expected = dataset.test_images  # float32 in [0, 1], (N, 8, 8, 1)
    for raw in (images[test], images[test].astype(np.int64), images[test].astype(np.uint8)):
        assert_array_equal(contract.prepare(raw, normalize=False), expected)
    assert_array_equal(contract.prepare(images[test][..., None], normalize=False), expected)
    assert_array_equal(contract.prepare(expected, normalize=False), expected)  # already scaled
    on_device = contract.prepare(jnp.asarray(images[test]), normalize=False)
    assert isinstance(on_device, jax.Array)
    assert_array_equal(np.asarray(on_device), expected)
    # Normalised, it is the trainer's preprocess of the dataset's images.
    preprocess = make_preprocess(dataset.mean, dataset.std)
    normalised = np.asarray(preprocess(jnp.asarray(expected), False, None))
    assert_array_equal(np.asarray(contract.prepare(images[test])), normalised)
    # One image, with or without its channel axis, is a batch of one.
    assert contract.prepare(images[0]).shape == (1, 8, 8, 1)
    assert contract.prepare(images[0][..., None]).shape == (1, 8, 8, 1)
    # Traced (inside the user's jit): the same numbers, without value checks.
    traced = jax.jit(lambda x: contract.prepare(x))(jnp.asarray(images[test], jnp.float32))
    assert_array_equal(np.asarray(traced), normalised)


def test_uint8_datasets_scale_uint8_and_take_floats_in_unit_range():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    contract = dataset_contract("mnist")
    preprocess = make_preprocess(contract.mean, contract.std)
    expected = np.asarray(preprocess(jnp.asarray(images), False, None))
    assert_array_equal(np.asarray(contract.prepare(images)), expected)
    assert_array_equal(np.asarray(contract.prepare(images[..., 0])), expected)  # (N, 28, 28)
    assert contract.prepare(images, normalize=False).dtype == np.uint8  # the dataset's own form
    assert_array_equal(np.asarray(contract.prepare(images.astype(np.int64))), expected)
    unit = images.astype(np.float32) / 255.0  # (NumPy's division, not XLA's: equal to 1 ulp)
    assert_allclose(np.asarray(contract.prepare(unit)), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(InputError) as e:  # 0..255 in floats: ambiguous, refused
        contract.prepare(images.astype(np.float32))
    one_line(e, "float32 values", "ambiguous", "(N, 28, 28, 1)")
    with pytest.raises(InputError) as e:
        contract.prepare(images.astype(np.int64) + 1)
    one_line(e, "int64 values 1..256", "outside 0..255")
    rgb = dataset_contract("cifar10")
    with pytest.raises(InputError) as e:
        rgb.prepare(rng.integers(0, 256, (2, 32, 32), dtype=np.uint8))  # no channel axis for C=3
    one_line(e, "shape (2, 32, 32) uint8", "(N, 32, 32, 3)")


@pytest.mark.parametrize(
    "bad, got",
    [
        (np.zeros((4, 9, 9)), "shape (4, 9, 9) float64"),
        (np.zeros((4, 8, 8, 3)), "(3 channels, the model takes 1)"),
        (np.zeros((4, 64)), "shape (4, 64)"),
        (np.zeros((4, 8, 8), bool), "bool (not numbers)"),
        (np.array([["0", "16"]]), "<U2 (not numbers)"),
        (np.zeros((4, 8, 8), np.complex64), "complex64 (not numbers)"),
        (np.full((4, 8, 8), 17.0), "values 17..17 (above the raw maximum 16)"),
        (np.full((4, 8, 8), -0.5), "negative: normalised already?"),
        (np.full((4, 8, 8), np.nan), "values with NaN"),
        (np.full((4, 8, 8), 255, np.uint8), "uint8 values 255..255 (outside 0..16)"),
        ([[1.0, 2.0], [3.0]], "a list that is not an array"),
    ],
)
def test_wrong_inputs_are_one_line_errors_naming_the_expected_shape(bad, got):
    with pytest.raises(InputError) as e:
        dataset_contract("digits").prepare(bad)
    message = one_line(e, got, "expected " + DIGITS)
    assert message.startswith("digits model input: got ")
    assert isinstance(e.value, JaxquantError) and isinstance(e.value, ValueError)


# ----------------------------------------------------------------------------------------------
# A loaded vertical artefact.


def test_raw_sklearn_digits_give_the_test_evaluation_accuracy(artefact, raw_digits):
    """The issue's "done when": raw ``load_digits().images`` (0..16, (N, 8, 8)) fed to the loaded
    artefact give exactly the accuracy of the run's own test evaluation (and the same logits as
    the preprocessed test set); before, they gave 49% on a 100% model, silently."""
    workdir, path = artefact
    images, labels, test = raw_digits
    dataset = load_digits()
    accuracy = json.loads((workdir / "results.json").read_text())["accuracy"]
    for k in (4, 8):  # trained bit-widths: the evaluation after training
        model = export.load_vertical(path, k)
        logits = np.asarray(model(images[test]))
        assert_array_equal(logits, np.asarray(model(dataset.test_images)))
        assert np.mean(np.argmax(logits, -1) == labels[test]) == pytest.approx(
            accuracy[str(k)], abs=1e-12
        )
        assert_array_equal(np.asarray(model(images[test].astype(np.int64))), logits)
        assert_array_equal(np.asarray(model(jnp.asarray(images[test]))), logits)
        one = np.asarray(model(images[test][0]))  # one image (a batch of 1: other summation order)
        assert_allclose(one, logits[:1], rtol=1e-5, atol=1e-5)
    assert accuracy["8"] > 0.7  # a model that learned something (the equality is not vacuous)
    # What the model did before: the raw values 0..16 taken as [0, 1] floats and normalised.
    unscaled = np.asarray(model._apply(model.variables, jnp.asarray(images[test][..., None])))
    assert np.mean(np.argmax(unscaled, -1) == labels[test]) < accuracy["8"] - 0.2


def test_the_loaded_model_records_shows_and_enforces_its_contract(artefact):
    workdir, path = artefact
    header, _ = export._read_header(open(path, "rb"), path)
    assert InputContract.from_json(header["input_contract"]) == dataset_contract("digits")
    model = export.load_vertical(path, 4)
    assert model.input_contract == dataset_contract("digits")
    assert DIGITS in repr(model) and "bits=4" in repr(model)
    assert "input_contract" in type(model).__doc__
    assert runs.run_input_contract(workdir) == model.input_contract
    assert runs.run_input_contract(runs.config_from_json(workdir / "config.json")) == (
        model.input_contract
    )
    for bad, got in [
        (np.zeros((3, 9, 9)), "shape (3, 9, 9)"),
        (np.zeros((3, 8, 8, 3), np.float32), "(3 channels, the model takes 1)"),
        (np.zeros((3, 8, 8), bool), "bool"),
        (np.full((3, 8, 8), "x"), "<U1"),
    ]:
        with pytest.raises(InputError) as e:
            model(bad)
        one_line(e, got, "(N, 8, 8, 1)")


def _without_contract(data: bytes) -> bytes:
    """The artefact as a version without ``input_contract`` wrote it (offsets are relative to
    the data after the header, so only the header, its length and its CRC change)."""
    _, version, length = export._PREFIX.unpack(data[: export._PREFIX.size])
    start = export._PREFIX.size
    header = json.loads(data[start : start + length])
    del header["input_contract"]
    new = json.dumps(header).encode()
    return (
        export._PREFIX.pack(export.MAGIC, version, len(new))
        + new
        + struct.pack("<I", export._crc(new))
        + data[start + length + 4 :]
    )


def test_an_artefact_without_a_contract_gets_its_datasets(artefact, raw_digits, tmp_path):
    _, path = artefact
    old = tmp_path / "old.vl"
    old.write_bytes(_without_contract(path.read_bytes()))
    assert "input_contract" not in export._read_header(open(old, "rb"), old)[0]
    model = export.load_vertical(old, 4)
    assert model.input_contract == dataset_contract("digits")
    images = raw_digits[0][:50]
    assert_array_equal(np.asarray(model(images)), np.asarray(export.load_vertical(path, 4)(images)))


def test_the_readme_vertical_example_runs_on_raw_digits(artefact, raw_digits):
    _, path = artefact
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Vertical Layering", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "load_digits().images" in code
    namespace: dict = {}
    exec(code.replace("runs/vl.vl", str(path)), namespace)  # noqa: S102
    assert namespace["logits"].shape == (len(raw_digits[1]), 10)


# ----------------------------------------------------------------------------------------------
# PTQ results.


class TinyCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        return nn.Dense(10)(x.reshape((x.shape[0], -1)))


FAST = dict(calibration_images=32, calibration_rows=200, bn_batches=0, activation_samples=500)


def test_a_ptq_result_takes_what_it_was_calibrated_on_through_the_preprocess(raw_digits, tmp_path):
    images = raw_digits[0][:64]  # raw digits (N, 8, 8) float64; the preprocess makes inputs
    mean, std = dataset_contract("digits").mean, dataset_contract("digits").std

    def preprocess(x, train, key):
        return (x[..., None].astype(jnp.float32) / 16.0 - mean[0]) / std[0]

    model = TinyCNN()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    result = ptq.quantize(
        model, variables, images, "rtn", 4, 8, train_kwarg=None, preprocess=preprocess, **FAST
    )
    assert result.input_contract.image_shape == (8, 8) and result.input_shape == (8, 8, 1)
    assert "raw images for your preprocess" in repr(result)
    logits = np.asarray(result.predict(images))
    acts = ptq.act_arrays(result.quantizer.layers, result.activations)
    inputs = preprocess(jnp.asarray(images), False, None)  # as calibration made model inputs
    direct = result.quantizer.predict(result.variables, inputs, acts)
    assert_array_equal(logits, np.asarray(direct))  # predict applies the preprocess
    one = np.asarray(result.predict(images[0]))  # one image: a batch of one
    assert_allclose(one, logits[:1], rtol=1e-5, atol=1e-5)
    for bad, got in [
        (images[..., None], "shape (64, 8, 8, 1)"),
        (images.astype(np.int64), "int64 inputs where the model was calibrated on float64"),
        (images > 8, "bool"),
    ]:
        with pytest.raises(InputError) as e:
            result.predict(bad)
        one_line(e, got, "inputs (N, 8, 8) float64")

    saved = result.save(tmp_path / "tiny")
    meta = json.loads((saved / "meta.json").read_text())
    assert meta["preprocess"] is True
    assert InputContract.from_json(meta["input_contract"]) == result.input_contract
    loaded = ptq.load(saved, model, train_kwarg=None, preprocess=preprocess)
    assert loaded.input_contract == result.input_contract
    assert_array_equal(np.asarray(loaded.predict(images)), logits)
    with pytest.raises(ConfigError, match="pass the same preprocess= to ptq.load"):
        ptq.load(saved, model, train_kwarg=None)

    # Saved before contracts: the model input's shape is checked, any dtype taken.
    for key in ("input_contract", "preprocess"):
        del meta[key]
    (saved / "meta.json").write_text(json.dumps(meta))
    old = ptq.load(saved, model, train_kwarg=None)
    assert_array_equal(np.asarray(old.predict(np.asarray(inputs))), logits)
    with pytest.raises(InputError) as e:
        old.predict(np.zeros((2, 9, 9)))
    one_line(e, "shape (2, 9, 9)", "inputs (N, 8, 8, 1)")


def test_ptq_calibration_images_must_be_numbers():
    model = TinyCNN()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    with pytest.raises(InputError) as e:
        ptq.quantize(model, variables, np.zeros((8, 8, 8, 1), bool), "rtn", train_kwarg=None)
    one_line(e, "calibration images", "bool")

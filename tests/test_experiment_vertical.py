"""The CIFAR-10 Vertical Layering experiment's evaluation helpers, on a tiny digits LSQ run:
MSB slicing at k = 8 is the model itself (all slicing modes), and the code-usage line is right."""

import importlib.util
import json
import pathlib
import re

import numpy as np
import pytest

from jaxquant import cli
from jaxquant import quantizers as q
from jaxquant.data import load_digits
from jaxquant.methods import vertical
from jaxquant.runs import load_run

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def experiment():
    spec = importlib.util.spec_from_file_location(
        "vertical_cifar10", ROOT / "experiments" / "vertical_cifar10.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lsq8(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lsq8")
    assert (
        cli.main(
            [
                "train",
                "--config.method=lsq",
                "--config.bits=8",
                "--config.epochs=2",
                "--config.widths=(8, 8, 8)",
                "--config.batch_size=64",
                "--workdir",
                str(workdir),
                "--no-progress",
            ]
        )
        == 0
    )
    return workdir


def test_slicing_at_the_source_bit_width_is_the_model(experiment, lsq8):
    trained = json.loads((lsq8 / "results.json").read_text())["accuracy"]["8"]
    dataset = load_digits()
    run = load_run(lsq8, dataset)
    floor = experiment.msb_sliced_accuracy(run, dataset, rounded=False)
    rounded = experiment.msb_sliced_accuracy(run, dataset, rounded=True)
    activations = experiment.msb_sliced_accuracy(run, dataset, rounded=False, slice_weights=False)
    assert sorted(floor) == list(range(2, 9))
    assert floor[8] == rounded[8] == activations[8] == pytest.approx(trained, abs=1e-12)
    assert all(0.0 <= a <= 1.0 for a in (*floor.values(), *rounded.values()))


def test_code_usage_counts_the_codes(experiment, lsq8):
    dataset = load_digits()
    run = load_run(lsq8, dataset)
    line = experiment.code_usage(run)
    _, _, _, state, _ = run
    codes = np.concatenate(
        [
            np.abs(
                np.asarray(q.lsq_codes(layer["kernel"], layer["weight_step"][0], 8, signed=True))
            ).ravel()
            for layer in (
                vertical.get_path(state.params, p) for p in vertical.quantized_layers(state.params)
            )
        ]
    )
    mean, share = map(float, re.findall(r"= ([\d.]+) of 128, ([\d.]+)%", line)[0])
    assert mean == pytest.approx(round(codes.mean(), 1))
    assert share == pytest.approx(round(100 * np.mean(codes < 16), 1))

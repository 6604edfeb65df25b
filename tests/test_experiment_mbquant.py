"""The CIFAR-10 MBQuant experiment's claims about its own set-up: the Any-Precision baseline has
exactly as many quantized body weights as MBQuant's four branches, the runs differ only in what
their labels say, and the BitOPs line comes from the model's wiring."""

import importlib.util
import pathlib

import pytest

from jaxquant.config import load_config
from jaxquant.config import override as override_key

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def experiment():
    spec = importlib.util.spec_from_file_location(
        "mbquant_cifar10", ROOT / "experiments" / "mbquant_cifar10.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_baseline_has_the_same_quantized_body_size(experiment):
    mbq = experiment.quantized_body_weights("cifar10_mbquant_cpu.py")
    anyp = experiment.quantized_body_weights("cifar10_anyprecision_cpu.py")
    assert mbq == anyp == 59_904


def test_runs_share_budget_and_bits(experiment):
    configs = {}
    for label, (config_file, overrides) in experiment.RUNS.items():
        config = load_config(ROOT / "experiments" / "configs" / config_file)
        for override in overrides:
            key, value = override[len("--config.") :].split("=")
            override_key(config, key, value)
        configs[label] = config
    assert {c.epochs for c in configs.values()} == {2} and {
        c.batch_size for c in configs.values()
    } == {128}
    assert {tuple(c.bits) for c in configs.values()} == {tuple(range(2, 9))}
    labels = list(configs)
    assert (
        configs[labels[0]].mbquant.selection == "amortised"
        and configs[labels[0]].distillation == "largest"
    )
    assert (
        configs[labels[1]].mbquant.selection == "naive"
        and configs[labels[1]].distillation == "largest"
    )
    assert (
        configs[labels[2]].mbquant.selection == "amortised"
        and configs[labels[2]].distillation == "none"
    )
    assert configs[labels[3]].method == "anyprecision"


def test_bitops_line_covers_every_bit_width(experiment):
    lines = experiment.bitops_lines("cifar10_mbquant_cpu.py")
    assert [line.split("-bit")[0] for line in lines] == [str(b) for b in range(2, 9)]
    # even b: floor(b/2) full 2-bit branches cost exactly b*b
    assert all("(1.000 x b*b)" in line for line in lines[::2])

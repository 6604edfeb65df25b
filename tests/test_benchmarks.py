"""Tests of `benchmarks/step_speed.py` on tiny configurations (the real runs take minutes)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_AP = ["--batch", "2", "--steps", "1", "--model", "small_cnn", "--ap-bits", "1,32"]


@pytest.fixture(scope="module")
def step_speed():
    spec = importlib.util.spec_from_file_location(
        "step_speed", ROOT / "benchmarks" / "step_speed.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("step_speed", module)
    spec.loader.exec_module(module)
    return module


def _table_rows(text: str) -> dict[str, list[str]]:
    return {
        line.split()[0]: line.split()[1:]
        for line in text.splitlines()
        if line and not line.startswith(("#", " "))
    }


def test_anyprecision_variants_are_the_experiment_config(step_speed):
    """ap-* build exactly the model of experiments/configs/cifar10_anyprecision_resnet20.py."""
    from jaxquant.layers import Lowering
    from jaxquant.methods import anyprecision, build_model, optimizer_config, resolve_distillation

    config_spec = importlib.util.spec_from_file_location(
        "ap_config", ROOT / "experiments" / "configs" / "cifar10_anyprecision_resnet20.py"
    )
    config_module = importlib.util.module_from_spec(config_spec)
    config_spec.loader.exec_module(config_module)
    config = config_module.get_config()
    expected = build_model(config, 10, anyprecision.quant_spec(config))
    args = step_speed.parse_args([])
    trainer = step_speed.make_trainer(
        tuple(int(b) for b in args.ap_bits.split(",")),
        precision_mode="unroll",
        spec=step_speed.ANYPRECISION_SPEC,
        distillation="recursive",
        conv_batching="unroll",
        width=args.ap_width,
        depth=args.depth,
        preactivation=True,
        optimizer=step_speed.ANYPRECISION_OPTIMIZER,
    )
    # The benchmark names conv_batching='unroll' (an older package has no 'auto'; on CPU 'auto' is
    # 'unroll').
    assert trainer.model == expected and trainer.lowering == Lowering("unroll", "auto")
    assert trainer.bits == tuple(config.bits) and trainer.distillation == resolve_distillation(
        config
    )
    opt = optimizer_config(config)
    for field in ("optimizer", "learning_rate", "weight_decay"):
        assert getattr(step_speed.ANYPRECISION_OPTIMIZER, field) == getattr(opt, field)


def test_step_speed_prints_the_anyprecision_variants(step_speed, capsys):
    results = step_speed.main(TINY_AP + ["--only", "ap-vmap,ap-unroll"])
    out = capsys.readouterr().out
    rows = _table_rows(out)
    assert set(results) == {"ap-vmap", "ap-unroll"} and {
        "ap-vmap",
        "ap-unroll",
        "ap-unroll/ap-vmap",
    } <= set(rows)
    assert float(rows["ap-vmap"][0]) > 0 and "Any-Precision" in out and "bits (1, 32)" in out
    assert f"jaxquant imported from {ROOT / 'jaxquant'}" in out


def test_against_prints_base_new_and_speedup(step_speed, capsys):
    """--against with this very tree as the base: two fresh processes (2 x ~10 s here)."""
    table = step_speed.main(
        TINY_AP + ["--only", "ap-unroll", "--against", str(ROOT), "--repeats", "1"]
    )
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("variant"))
    assert header.split() == ["variant", "base", "ms/step", "new", "ms/step", "new/base", "speedup"]
    row = _table_rows(out)["ap-unroll"]
    assert len(row) == 4 and row[3].endswith("x") and float(row[3][:-1]) > 0
    assert set(table) == {"ap-unroll"}
    assert (
        out.count(f"jaxquant: {ROOT / 'jaxquant' / '__init__.py'}") == 2
    )  # each run says what it imported


def test_against_rejects_a_directory_without_jaxquant(step_speed, tmp_path):
    with pytest.raises(SystemExit, match="no jaxquant"):
        step_speed.main(TINY_AP + ["--only", "ap-unroll", "--against", str(tmp_path)])


def test_mbq_conv_floor_records_one_conv_per_selected_branch(step_speed, capsys):
    """The MBQuant floor times the convs the unrolled step's forward runs: at bits (2, 4) one
    branch at 2 bits and two at 4 per body conv, plus the FP stem once."""
    import jax.numpy as jnp

    trainer = step_speed.make_trainer((2, 4), None, "unroll", multibranch=True, model="small_cnn")
    images = jnp.zeros((2, 28, 28, 1))
    convs = step_speed.unrolled_convs(trainer, images)
    body = len(trainer.model.widths) - 1
    assert len(convs) == 1 + body * (1 + 2) and convs[0][-1] and not any(c[-1] for c in convs[1:])
    results = step_speed.main(
        [
            "--batch",
            "2",
            "--steps",
            "1",
            "--model",
            "small_cnn",
            "--bits",
            "2,4",
            "--only",
            "mbq-unroll,mbq-conv-floor",
        ]
    )
    assert (
        set(results) == {"mbq-unroll", "mbq-conv-floor"}
        and "mbq-conv-floor/mbq-unroll" in capsys.readouterr().out
    )

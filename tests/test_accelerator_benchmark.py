"""benchmarks/accelerator.py, the prepared GPU call: its --smoke run on CPU writes a complete table,
its row plan and peak table are right, and a dry run lowers the full configuration's rows."""

import importlib.util
import json
import math
import pathlib
import sys

import pytest

BENCHMARK = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "accelerator.py"


@pytest.fixture(scope="module")
def accelerator():
    spec = importlib.util.spec_from_file_location("accelerator_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while they are built
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def rows_by_key(path):
    data = json.loads(path.read_text())
    return data, {(r["workload"], r["variant"], r["dtype"]): r for r in data["rows"]}


def test_smoke_writes_every_variant_and_dtype(accelerator, tmp_path):
    out = tmp_path / "smoke.json"
    returned = accelerator.main(["--smoke", "--out", str(out)])
    data, rows = rows_by_key(out)
    assert data["header"]["mode"] == "smoke"
    assert data["header"]["compute_dtype_supported"] is True
    assert len(returned) == len(data["rows"]) == len(accelerator.VARIANTS) * len(accelerator.DTYPES)
    for variant in accelerator.VARIANTS:
        for dtype in accelerator.DTYPES:
            row = rows[("smoke-cifar", variant, dtype)]
            assert row["status"] == "ok", row
            assert math.isfinite(row["ms_per_step"]) and row["ms_per_step"] > 0, row
            assert row["images_per_s"] > 0 and row["flops"] > 0 and math.isfinite(row["loss"]), row
            assert row["compile_s"] > 0
    assert (
        rows[("smoke-cifar", "sequential-P", "float32")]["programs"] == 2
    )  # bits (2, 8): two programs
    assert rows[("smoke-cifar", "vmap-P", "bfloat16")]["precision_mode"] == "vmap"
    assert rows[("smoke-cifar", "mbq-unroll", "float32")]["precision_mode"] == "unroll"


def test_native_conv_batching_compiles_the_vmapped_steps(accelerator, tmp_path):
    """The GPU's path (one grouped conv for all P under vmap) in bf16, on CPU."""
    out = tmp_path / "native.json"
    accelerator.main(
        [
            "--smoke",
            "--only",
            "vmap-P,mbq-vmap",
            "--dtypes",
            "bfloat16",
            "--conv-batching",
            "native",
            "--out",
            str(out),
        ]
    )
    data, rows = rows_by_key(out)
    assert data["header"]["conv_batching"] == "native"
    for variant in ("vmap-P", "mbq-vmap"):
        row = rows[("smoke-cifar", variant, "bfloat16")]
        assert row["status"] == "ok" and row["ms_per_step"] > 0 and row["flops"] > 0, row


def test_dry_run_lowers_full_rows_and_skips_anyprecision_on_imagenet(accelerator, tmp_path):
    out = tmp_path / "dry.json"
    accelerator.main(
        [
            "--dry-run",
            "--workloads",
            "cifar-b128,imagenet-b256",
            "--only",
            "fp,anyprecision",
            "--dtypes",
            "bfloat16",
            "--out",
            str(out),
        ]
    )
    _, rows = rows_by_key(out)
    assert set(rows) == {
        ("cifar-b128", "fp", "bfloat16"),
        ("cifar-b128", "anyprecision", "bfloat16"),
        ("imagenet-b256", "fp", "bfloat16"),
        ("imagenet-b256", "anyprecision", "bfloat16"),
    }
    skipped = rows[("imagenet-b256", "anyprecision", "bfloat16")]
    assert skipped["status"] == "skipped" and "CIFAR" in skipped["reason"]
    for key in (
        ("cifar-b128", "fp", "bfloat16"),
        ("cifar-b128", "anyprecision", "bfloat16"),
        ("imagenet-b256", "fp", "bfloat16"),
    ):
        assert rows[key]["status"] == "dry-run" and rows[key]["flops"] > 0, rows[key]
    # ResNet-18 at 224 px, batch 256: about 3 x 1.8 GMAC x 2 per image, i.e. 2.8 TFLOP a step.
    assert 2.0e12 < rows[("imagenet-b256", "fp", "bfloat16")]["flops"] < 4.0e12
    assert rows[("cifar-b128", "anyprecision", "bfloat16")]["bits"] == [1, 2, 4, 8, 32]


def test_plan_puts_cifar_b128_first_then_core_variants(accelerator):
    rows = accelerator.plan(accelerator.FULL_WORKLOADS)
    names = [(w.name, v, d) for w, v, d in rows]
    per_workload = len(accelerator.VARIANTS) * len(accelerator.DTYPES)
    assert len(names) == 3 * per_workload == len(set(names))
    assert {w for w, _, _ in names[:per_workload]} == {"cifar-b128"}
    assert names[:2] == [("cifar-b128", "fp", "float32"), ("cifar-b128", "fp", "bfloat16")]
    core = names[
        per_workload : per_workload + 2 * len(accelerator.CORE_VARIANTS) * len(accelerator.DTYPES)
    ]
    assert {v for _, v, _ in core} == set(accelerator.CORE_VARIANTS)


def test_budget_skips_rows_and_says_so(accelerator, tmp_path):
    out = tmp_path / "budget.json"
    accelerator.main(["--smoke", "--budget-s", "0", "--only", "fp,qat-1", "--out", str(out)])
    data, rows = rows_by_key(out)
    assert len(rows) == 4
    assert all(r["status"] == "skipped" and r["reason"].startswith("budget") for r in rows.values())


@pytest.mark.parametrize(
    "kind, name, bf16_tflops, f32_path",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.5, "TF32"),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756.5, "TF32"),
        ("NVIDIA H200", "H200 SXM", 989.5, "TF32"),
        ("NVIDIA A100-SXM4-80GB", "A100", 312.0, "TF32"),
        ("NVIDIA L4", "L4", 121.0, "TF32"),
        ("TPU v4", "TPU v4", 275.0, "bf16"),
        ("TPU v5 lite", "TPU v5e", 197.0, "bf16"),
        ("TPU v5", "TPU v5p", 459.0, "bf16"),
        ("TPU v5p", "TPU v5p", 459.0, "bf16"),
    ],
)
def test_device_peaks(accelerator, kind, name, bf16_tflops, f32_path):
    peaks = accelerator.device_peaks(kind)
    assert peaks["name"] == name
    assert peaks["bfloat16"] == pytest.approx(bf16_tflops * 1e12)
    assert peaks["float32_path"].startswith(f32_path)
    assert 0 < peaks["float32"] <= peaks["bfloat16"]


def test_device_peaks_unknown_and_full_precision(accelerator):
    assert accelerator.device_peaks("cpu") is None
    assert accelerator.device_peaks("NVIDIA L40S") is None  # not the L4
    assert accelerator.device_peaks("NVIDIA H100 80GB HBM3", "highest")["float32"] == pytest.approx(
        67e12
    )

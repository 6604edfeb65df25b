"""The one prepared call for a lent GPU (or TPU): the multi-precision step's absolute speed.

For each workload, dtype and variant it compiles the training step, runs warm-up steps, times
``--steps`` steps (each blocked on) and prints one table, also written as JSON (``--out``;
default ``$OUT/accelerator.json`` when ``OUT`` is set, which the device tool brings back, else
``./accelerator.json``). The JSON is rewritten after every row, so a run cut short keeps what
it measured.

Workloads (random data, made on the device once per shape):

  cifar-b128     CIFAR ResNet-20 (post-activation, x1), batch 128, 32x32x3, 10 classes
  imagenet-b256  ImageNet ResNet-18, batch 256, 224x224x3, 1000 classes
  cifar-b1024    CIFAR ResNet-20, batch 1024

Variants (bits 2/4/6/8; P = 4):

  fp            the full-precision model, one precision
  qat-1         one precision, 8-bit LSQ weights and activations
  vmap-P        LSQ, all P precisions in one step, vmapped; distillation from the largest
  unroll-P      the same, an unrolled loop in one jit
  sequential-P  P single-precision LSQ steps, one program each, run back to back
  mbq-unroll    MBQuant's multi-branch model (four 2-bit branches per body conv), unrolled
  mbq-vmap      the same, vmapped
  anyprecision  Any-Precision's CIFAR recipe: pre-activation ResNet-20 x5, DoReFa, bits
                1/2/4/8/32, recursive distillation, Adam (CIFAR only)

each in float32 and bfloat16 (`MultiPrecisionTrainer.compute_dtype`; parameters stay float32).
Single-precision programs run unrolled (a plain step); the P-precision ones as named; the
anyprecision row in the library's default precision mode for the backend.

Columns: images/s (batch over the median step: a P-precision step pushes the batch through
all P sub-networks), ms/step (median of ``--steps`` after ``--warmup``), compile s (lowering
plus XLA compilation, summed over a variant's programs), peak MiB (XLA's memory analysis of
the compiled program: temporaries + arguments + outputs - aliased; the largest of a
sequential variant's programs), GFLOP (XLA's cost analysis of the compiled step, summed over
programs), TFLOP/s achieved and MFU against the device's dense peak for the row's dtype (see
`PEAK_TFLOPS`; float32 rows against the path JAX's default matmul precision takes: TF32 on
NVIDIA Ampere and later, bf16 passes on TPU). Unknown device: MFU n/a.

The run is time-boxed: a row is not started once ``--budget-s`` seconds have passed (or when
the last time the same variant took would pass it); such rows are listed as skipped. Rows run
most informative first: every variant of cifar-b128 in both dtypes, then fp/vmap-P/unroll-P of
the other workloads, then the rest. An error (out of memory, a compile failure) is recorded
with its first line and the run goes on.

Usage:

  python benchmarks/accelerator.py            # the full run (sized for about 8 minutes on one H100)
  python benchmarks/accelerator.py --smoke    # tiny shapes, CPU, well under a minute
  python benchmarks/accelerator.py --dry-run  # lower every row with the accelerator's conv paths
                                              # (native vmap batching, XLA weight gradients) and
                                              # print XLA's FLOPs; no compile, no timing

XLA's FLOPs count a loop body once: with ``--weight-gradient im2col`` (what ``auto`` is on CPU)
the chunked weight gradients are undercounted, so CPU runs other than the smoke and the dry run
report too few FLOPs. On GPU/TPU ``auto`` is XLA's own conv and the count is whole.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import pathlib
import platform
import re
import statistics
import sys
import time
import traceback
import types

_HERE = pathlib.Path(__file__).resolve().parent
for _path in (_HERE.parent, _HERE):  # the repository (jaxquant) and benchmarks/ (step_speed)
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import step_speed  # noqa: E402

from jaxquant import layers as jq_layers  # noqa: E402
from jaxquant.layers import FULL_PRECISION, QuantSpec  # noqa: E402
from jaxquant.methods import anyprecision as anyprecision_method  # noqa: E402
from jaxquant.methods import mbquant, resolve_precision_mode  # noqa: E402
from jaxquant.models import ResNet, SmallCNN  # noqa: E402
from jaxquant.models.multibranch import MultiBranchCNN, MultiBranchResNet  # noqa: E402
from jaxquant.training import MultiPrecisionTrainer, OptimizerConfig, make_optimizer  # noqa: E402

VARIANTS = (
    "fp",
    "qat-1",
    "vmap-P",
    "unroll-P",
    "sequential-P",
    "mbq-unroll",
    "mbq-vmap",
    "anyprecision",
)
CORE_VARIANTS = ("fp", "vmap-P", "unroll-P")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ANYPRECISION_IMAGENET_SKIP = (
    "Any-Precision is timed on its CIFAR recipe only (pre-activation ResNet-20 x5, "
    "experiments/configs/cifar10_anyprecision_resnet20.py); the repository has no "
    "ImageNet Any-Precision recipe"
)
TINY_WIDTHS = (
    8,
    8,
)  # the smoke's SmallCNN: an FP stem and one quantized conv (compiles in seconds on CPU)
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


# ----------------------------------------------------------------------------------------------
# Peak dense FLOP/s per chip, TFLOP/s, without sparsity (the datasheets print the 2:4-sparse
# tensor-core rates; dense is half of those). "float32": plain FP32 on the CUDA cores; "tf32":
# the tensor cores on float32 operands; "bfloat16": dense BF16 tensor-core / MXU rate.

PEAK_TFLOPS = [
    # (name, device_kind pattern (lower case regex), {path: TFLOP/s})
    # NVIDIA H100 Tensor Core GPU datasheet: H100 SXM FP32 67, TF32 989*, BF16 1,979* (*sparse).
    ("H100 SXM", r"h100(?!.*(pcie|nvl))", {"float32": 67.0, "tf32": 494.5, "bfloat16": 989.5}),
    # NVIDIA H100 Tensor Core GPU datasheet: H100 PCIe FP32 51, TF32 756*, BF16 1,513*.
    ("H100 PCIe", r"h100.*pcie", {"float32": 51.0, "tf32": 378.0, "bfloat16": 756.5}),
    # NVIDIA H100 Tensor Core GPU datasheet: H100 NVL FP32 60, TF32 835*, BF16 1,671*.
    ("H100 NVL", r"h100.*nvl", {"float32": 60.0, "tf32": 417.5, "bfloat16": 835.5}),
    # NVIDIA H200 Tensor Core GPU datasheet: H200 SXM FP32 67, TF32 989*, BF16 1,979*.
    ("H200 SXM", r"h200(?!.*nvl)", {"float32": 67.0, "tf32": 494.5, "bfloat16": 989.5}),
    # NVIDIA H200 Tensor Core GPU datasheet: H200 NVL FP32 60, TF32 835*, BF16 1,671*.
    ("H200 NVL", r"h200.*nvl", {"float32": 60.0, "tf32": 417.5, "bfloat16": 835.5}),
    # NVIDIA A100 Tensor Core GPU datasheet (SXM and PCIe, 40 and 80 GB):
    # FP32 19.5, TF32 156, BF16 312.
    ("A100", r"a100", {"float32": 19.5, "tf32": 156.0, "bfloat16": 312.0}),
    # NVIDIA L4 Tensor Core GPU datasheet: FP32 30.3, TF32 120*, BF16 242*.
    ("L4", r"\bl4\b", {"float32": 30.3, "tf32": 60.0, "bfloat16": 121.0}),
    # Google Cloud TPU documentation, TPU v6e (Trillium): 918 TFLOP/s BF16 per chip.
    ("TPU v6e", r"tpu v6( lite|e)", {"bfloat16": 918.0}),
    # Google Cloud TPU documentation, TPU v5e: 197 TFLOP/s BF16 per chip
    # (device_kind 'TPU v5 lite').
    ("TPU v5e", r"tpu v5( lite|e)", {"bfloat16": 197.0}),
    # Google Cloud TPU documentation, TPU v5p: 459 TFLOP/s BF16 per chip
    # (device_kind 'TPU v5' or 'TPU v5p').
    ("TPU v5p", r"tpu v5(p|$)", {"bfloat16": 459.0}),
    # Google Cloud TPU documentation, TPU v4 system architecture: 275 TFLOP/s BF16 per chip.
    ("TPU v4", r"tpu v4", {"bfloat16": 275.0}),
]


def device_peaks(device_kind: str, matmul_precision: str | None = None) -> dict | None:
    """``{'name', 'float32', 'float32_path', 'bfloat16'}`` (FLOP/s) of a ``device_kind``, or None.

    float32 rows are held against the path XLA takes for float32 convolutions and matmuls under
    ``jax_default_matmul_precision``: by default TF32 tensor cores on NVIDIA (A100 and later)
    and one bf16 pass on TPU; 'highest'/'float32' means plain FP32 (TPU: six bf16 passes)."""
    kind = device_kind.lower().strip()
    precision = str(matmul_precision or "default").lower()
    full = precision in ("highest", "float32", "f32_f32_f32")
    for name, pattern, peaks in PEAK_TFLOPS:
        if not re.search(pattern, kind):
            continue
        bf16 = peaks["bfloat16"] * 1e12
        if name.startswith("TPU"):
            passes = (
                6
                if full
                else 3
                if precision in ("high", "tensorfloat32", "bf16_bf16_f32_x3")
                else 1
            )
            f32, path = bf16 / passes, f"bf16 x{passes} passes (MXU)"
        elif full:
            f32, path = peaks["float32"] * 1e12, "FP32 (CUDA cores)"
        else:
            f32, path = peaks["tf32"] * 1e12, "TF32 (tensor cores)"
        return {"name": name, "float32": f32, "float32_path": path, "bfloat16": bf16}
    return None


# ----------------------------------------------------------------------------------------------
# Workloads and the rows to run.


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    arch: str  # resnet20 (step_speed.make_trainer's) | resnet18 | tiny_cnn (the smoke's)
    batch: int
    image_shape: tuple[int, int, int]
    num_classes: int
    bits: tuple[int, ...] = (2, 4, 6, 8)
    anyprecision_bits: tuple[int, ...] = (1, 2, 4, 8, 32)

    @property
    def title(self) -> str:
        model = {
            "resnet20": "CIFAR ResNet-20",
            "resnet18": "ImageNet ResNet-18",
            "tiny_cnn": "SmallCNN 8/8 (stem + one body conv)",
        }[self.arch]
        return f"{model}, batch {self.batch}, {'x'.join(map(str, self.image_shape))}"


FULL_WORKLOADS = (
    Workload("cifar-b128", "resnet20", 128, (32, 32, 3), 10),
    Workload("imagenet-b256", "resnet18", 256, (224, 224, 3), 1000),
    Workload("cifar-b1024", "resnet20", 1024, (32, 32, 3), 10),
)
SMOKE_WORKLOADS = (
    Workload("smoke-cifar", "tiny_cnn", 4, (8, 8, 3), 10, bits=(2, 8), anyprecision_bits=(1, 32)),
)


def plan(workloads, variants=VARIANTS, dtypes=tuple(DTYPES)) -> list[tuple[Workload, str, str]]:
    """Rows, most informative first: every variant of the first workload (each in every dtype),
    then the core variants (fp, vmap-P, unroll-P) of the others, then the rest of theirs."""
    rows = [(workloads[0], v, d) for v in variants for d in dtypes]
    for core in (True, False):
        rows += [
            (w, v, d)
            for w in workloads[1:]
            for v in variants
            if (v in CORE_VARIANTS) == core
            for d in dtypes
        ]
    return rows


def static_skip(workload: Workload, variant: str, dtype: str) -> str | None:
    """Why a row is not run whatever the time, or None."""
    if variant == "anyprecision" and workload.arch == "resnet18":
        return ANYPRECISION_IMAGENET_SKIP
    if dtype != "float32" and not has_compute_dtype():
        return "n/a (needs compute_dtype)"
    return None


def has_compute_dtype() -> bool:
    return any(f.name == "compute_dtype" for f in dataclasses.fields(MultiPrecisionTrainer))


def default_conv_batching() -> str:
    """``auto`` where `jaxquant.layers` resolves it per backend, else ``native`` off CPU
    (one grouped conv for all P under vmap) and ``unroll`` on CPU."""
    if hasattr(jq_layers, "resolve_conv_batching"):
        return "auto"
    return "unroll" if jax.default_backend() == "cpu" else "native"


# ----------------------------------------------------------------------------------------------
# Trainers.


def _trainer(
    model, bits, distillation, precision_mode, optimizer_config=OptimizerConfig(), **lowering
):
    return MultiPrecisionTrainer(
        model,
        tuple(bits),
        make_optimizer(optimizer_config, 1000, 100),
        distillation=distillation if len(bits) > 1 else "none",
        precision_mode=precision_mode,
        **lowering,
    )


def make_trainers(
    workload: Workload, variant: str, conv_batching: str, weight_gradient: str
) -> list[MultiPrecisionTrainer]:
    """The trainers of one variant (several: one program each, run back to back)."""
    bits, lsq = workload.bits, QuantSpec()
    model_lowering, trainer_lowering = step_speed.lowering_kwargs(conv_batching, weight_gradient)
    if (
        variant == "anyprecision"
    ):  # step_speed's ap-* recipe, in the backend's default precision mode
        ap_bits = workload.anyprecision_bits
        mode = resolve_precision_mode(
            types.SimpleNamespace(precision_mode="auto", method="anyprecision")
        )
        distillation = anyprecision_method.DEFAULT_DISTILLATION
        if workload.arch == "resnet20":
            return [
                step_speed.make_trainer(
                    ap_bits,
                    step_speed.ANYPRECISION_SPEC,
                    mode,
                    distillation,
                    conv_batching,
                    width=5,
                    weight_gradient=weight_gradient,
                    preactivation=True,
                    optimizer=step_speed.ANYPRECISION_OPTIMIZER,
                )
            ]
        if workload.arch != "tiny_cnn":
            raise ValueError(ANYPRECISION_IMAGENET_SKIP)
        model = SmallCNN(
            widths=TINY_WIDTHS,
            stem_pool=True,
            num_classes=workload.num_classes,
            bits=ap_bits,
            spec=step_speed.ANYPRECISION_SPEC,
            **model_lowering,
        )
        return [
            _trainer(
                model,
                ap_bits,
                distillation,
                mode,
                step_speed.ANYPRECISION_OPTIMIZER,
                **trainer_lowering,
            )
        ]
    # (bits, spec, precision mode, multibranch) of each program
    programs = {
        "fp": [((32,), FULL_PRECISION, "unroll", False)],
        "qat-1": [((max(bits),), lsq, "unroll", False)],
        "vmap-P": [(bits, lsq, "vmap", False)],
        "unroll-P": [(bits, lsq, "unroll", False)],
        "sequential-P": [((b,), lsq, "unroll", False) for b in bits],
        "mbq-unroll": [(bits, None, "unroll", True)],
        "mbq-vmap": [(bits, None, "vmap", True)],
    }[variant]
    trainers = []
    for program_bits, spec, mode, multibranch in programs:
        if workload.arch == "resnet20":  # CIFAR ResNet-20: step_speed's trainers, as on CPU
            trainers.append(
                step_speed.make_trainer(
                    program_bits,
                    spec,
                    mode,
                    "largest",
                    conv_batching,
                    weight_gradient=weight_gradient,
                    model="resnet20",
                    multibranch=multibranch,
                )
            )
            continue
        common = dict(num_classes=workload.num_classes, bits=tuple(program_bits), **model_lowering)
        selection = mbquant.branch_selection(program_bits) if multibranch else None
        if workload.arch == "tiny_cnn":
            model = (
                MultiBranchCNN(widths=TINY_WIDTHS, stem_pool=True, selection=selection, **common)
                if multibranch
                else SmallCNN(widths=TINY_WIDTHS, stem_pool=True, spec=spec, **common)
            )
        elif multibranch:
            model = MultiBranchResNet(stage_sizes=(2, 2, 2, 2), selection=selection, **common)
        else:
            model = ResNet(stage_sizes=(2, 2, 2, 2), spec=spec, **common)
        trainers.append(_trainer(model, program_bits, "largest", mode, **trainer_lowering))
    return trainers


# ----------------------------------------------------------------------------------------------
# Measuring one row.


def memory_bytes(compiled) -> tuple[int | None, dict]:
    """Peak device bytes of a compiled program by XLA's memory analysis (None where the backend
    gives none) and the raw fields."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 (some backends raise instead of returning None)
        stats = None
    if stats is None:
        return None, {}
    fields = {
        name: int(getattr(stats, name))
        for name in dir(stats)
        if name.endswith("_in_bytes") and isinstance(getattr(stats, name, None), (int, np.integer))
    }
    peak = fields.get("peak_memory_in_bytes", 0)
    if not peak:
        peak = (
            fields.get("temp_size_in_bytes", 0)
            + fields.get("argument_size_in_bytes", 0)
            + fields.get("output_size_in_bytes", 0)
            - fields.get("alias_size_in_bytes", 0)
        )
    return (int(peak) if peak > 0 else None), fields


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


class Row(dict):
    """One table row (a plain dict, as written to the JSON)."""


def measure(trainers, states, images, labels, steps: int, warmup: int, compile_options) -> dict:
    """Compile each program, warm up, time ``steps`` iterations of running all programs back to
    back (blocked on each iteration); return the row's measurements."""
    key = jax.random.key(0)
    fns, compile_s, flops, peak, fields = [], 0.0, 0.0, None, []
    for trainer, state in zip(trainers, states):
        t0 = time.perf_counter()
        lowered = jax.jit(trainer.train_step, donate_argnums=0).lower(state, images, labels, key)
        compiled = lowered.compile(compile_options) if compile_options else lowered.compile()
        compile_s += time.perf_counter() - t0
        flops += step_speed.xla_cost(compiled)[0]
        program_peak, program_fields = memory_bytes(compiled)
        fields.append(program_fields)
        if program_peak is not None:
            peak = max(peak or 0, program_peak)
        fns.append(compiled)
    states = list(states)
    metrics = None

    def one_iteration():
        nonlocal metrics
        for i, fn in enumerate(fns):
            states[i], metrics = fn(states[i], images, labels, key)
        jax.block_until_ready((metrics["loss"], [s.step for s in states]))

    for _ in range(warmup):
        one_iteration()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        one_iteration()
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    loss = float(metrics["loss"])
    return {
        "seconds": seconds,
        "compile_s": compile_s,
        "flops": flops,
        "peak_bytes": peak,
        "memory_fields": fields,
        "loss": loss,
        "loss_finite": math.isfinite(loss),
    }


def lowered_flops(trainers, states, images, labels) -> float:
    """XLA's FLOPs of the un-optimised programs, from lowering alone (no compile)."""
    key = jax.random.key(0)
    total = 0.0
    for trainer, state in zip(trainers, states):
        cost = (
            jax.jit(trainer.train_step, donate_argnums=0)
            .lower(state, images, labels, key)
            .cost_analysis()
        )
        cost = (cost[0] if cost else {}) if isinstance(cost, (list, tuple)) else (cost or {})
        total += float(cost.get("flops", 0.0))
    return total


# ----------------------------------------------------------------------------------------------
# The table.

COLUMNS = [
    ("workload", 14, "workload"),
    ("variant", 13, "variant"),
    ("dtype", 9, "dtype"),
    ("images/s", 10, "images_per_s"),
    ("ms/step", 9, "ms_per_step"),
    ("compile s", 10, "compile_s"),
    ("peak MiB", 9, "peak_mib"),
    ("GFLOP", 9, "gflop"),
    ("TFLOP/s", 8, "tflops"),
    ("MFU", 7, "mfu"),
]


def format_cell(key: str, value) -> str:
    if value is None:
        return "n/a" if key == "mfu" else "-"
    if key == "mfu":
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        if key in ("gflop", "tflops", "ms_per_step", "compile_s", "peak_mib"):
            return (
                f"{value:.2g}"
                if value < 0.1
                else f"{value:.2f}"
                if value < 10
                else f"{value:.1f}"
                if value < 1000
                else f"{value:.0f}"
            )
        return f"{value:.0f}"
    return str(value)


def format_row(row: dict) -> str:
    cells = []
    for title, width, key in COLUMNS:
        value = row.get(key)
        cells.append(
            f"{format_cell(key, value):<{width}}"
            if key in ("workload", "variant", "dtype")
            else f"{format_cell(key, value):>{width}}"
        )
    line = " ".join(cells)
    if row["status"] not in ("ok", "dry-run"):
        line = " ".join(cells[:3]) + f"  {row['status']}: {row.get('reason', '')}"
    elif row.get("note"):
        line += f"  ({row['note']})"
    return line


def table(rows: list[dict]) -> str:
    head = " ".join(
        f"{title:<{width}}" if key in ("workload", "variant", "dtype") else f"{title:>{width}}"
        for title, width, key in COLUMNS
    )
    return "\n".join([head] + [format_row(r) for r in rows])


def header_info(args, conv_batching: str) -> dict:
    device = jax.devices()[0]
    precision = jax.config.jax_default_matmul_precision
    peaks = device_peaks(device.device_kind, precision)
    resolved = conv_batching
    if conv_batching == "auto" and hasattr(jq_layers, "resolve_conv_batching"):
        try:
            resolved = (
                f"auto ({jq_layers.resolve_conv_batching('auto')} on {jax.default_backend()})"
            )
        except Exception:  # noqa: BLE001 (its signature is the layer module's business)
            resolved = "auto"
    return {
        "device_kind": device.device_kind,
        "backend": jax.default_backend(),
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": _jaxlib_version(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "smoke" if args.smoke else "dry-run" if args.dry_run else "full",
        "steps": args.steps,
        "warmup": args.warmup,
        "budget_s": args.budget_s,
        "conv_batching": resolved,
        "weight_gradient": args.weight_gradient,
        "default_matmul_precision": precision,
        "compute_dtype_supported": has_compute_dtype(),
        "peak": peaks,
        "fast_compile": bool(args.smoke),
    }


def _jaxlib_version():
    try:
        import jaxlib

        return jaxlib.__version__
    except Exception:  # noqa: BLE001
        return None


def write_json(path: pathlib.Path, header: dict, rows: list[dict], elapsed: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(
        json.dumps(
            {"header": header, "rows": rows, "elapsed_s": round(elapsed, 1)}, indent=1, default=str
        )
    )
    os.replace(tmp, path)


def default_out() -> pathlib.Path:
    return (
        pathlib.Path(os.environ["OUT"] if os.environ.get("OUT") else os.getcwd())
        / "accelerator.json"
    )


# ----------------------------------------------------------------------------------------------


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny CIFAR-shaped run (SmallCNN 8/8, 8x8x3, batch 4, bits 2/8, one timed step) "
        "for CPU",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="lower every row and print XLA's FLOPs of the un-optimised step; no compile, "
        "no timing",
    )
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=None,
        help="JSON path (default $OUT/accelerator.json if OUT is set, else ./accelerator.json)",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per row (default 20; smoke 1)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="warm-up steps after compiling (default 2; smoke 1)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=450.0,
        help="start no row after this many seconds (rows left are listed as skipped)",
    )
    parser.add_argument(
        "--workloads", default="", help="comma-separated subset (default: all of the mode)"
    )
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of the variants {', '.join(VARIANTS)}"
    )
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument(
        "--conv-batching",
        default="default",
        choices=["default", "auto", "unroll", "native"],
        help="vmapped convs: default = auto where jaxquant.layers resolves it, else native off CPU "
        "(dry run: native, the accelerator's)",
    )
    parser.add_argument(
        "--weight-gradient",
        default=None,
        choices=["auto", "im2col", "xla"],
        help="conv weight gradients (default auto; smoke and dry run: xla, the accelerator's)",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    args.steps = args.steps if args.steps is not None else 1 if args.smoke else 20
    args.warmup = args.warmup if args.warmup is not None else 1 if args.smoke else 2
    # A dry run estimates the accelerator's programs: XLA's own conv paths (on CPU, ``auto`` would
    # pick im2col weight gradients in a loop, whose body XLA's cost analysis counts once).
    args.weight_gradient = args.weight_gradient or ("xla" if args.smoke or args.dry_run else "auto")
    if args.dry_run and args.conv_batching == "default":
        args.conv_batching = "native"
    workloads = SMOKE_WORKLOADS if args.smoke else FULL_WORKLOADS
    if args.workloads:
        chosen = args.workloads.split(",")
        unknown = sorted(set(chosen) - {w.name for w in workloads})
        if unknown:
            parser.error(f"unknown workloads {unknown}; choose from {[w.name for w in workloads]}")
        workloads = tuple(w for w in workloads if w.name in chosen)
    variants = tuple(v for v in (args.only.split(",") if args.only else VARIANTS) if v)
    if set(variants) - set(VARIANTS):
        parser.error(
            f"unknown variants {sorted(set(variants) - set(VARIANTS))}; choose from {VARIANTS}"
        )
    dtypes = tuple(d for d in args.dtypes.split(",") if d)
    if set(dtypes) - set(DTYPES):
        parser.error(
            f"unknown dtypes {sorted(set(dtypes) - set(DTYPES))}; choose from {tuple(DTYPES)}"
        )
    conv_batching = (
        default_conv_batching() if args.conv_batching == "default" else args.conv_batching
    )
    compile_options = FAST_COMPILE if args.smoke and jax.default_backend() == "cpu" else None
    out = args.out or default_out()

    header = header_info(args, conv_batching)
    peaks = header["peak"]
    print(
        f"# jaxquant accelerator benchmark ({header['mode']}): {header['device_kind']} "
        f"({header['backend']}, {header['device_count']} device(s)), jax {header['jax']}, "
        f"{header['date']}"
    )
    print(
        f"# {args.steps} timed steps after {args.warmup} warm-up, "
        f"conv_batching {header['conv_batching']}, "
        f"weight_gradient {args.weight_gradient}, budget {args.budget_s:.0f} s; peak: "
        + (
            f"{peaks['name']} float32 {peaks['float32'] / 1e12:.0f} TFLOP/s "
            f"({peaks['float32_path']}), "
            f"bfloat16 {peaks['bfloat16'] / 1e12:.0f} TFLOP/s"
            if peaks
            else "unknown device, MFU n/a"
        )
    )
    for w in workloads:
        print(
            f"# {w.name}: {w.title}, {w.num_classes} classes, bits {w.bits} "
            f"(anyprecision {w.anyprecision_bits})"
        )
    print(table([]), flush=True)

    rows: list[dict] = []
    data_cache: dict = {}
    init_cache: dict = {}
    last_duration: dict[str, float] = {}
    for workload, variant, dtype in plan(workloads, variants, dtypes):
        row = Row(
            workload=workload.name,
            variant=variant,
            dtype=dtype,
            batch=workload.batch,
            bits=list(workload.anyprecision_bits if variant == "anyprecision" else workload.bits),
            status="ok",
        )
        elapsed = time.perf_counter() - start
        reason = static_skip(workload, variant, dtype)
        predicted = last_duration.get(variant, 0.0)
        if reason is None and not args.dry_run and elapsed + predicted > args.budget_s:
            reason = f"budget: {elapsed:.0f} s of --budget-s {args.budget_s:.0f} spent" + (
                f" (this variant took {predicted:.0f} s last time)" if predicted else ""
            )
        if reason is not None:
            row.update(status="skipped", reason=reason)
            rows.append(row)
            print(format_row(row), flush=True)
            write_json(out, header, rows, time.perf_counter() - start)
            continue
        row_start = time.perf_counter()
        try:
            shape_key = (workload.batch, workload.image_shape, workload.num_classes)
            if shape_key not in data_cache:
                kx, ky = jax.random.split(jax.random.key(1234))
                data_cache[shape_key] = (
                    jax.random.normal(kx, (workload.batch,) + workload.image_shape, jnp.float32),
                    jax.random.randint(ky, (workload.batch,), 0, workload.num_classes),
                )
            images, labels = data_cache[shape_key]
            trainers = make_trainers(workload, variant, conv_batching, args.weight_gradient)
            trainers = [
                dataclasses.replace(t, compute_dtype=DTYPES[dtype]) if has_compute_dtype() else t
                for t in trainers
            ]
            row["programs"] = len(trainers)
            row["precision_mode"] = trainers[0].precision_mode
            # Parameters are float32 whatever the compute dtype: one init serves both dtypes.
            init_key = (workload.name, variant)
            if init_key not in init_cache:
                init_cache.clear()
                t0 = time.perf_counter()
                if args.dry_run:
                    init_cache[init_key] = [
                        jax.eval_shape(t.init, jax.random.key(1), images) for t in trainers
                    ]
                else:
                    states = []
                    for t in trainers:
                        lowered = jax.jit(t.init).lower(jax.random.key(1), images)
                        init = (
                            lowered.compile(compile_options)
                            if compile_options
                            else lowered.compile()
                        )
                        states.append(init(jax.random.key(1), images))
                    init_cache[init_key] = states
                row["init_s"] = round(time.perf_counter() - t0, 2)
            if args.dry_run:
                flops = lowered_flops(trainers, init_cache[init_key], images, labels)
                row.update(status="dry-run", gflop=flops / 1e9, flops=flops, flops_source="lowered")
                rows.append(row)
                print(format_row(row) + "  (dry run: XLA's FLOPs of the lowered step)", flush=True)
                write_json(out, header, rows, time.perf_counter() - start)
                continue
            states = [
                jax.tree_util.tree_map(jnp.copy, s) for s in init_cache[init_key]
            ]  # the step donates
            result = measure(
                trainers, states, images, labels, args.steps, args.warmup, compile_options
            )
            del states
            seconds, flops = result["seconds"], result["flops"]
            flops_source = "compiled"
            if (
                flops <= 0
            ):  # a backend whose compiled cost analysis counts nothing: the lowered program's
                flops, flops_source = (
                    lowered_flops(trainers, init_cache[init_key], images, labels),
                    "lowered",
                )
            achieved = flops / seconds if seconds > 0 else None
            peak = peaks[dtype] if peaks else None
            row.update(
                images_per_s=workload.batch / seconds,
                ms_per_step=1e3 * seconds,
                compile_s=result["compile_s"],
                peak_mib=None if result["peak_bytes"] is None else result["peak_bytes"] / 2**20,
                peak_bytes=result["peak_bytes"],
                memory_fields=result["memory_fields"],
                flops=flops,
                gflop=flops / 1e9,
                flops_source=flops_source,
                tflops=None if achieved is None else achieved / 1e12,
                mfu=None if (achieved is None or not peak) else achieved / peak,
                peak_flops=peak,
                loss=result["loss"],
            )
            if not result["loss_finite"]:
                row["note"] = "non-finite loss"
        except Exception as error:  # noqa: BLE001 (an OOM or a compile error costs one row, not the run)
            row.update(
                status="error", reason=first_line(error), traceback=traceback.format_exc()[-4000:]
            )
        finally:
            trainers = None
            gc.collect()
            jax.clear_caches()
        row["seconds_total"] = round(time.perf_counter() - row_start, 2)
        last_duration[variant] = time.perf_counter() - row_start
        rows.append(row)
        print(format_row(row), flush=True)
        write_json(out, header, rows, time.perf_counter() - start)

    elapsed = time.perf_counter() - start
    write_json(out, header, rows, elapsed)
    print()
    print(
        f"# {header['device_kind']} ({header['backend']}), jax {header['jax']}, {header['date']}: "
        f"{sum(r['status'] == 'ok' for r in rows)} rows measured, "
        f"{sum(r['status'] == 'skipped' for r in rows)} skipped, "
        f"{sum(r['status'] == 'error' for r in rows)} "
        f"errors, {elapsed:.0f} s; JSON: {out}"
    )
    print(table(rows), flush=True)
    return rows


if __name__ == "__main__":
    main()

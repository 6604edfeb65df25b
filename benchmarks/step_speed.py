r"""Training-step speed of the multi-precision step, all variants measured in one run.

CIFAR ResNet-20 (post-activation, width x1; or ``--model small_cnn``, the Fashion-MNIST
experiments' SmallCNN), LSQ weights and activations, batch 128, bits (2, 4, 6, 8), distillation
from the largest bit-width. Prints the median ms/step after
compilation and the compile seconds for:

  fp          the full-precision model (no quantizers)
  fp-xla-dw   the same with XLA's own conv weight gradients (jaxquant computes them as
              chunked im2col matmuls on CPU, see layers.conv_weight_gradient)
  qat-1       one precision (8 bits) with quantizers
  vmap        all P precisions in one step, vmapped over the precision axis
  unroll      all P precisions in one step, an unrolled loop
  sequential  P separate single-precision steps, one after another

and the ratios vmap/sequential, unroll/sequential, qat-1/fp and fp/fp-xla-dw. Also:

  conv-floor  the convolutions of one P-precision step alone, with the kernels the step uses
              (`layers.conv_forward`, `layers.conv_backward`): for every conv of the model and
              every precision, the forward, the input gradient and the weight gradient, on
              distinct random arrays of the step's shapes; the FP stem, which reads the images
              every precision shares, once (forward and weight gradient). No schedule of the
              same arithmetic with the same kernels can take less, so conv-floor/sequential
              is the best vmap/sequential this machine allows.

MBQuant's
multi-branch model (four 2-bit branches per body conv; `jaxquant.models.multibranch`), with
``--only mbq-vmap,mbq-unroll,mbq-sequential``:

  mbq-vmap        all P precisions vmapped: branch selection by masks, all G branches computed
  mbq-unroll      an unrolled loop: each precision computes only its selected branches
  mbq-sequential  P separate single-precision MBQuant steps (also only the selected branches)
  mbq-conv-floor  the convolutions of one mbq-unroll step alone (every conv its forward runs,
                  one per selected branch, recorded from a trace: forward, input and weight
                  gradient), as conv-floor; mbq-conv-floor/mbq-unroll is the convs' share

Any-Precision DNN's CIFAR-10 recipe (`experiments/configs/cifar10_anyprecision_resnet20.py`:
pre-activation ResNet-20 width x5, DoReFa weights and activations, FP stem, classifier and 1x1
shortcuts, switchable BN, bits 1/2/4/8/32, recursive distillation, Adam 1e-3), with
``--only ap-vmap,ap-unroll`` (``--ap-width``, ``--ap-bits`` and ``--depth`` change it):

  ap-vmap         all P precisions vmapped (a traced bit-width: every quantizer computes both its
                  quantized and its full-precision form and selects)
  ap-unroll       an unrolled loop (a static bit-width: each quantizer computes one form)

Before/after: ``--against BASE_DIR`` (a checkout of another revision, e.g. ``git worktree add
/tmp/base HEAD``) times every chosen variant with the jaxquant package at BASE_DIR ("base") and
with this working tree's ("new"), each run a fresh process whose PYTHONPATH selects the package,
interleaved (base, new, base, new, ... ``--repeats`` times each), and prints base and new
ms/step (the least of each side's runs) and their ratio. The variants use only API both
revisions have, so this script can drive an older package.

Usage:

  python benchmarks/step_speed.py [--steps 5] [--batch 128] [--bits 2,4,6,8] \
      [--conv-batching unroll]
  python benchmarks/step_speed.py --steps 3 --only ap-vmap,ap-unroll --against /tmp/base
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxquant
from jaxquant.layers import FULL_PRECISION, QuantConv, QuantSpec, conv_backward, conv_forward
from jaxquant.methods import mbquant
from jaxquant.models import CifarResNet, SmallCNN
from jaxquant.models.multibranch import MultiBranchCifarResNet, MultiBranchCNN
from jaxquant.training import MultiPrecisionTrainer, OptimizerConfig, make_optimizer

INPUT_SHAPES = {"resnet20": (32, 32, 3), "small_cnn": (28, 28, 1)}
ROOT = pathlib.Path(__file__).resolve().parents[1]
"""The working tree this script belongs to (its ``jaxquant`` is the "new" side of ``--against``)."""
RESULT_PREFIX = "STEP_SPEED_RESULT "

ANYPRECISION_SPEC = QuantSpec(weight="dorefa", activation="dorefa")
ANYPRECISION_OPTIMIZER = OptimizerConfig(optimizer="adam", learning_rate=1e-3, weight_decay=0.0)


def lowering_kwargs(conv_batching: str, weight_gradient: str) -> tuple[dict, dict]:
    """``(model kwargs, trainer kwargs)`` choosing the conv lowering: fields of every model in
    older packages (``--against``), the trainer's `jaxquant.layers.Lowering` since."""
    if any(f.name == "conv_batching" for f in dataclasses.fields(CifarResNet)):
        return dict(conv_batching=conv_batching, weight_gradient=weight_gradient), {}
    from jaxquant.layers import Lowering

    return {}, dict(lowering=Lowering(conv_batching, weight_gradient))


def make_trainer(
    bits,
    spec,
    precision_mode="vmap",
    distillation="largest",
    conv_batching="unroll",
    width=1,
    weight_gradient="auto",
    model="resnet20",
    multibranch=False,
    depth=20,
    preactivation=False,
    optimizer=None,
):
    model_lowering, trainer_lowering = lowering_kwargs(conv_batching, weight_gradient)
    common = dict(bits=tuple(bits), spec=spec, **model_lowering)
    if multibranch:  # MBQuant: the spec is implied (2-bit branches, b-bit inputs)
        del common["spec"]
        common["selection"] = mbquant.branch_selection(bits)
        if model == "small_cnn":
            model = MultiBranchCNN(widths=(16, 32, 64), stem_pool=True, **common)
        else:
            model = MultiBranchCifarResNet(depth=depth, width=width, **common)
    elif model == "small_cnn":  # the Fashion-MNIST experiments' model
        model = SmallCNN(widths=(16, 32, 64), stem_pool=True, **common)
    else:  # preactivation: Any-Precision's resnet20q (FP 1x1 shortcuts; FP stem and classifier)
        model = CifarResNet(
            depth=depth, width=width, preactivation=preactivation, quantize_shortcut=False, **common
        )
    return MultiPrecisionTrainer(
        model,
        tuple(bits),
        make_optimizer(optimizer or OptimizerConfig(), 1000, 100),
        distillation=distillation if len(bits) > 1 else "none",
        precision_mode=precision_mode,
        **trainer_lowering,
    )


def xla_cost(compiled) -> tuple[float, float]:
    """XLA's own estimate of a compiled program's (flops, bytes accessed)."""
    cost = compiled.cost_analysis()
    cost = (cost[0] if cost else {}) if isinstance(cost, (list, tuple)) else (cost or {})
    return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


def time_steps(trainers, images, labels, steps):
    """Compile each trainer's step, then time ``steps`` iterations of running all of them in
    sequence. Returns (median seconds per iteration, compile seconds, XLA's (flops, bytes
    accessed) summed over the steps)."""
    key = jax.random.key(0)
    states, fns = [], []
    compile_seconds, flops, accessed = 0.0, 0.0, 0.0
    for trainer in trainers:
        state = trainer.init(jax.random.key(1), images)
        t0 = time.perf_counter()
        fn = (
            jax.jit(trainer.train_step, donate_argnums=0)
            .lower(state, images, labels, key)
            .compile()
        )
        compile_seconds += time.perf_counter() - t0
        flops, accessed = np.add((flops, accessed), xla_cost(fn))
        state, metrics = fn(state, images, labels, key)  # warm-up
        jax.block_until_ready(metrics)
        states.append(state)
        fns.append(fn)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        for i, fn in enumerate(fns):
            states[i], metrics = fn(states[i], images, labels, key)
        jax.block_until_ready((states, metrics))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), compile_seconds, (flops, accessed)


def conv_layers(model, images):
    """``(input shape, kernel shape, strides, padding, groups, shared)`` of every QuantConv the
    model calls at one precision, from one trace (nothing is computed). ``shared``: the FP stem
    reading the images, which is the same for every precision."""
    layers = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, QuantConv) and context.method_name == "__call__":
            x = args[0]
            groups = module.feature_group_count
            kernel = tuple(module.kernel_size) + (x.shape[-1] // groups, module.features)
            shared = not layers and module.spec == FULL_PRECISION and x.shape == images.shape
            layers.append((x.shape, kernel, tuple(module.strides), module.padding, groups, shared))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(0), images, 0, train=True))
    return layers


def unrolled_convs(trainer, images):
    """``(input shape, kernel shape, strides, padding, groups, shared)`` of every convolution the
    unrolled step's forward runs, precision by precision (each call of `layers.precision_conv`,
    recorded from one abstract trace; nothing is computed): for MBQuant, one per selected
    branch. ``shared``: the FP stem reading the images, kept once (every precision reads the
    same images with the same kernel)."""
    from jaxquant import layers

    lowering = getattr(layers, "conv", layers)  # the conv module (older packages: layers itself)
    record, original = [], lowering.precision_conv

    def recording(x, kernel, strides=(1, 1), padding="SAME", *args, **kwargs):
        groups = kwargs.get("groups", args[2] if len(args) > 2 else 1)
        record.append(
            (
                tuple(x.shape),
                tuple(kernel.shape),
                tuple(strides),
                padding,
                int(groups),
                tuple(x.shape) == tuple(images.shape),
            )
        )
        return original(x, kernel, strides, padding, *args, **kwargs)

    variables = jax.eval_shape(lambda: trainer.model.init(jax.random.key(0), images, 0, train=True))
    lowering.precision_conv = recording
    try:
        for p in range(len(trainer.bits)):
            jax.eval_shape(
                lambda v, p=p: trainer.model.apply(
                    v, images, p, train=True, mutable=["batch_stats"]
                ),
                variables,
            )
    finally:
        lowering.precision_conv = original
    shared = [r for r in record if r[-1]][:1]
    return shared + [r for r in record if not r[-1]]


def time_conv_floor(trainer, images, steps, weight_gradient="auto", convs=None):
    """Median seconds of the convolutions of one multi-precision step (see the module
    docstring), all in one jit, and its compile seconds. ``convs``: the `unrolled_convs` list
    (each entry once); default every QuantConv of the model once per precision."""
    precisions = len(trainer.bits)
    if convs is None:
        convs = [layer + (precisions,) for layer in conv_layers(trainer.model, images)]
    else:
        convs = [conv + (1,) for conv in convs]
    key = jax.random.key(0)
    operands, specs = [], []
    for shape, kernel_shape, strides, padding, groups, shared, repeats in convs:
        out_shape = jax.eval_shape(
            lambda x, k: conv_forward(x, k, strides, padding, groups),
            jax.ShapeDtypeStruct(shape, jnp.float32),
            jax.ShapeDtypeStruct(kernel_shape, jnp.float32),
        ).shape
        for _ in range(1 if shared else repeats):  # distinct arrays: nothing to share or fold
            key, kx, kk, kg = jax.random.split(key, 4)
            operands.append(
                (
                    jax.random.normal(kx, shape),
                    jax.random.normal(kk, kernel_shape),
                    jax.random.normal(kg, out_shape),
                )
            )
            specs.append((strides, padding, groups, shared))

    def convolutions(operands):
        outputs = []
        for (x, kernel, g), (strides, padding, groups, shared) in zip(operands, specs):
            outputs.append(conv_forward(x, kernel, strides, padding, groups))
            dx, dkernel = conv_backward(x, kernel, g, strides, padding, weight_gradient, groups)
            outputs.append(dkernel if shared else (dx, dkernel))  # the stem's dx is never needed
        return outputs

    t0 = time.perf_counter()
    fn = jax.jit(convolutions).lower(operands).compile()
    compile_seconds = time.perf_counter() - t0
    jax.block_until_ready(fn(operands))  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(operands))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), compile_seconds, xla_cost(fn)


# The options a run passes on to its base and new processes under --against.
FORWARDED = (
    "steps",
    "batch",
    "bits",
    "width",
    "depth",
    "model",
    "conv_batching",
    "weight_gradient",
    "ap_width",
    "ap_bits",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--bits", default="2,4,6,8")
    parser.add_argument("--width", type=int, default=1)
    parser.add_argument(
        "--depth", type=int, default=20, help="CIFAR ResNet depth, 6n+2 (every ResNet variant)"
    )
    parser.add_argument(
        "--model",
        default="resnet20",
        choices=sorted(INPUT_SHAPES),
        help="resnet20 (CIFAR, 32x32x3) or small_cnn (the Fashion-MNIST SmallCNN, 28x28x1)",
    )
    parser.add_argument("--conv-batching", default="unroll", choices=["unroll", "native"])
    parser.add_argument("--weight-gradient", default="auto", choices=["auto", "im2col", "xla"])
    parser.add_argument(
        "--ap-width",
        type=int,
        default=5,
        help="width multiplier of the ap-* ResNet (Any-Precision: 5)",
    )
    parser.add_argument("--ap-bits", default="1,2,4,8,32", help="bit-widths of the ap-* variants")
    parser.add_argument(
        "--only",
        default="fp,fp-xla-dw,qat-1,vmap,unroll,sequential,conv-floor",
        help="comma-separated subset of the variants (also mbq-vmap, mbq-unroll, mbq-sequential, "
        "ap-vmap, ap-unroll)",
    )
    parser.add_argument(
        "--against",
        metavar="BASE_DIR",
        default=None,
        help="time each variant with the jaxquant package at BASE_DIR and with this working "
        "tree's, in fresh processes, interleaved, and print base/new ms/step and their ratio",
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="with --against: runs per side and variant"
    )
    parser.add_argument(
        "--result-line",
        action="store_true",
        help=f"also print one line '{RESULT_PREFIX}{{json}}' (what --against reads from its runs)",
    )
    return parser.parse_args(argv)


def _side_run(root: pathlib.Path, args, variant: str) -> dict:
    """One fresh process of this script timing ``variant`` with the jaxquant package at ``root``
    (PYTHONPATH puts it first). Returns its result:
    ``{"jaxquant": file, "ms": ..., "compile_s": ...}``."""
    command = [sys.executable, str(pathlib.Path(__file__).resolve())]
    for name in FORWARDED:
        command += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    command += ["--only", variant, "--result-line"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + [p for p in [env.get("PYTHONPATH")] if p])
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=str(root))
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode or not lines:
        raise SystemExit(
            f"step_speed: the run of {variant} with {root} failed (exit {done.returncode}):\n"
            f"{done.stdout[-2000:]}{done.stderr[-4000:]}"
        )
    result = json.loads(lines[-1][len(RESULT_PREFIX) :])
    imported = pathlib.Path(result["jaxquant"]).resolve()
    if root.resolve() not in imported.parents:
        raise SystemExit(
            f"step_speed: the run meant for {root} imported jaxquant from {imported}; "
            "is jaxquant installed non-editable in this environment?"
        )
    return {"jaxquant": str(imported), **result["results"][variant]}


def run_against(args) -> dict:
    """``--against``: every chosen variant timed with the base package and the new one, in fresh
    processes, interleaved; prints a table. Returns ``{variant: (base seconds, new seconds)}``."""
    base = pathlib.Path(args.against).resolve()
    if not (base / "jaxquant" / "__init__.py").is_file():
        raise SystemExit(
            f"step_speed: --against {args.against}: no jaxquant/__init__.py there; pass the root "
            "of a checkout, e.g. `git worktree add /tmp/base HEAD`"
        )
    chosen = [v for v in args.only.split(",") if v]
    sides = (("base", base), ("new", ROOT))
    print(
        f"# --against: base = {base}, new = {ROOT}; each variant {args.repeats} runs per side, "
        "interleaved (base, new, ...), each a fresh process; ms/step: the least of a side's runs "
        "(each the median of "
        f"{args.steps} timed steps)",
        flush=True,
    )
    runs = {}
    for variant in chosen:
        for repeat in range(args.repeats):
            for side, root in sides:
                result = _side_run(root, args, variant)
                runs.setdefault((variant, side), []).append(result["ms"])
                print(
                    f"  {variant:<14}{side:<5} run {repeat + 1}/{args.repeats}"
                    f"{result['ms']:>10.0f} ms/step"
                    f"{result['compile_s']:>8.1f} s compile"
                    f"{result.get('xla_gflop', 0.0):>8.1f} XLA GFLOP"
                    f"{result.get('xla_gb', 0.0):>6.1f} XLA GB   jaxquant: {result['jaxquant']}",
                    flush=True,
                )
    print(f"{'variant':<14}{'base ms/step':>13}{'new ms/step':>13}{'new/base':>10}{'speedup':>9}")
    table = {}
    for variant in chosen:
        old, new = min(runs[(variant, "base")]), min(runs[(variant, "new")])
        table[variant] = (old / 1e3, new / 1e3)
        print(f"{variant:<14}{old:>13.0f}{new:>13.0f}{new / old:>10.2f}{old / new:>8.2f}x")
    return table


def main(argv=None):
    args = parse_args(argv)
    if args.against is not None:
        return run_against(args)
    bits = tuple(int(b) for b in args.bits.split(","))
    ap_bits = tuple(int(b) for b in args.ap_bits.split(","))
    rng = np.random.default_rng(0)
    images = jnp.asarray(
        rng.normal(size=(args.batch,) + INPUT_SHAPES[args.model]).astype(np.float32)
    )
    labels = jnp.asarray(rng.integers(0, 10, size=args.batch))
    lsq = QuantSpec()
    common = dict(
        width=args.width, weight_gradient=args.weight_gradient, model=args.model, depth=args.depth
    )
    # Any-Precision: explicit conv batching and precision mode (an older package's defaults may
    # differ).
    anyprecision = dict(
        spec=ANYPRECISION_SPEC,
        distillation="recursive",
        conv_batching="unroll",
        width=args.ap_width,
        weight_gradient=args.weight_gradient,
        model=args.model,
        depth=args.depth,
        preactivation=True,
        optimizer=ANYPRECISION_OPTIMIZER,
    )
    variants = {
        "fp": lambda: [make_trainer((32,), FULL_PRECISION, **common)],
        "fp-xla-dw": lambda: [
            make_trainer(
                (32,),
                FULL_PRECISION,
                width=args.width,
                weight_gradient="xla",
                model=args.model,
                depth=args.depth,
            )
        ],
        "qat-1": lambda: [make_trainer((max(bits),), lsq, **common)],
        "vmap": lambda: [
            make_trainer(bits, lsq, "vmap", conv_batching=args.conv_batching, **common)
        ],
        "unroll": lambda: [make_trainer(bits, lsq, "unroll", **common)],
        "sequential": lambda: [make_trainer((b,), lsq, **common) for b in bits],
        "mbq-vmap": lambda: [make_trainer(bits, None, "vmap", multibranch=True, **common)],
        "mbq-unroll": lambda: [make_trainer(bits, None, "unroll", multibranch=True, **common)],
        "mbq-sequential": lambda: [
            make_trainer((b,), None, "unroll", multibranch=True, **common) for b in bits
        ],
        "ap-vmap": lambda: [make_trainer(ap_bits, precision_mode="vmap", **anyprecision)],
        "ap-unroll": lambda: [make_trainer(ap_bits, precision_mode="unroll", **anyprecision)],
    }
    chosen = [v for v in args.only.split(",") if v]
    unknown = [v for v in chosen if v not in variants and v not in ("conv-floor", "mbq-conv-floor")]
    if unknown:
        raise SystemExit(
            f"step_speed: unknown variant(s) {unknown}; "
            f"choose from {sorted(variants) + ['conv-floor', 'mbq-conv-floor']}"
        )
    model_name = (
        f"CIFAR ResNet-{args.depth} x{args.width}"
        if args.model == "resnet20"
        else "SmallCNN 16/32/64 (28x28x1)"
    )
    ap_model = (
        f"CIFAR ResNet-{args.depth} x{args.ap_width}" if args.model == "resnet20" else "SmallCNN"
    )
    ap_note = (
        f"Any-Precision: pre-activation "
        f"{ap_model}, "
        f"DoReFa, FP stem/classifier/shortcuts, bits {ap_bits}, recursive distillation"
    )
    families = [v for v in chosen if not v.startswith("ap-")]
    if families:
        quantizers = (
            "LSQ" if any(not v.startswith("mbq") for v in families) else "MBQuant multi-branch"
        )
        if quantizers == "LSQ" and any(v.startswith("mbq") for v in families):
            quantizers += " (mbq-*: MBQuant multi-branch)"
        if len(families) < len(chosen):
            quantizers += f" (ap-*: {ap_note})"
        described = f"{model_name}, batch {args.batch}, bits {bits}, {quantizers}"
    else:
        described = f"{ap_note}, batch {args.batch}"
    print(
        f"# {described}, {jax.devices()[0].platform} "
        f"({jax.device_count()} device(s)), jax {jax.__version__}, {args.steps} timed steps"
    )
    print(f"# jaxquant imported from {jaxquant.__file__}")
    # XLA's cost model: what the compiled step computes and moves (a vmapped step's extra bytes
    # are the per-precision slices and stacks around each conv), not a measurement.
    print(f"{'variant':<12}{'ms/step':>10}{'compile s':>11}{'XLA GFLOP':>11}{'XLA GB':>8}")
    results, measured = {}, {}
    for name in chosen:
        if name == "mbq-conv-floor":
            trainer = variants["mbq-unroll"]()[0]
            seconds, compile_seconds, (flops, accessed) = time_conv_floor(
                trainer, images, args.steps, args.weight_gradient, unrolled_convs(trainer, images)
            )
        elif name == "conv-floor":
            seconds, compile_seconds, (flops, accessed) = time_conv_floor(
                make_trainer(bits, lsq, **common), images, args.steps, args.weight_gradient
            )
        else:
            seconds, compile_seconds, (flops, accessed) = time_steps(
                variants[name](), images, labels, args.steps
            )
        results[name] = seconds
        measured[name] = {
            "ms": seconds * 1e3,
            "compile_s": compile_seconds,
            "xla_gflop": flops / 1e9,
            "xla_gb": accessed / 1e9,
        }
        print(
            f"{name:<12}{seconds * 1e3:>10.0f}{compile_seconds:>11.1f}"
            f"{flops / 1e9:>11.1f}{accessed / 1e9:>8.1f}",
            flush=True,
        )
    if "vmap" in results and "sequential" in results:
        print(f"vmap/sequential   {results['vmap'] / results['sequential']:.2f}")
    if "unroll" in results and "sequential" in results:
        print(f"unroll/sequential {results['unroll'] / results['sequential']:.2f}")
    if "mbq-conv-floor" in results and "mbq-unroll" in results:
        print(
            f"mbq-conv-floor/mbq-unroll {results['mbq-conv-floor'] / results['mbq-unroll']:.2f}"
            "  (the share of the unrolled MBQuant step its convolutions take)"
        )
    if "conv-floor" in results and "sequential" in results:
        print(
            f"conv-floor/sequential {results['conv-floor'] / results['sequential']:.2f}"
            "  (the least vmap/sequential with these conv kernels)"
        )
    if "qat-1" in results and "fp" in results:
        print(f"qat-1/fp          {results['qat-1'] / results['fp']:.2f}")
    for a, b in (
        ("mbq-vmap", "mbq-sequential"),
        ("mbq-unroll", "mbq-sequential"),
        ("mbq-unroll", "mbq-vmap"),
    ):
        if a in results and b in results:
            print(f"{a}/{b} {results[a] / results[b]:.2f}")
    if "fp-xla-dw" in results and "fp" in results:
        print(f"fp/fp-xla-dw      {results['fp'] / results['fp-xla-dw']:.2f}")
    if "ap-unroll" in results and "ap-vmap" in results:
        print(f"ap-unroll/ap-vmap {results['ap-unroll'] / results['ap-vmap']:.2f}")
    if args.result_line:
        print(
            RESULT_PREFIX + json.dumps({"jaxquant": jaxquant.__file__, "results": measured}),
            flush=True,
        )
    return results


if __name__ == "__main__":
    main()

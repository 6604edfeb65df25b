"""The costs of a compare's models (docs/compare.md): their conv / dense layers found by one
abstract trace, the bytes to store them and their BitOPs per image."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from jaxquant.compare.planner import FP_BITS, Run
from jaxquant.errors import ConfigError

FLOAT_BYTES = 4  # every unquantized parameter and statistic is stored as float32


@dataclasses.dataclass
class Layer:
    """A conv / dense layer of a model, found by tracing one forward pass."""

    path: tuple[str, ...]
    kind: str  # conv | dense | multibranch
    weights: int  # elements of its kernel (every branch for a multi-branch conv)
    macs: int  # multiply-accumulates per image (one branch for a multi-branch conv)
    bits: tuple[int, ...]
    quantized: bool  # its weight quantizer is not full precision
    features: int  # output channels (one branch's for a multi-branch conv)
    branch: Any = None  # a multi-branch conv's `mbquant_bitops.BranchConvSpec`


def model_costs(config, num_classes: int, image_shape) -> tuple[list[Layer], dict]:
    """``(layers in call order, {(collection, *path): element count})`` of the model a run config
    builds, from one abstract trace (shapes only)."""
    import jax
    import jax.numpy as jnp

    from jaxquant import quantizers as q
    from jaxquant.layers import QuantConv, QuantDense
    from jaxquant.layers.find import visit_layers
    from jaxquant.layers.multibranch import MultiBranchConv
    from jaxquant.methods import build_model, get_method
    from jaxquant.methods.mbquant_bitops import BranchConvSpec

    model = build_model(config, num_classes, get_method(config.method).quant_spec(config))
    sample = jnp.zeros((1, *image_shape), jnp.float32)
    layers: dict[tuple, Layer] = {}

    def visit(module, args, y):
        path = tuple(module.path)
        if path in layers:
            return
        x = args[0]
        spec = getattr(module, "spec", None)  # a multi-branch conv has none: 2-bit branches
        quantized = spec is None or not isinstance(spec.weight, q.FullPrecision)
        if isinstance(module, MultiBranchConv):
            k, g, c_in, c_out = tuple(module.kernel_size), x.shape[-2], x.shape[-1], y.shape[-1]
            positions = math.prod(y.shape[1:3])
            branch = BranchConvSpec(
                "/".join(path),
                positions,
                int(k[0]),
                int(c_in),
                int(c_out),
                int(module.partial_in or c_in),
                int(module.partial_out or c_out),
            )
            layers[path] = Layer(
                path,
                "multibranch",
                g * math.prod(k) * c_in * c_out,
                branch.macs,
                tuple(module.bits),
                True,
                int(c_out),
                branch,
            )
        elif isinstance(module, QuantConv):
            fan_in = math.prod(module.kernel_size) * (x.shape[-1] // module.feature_group_count)
            layers[path] = Layer(
                path,
                "conv",
                fan_in * module.features,
                math.prod(y.shape[1:-1]) * fan_in * module.features,
                tuple(module.bits),
                quantized,
                module.features,
            )
        else:
            layers[path] = Layer(
                path,
                "dense",
                x.shape[-1] * module.features,
                math.prod(y.shape[1:-1]) * x.shape[-1] * module.features,
                tuple(module.bits),
                quantized,
                module.features,
            )

    forward = lambda: model.init(jax.random.key(0), sample, 0, train=True)  # noqa: E731
    visit_layers(forward, (QuantConv, QuantDense, MultiBranchConv), visit)
    shapes = jax.eval_shape(forward)
    sizes = {}
    for collection in ("params", "batch_stats"):
        leaves = jax.tree_util.tree_flatten_with_path(shapes.get(collection, {}))[0]
        for key_path, leaf in leaves:
            path = (collection,) + tuple(str(getattr(k, "key", k)) for k in key_path)
            sizes[path] = int(math.prod(leaf.shape))
    return list(layers.values()), sizes


def packed(weights: int, bits: int) -> int:
    """Bytes of ``weights`` integer codes of ``bits`` bits, packed: ``ceil(weights * bits / 8)``."""
    return math.ceil(weights * bits / 8)


def _fp_bytes(sizes: dict, exclude: set, skip=lambda path: False) -> int:
    return FLOAT_BYTES * sum(n for p, n in sizes.items() if p not in exclude and not skip(p))


def _kernel(layer: Layer) -> tuple:
    return ("params", *layer.path, "kernel")


def train_run_bytes(config, layers: list[Layer], sizes: dict) -> int:
    """Bytes of one trained run's model (docs/compare.md): a run at one bit-width b < 32 packs the
    kernels of its quantized layers at b bits (fixed-bit first/last layers at theirs); MBQuant
    packs every branch at its fixed 2 bits; every other run (FP, or one model for several
    bit-widths, whose bit-widths are made from latent FP weights) stores float32. Every other
    parameter and statistic (BatchNorm rows of every precision, steps, intervals, FP layers) is
    float32."""
    from jaxquant.methods import mbquant

    bits = tuple(int(b) for b in config.bits)
    if config.method == "mbquant":
        branches = [layer for layer in layers if layer.kind == "multibranch"]
        exclude = {_kernel(layer) for layer in branches}
        weights = sum(packed(layer.weights, mbquant.WEIGHT_BITS) for layer in branches)
        return weights + _fp_bytes(sizes, exclude)
    if len(bits) == 1 and bits[0] < FP_BITS:
        coded = [
            layer
            for layer in layers
            if layer.quantized and len(layer.bits) == 1 and layer.bits[0] < 32
        ]
        exclude = {_kernel(layer) for layer in coded}
        return sum(packed(layer.weights, layer.bits[0]) for layer in coded) + _fp_bytes(
            sizes, exclude
        )
    return _fp_bytes(sizes, set())


def vertical_bytes(run: Run, dataset, layers, sizes) -> dict[int, int]:
    """``{k: bytes}`` of a Vertical Layering run's exported file (``WORKDIR/<entry>/model.vl``,
    written if missing or older than the run's results) that the k-bit model reads, its JSON
    header (metadata) left out: the arrays and the first k bit planes. A run export refuses
    (another cascade, quantized first/last layers) gets the computed equivalent: float32 arrays
    and ``ceil(n/8)`` bytes per plane of each quantized kernel."""
    from jaxquant.export import _read_header, export_vertical

    path = run.workdir / "model.vl"
    results = run.workdir / "results.json"
    try:
        if not path.is_file() or path.stat().st_mtime < results.stat().st_mtime:
            export_vertical(run.workdir, path, basic_bits=2, dataset=dataset)
    except ConfigError as e:
        print(f"  {run.name}: no artefact ({e}); bytes computed from the model")
        coded = [
            layer for layer in layers if layer.quantized and layer.bits == tuple(run.config.bits)
        ]
        arrays = _fp_bytes(sizes, {_kernel(layer) for layer in coded})
        source = int(run.config.vertical.source_bits)
        return {
            k: arrays + k * sum(math.ceil(layer.weights / 8) for layer in coded)
            for k in range(2, source + 1)
        }
    with open(path, "rb") as f:
        header, _ = _read_header(f, path)
    return {int(k): int(header["plane_ends"][k - 1]) for k in header["bits"]}


def ptq_bytes(ptq_config, layers: list[Layer], sizes: dict, weight_bits: int, act_bits: int) -> int:
    """Bytes of one PTQ model of the FP run's ``layers`` (docs/compare.md): every conv/dense kernel
    packed at its bits (the first layer and the classifier at ``first_last_weight_bits``, the
    others at ``weight_bits``) with a float32 scale per output channel, a float32 step per
    quantized layer input, and every other FP parameter and statistic (biases, BatchNorm) float32;
    the FP run's own quantizer parameters (``weight_*``, ``act_*``) are not part of it."""
    fixed = ptq_fixed_layers(layers)
    total = 0
    for layer in layers:
        bits = int(ptq_config.first_last_weight_bits) if layer.path in fixed else weight_bits
        total += packed(layer.weights, bits) + FLOAT_BYTES * layer.features
    if act_bits < FP_BITS:
        total += FLOAT_BYTES * (len(layers) - (0 if ptq_config.quantize_image_input else 1))
    exclude = {_kernel(layer) for layer in layers}
    quantizer_param = lambda p: p[0] == "params" and p[-1].startswith(("weight_", "act_"))  # noqa: E731
    return total + _fp_bytes(sizes, exclude, quantizer_param)


def ptq_fixed_layers(layers: list[Layer]) -> set:
    """The layers PTQ keeps at ``first_last_weight_bits``: the first and the last dense."""
    fixed = {layers[0].path} if layers else set()
    dense = [layer for layer in layers if layer.kind == "dense"]
    if dense:
        fixed.add(dense[-1].path)
    return fixed


def bitops(config, layers: list[Layer], b: int) -> int:
    """BitOPs per image at b bits (docs/compare.md): MBQuant by `mbquant_bitops.bitops` over its
    multi-branch convs; any other model ``b * b * MACs`` over the layers quantized at the run's
    bit-widths (fixed-precision layers, the same at every b, left out)."""
    from jaxquant.methods import mbquant_bitops

    if config.method == "mbquant":
        convs = [layer.branch for layer in layers if layer.kind == "multibranch"]
        return mbquant_bitops.bitops(convs, b, str(config.mbquant.selection))
    bits = tuple(config.bits)
    return b * b * sum(layer.macs for layer in layers if layer.quantized and layer.bits == bits)

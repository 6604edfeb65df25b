"""``jaxquant compare CONFIG``: which method for this model at these bit-widths, in one command.

A compare config (``get_config()``) holds a normal run config (``base``), the bit-widths to report
(``bits``), the PTQ settings (``ptq``, optional) and a tuple of ``entries``, each a dict:

- ``name`` (an identifier: the run folder ``WORKDIR/<name>`` or ``WORKDIR/<name>_<bits>``),
  ``label`` (the table's row; default the name), ``kind``: ``train`` or ``ptq``;
- ``train``: ``overrides`` (``{dotted run-config key: value}`` on ``base``) and ``per_bits``
  (True: one dedicated run per bit-width of ``bits``; False: one run for all of them, whose
  ``bits`` default to the compare's unless the overrides set them);
- ``ptq``: ``source`` (a one-run ``train`` entry with 32 among its bits), ``method`` (``bitsplit``,
  ``rtn`` or ``bitsplit_ecaq``), ``act_bits`` (0: the weight bits, W<b>A<b>; else W<b>A<act_bits>)
  and ``overrides`` on the PTQ config.

Every run goes through ``jaxquant train`` (`jaxquant.cli.main`) or ``jaxquant ptq``
(`jaxquant.ptq.run`); a finished run (its ``results.json`` written after its ``config.json``,
which equals the run's config) or a finished PTQ (``ptq_results.json`` of the same PTQ config,
newer than its source's results) is read, not run again; an unfinished one resumes from its last
checkpoint. Then one table, ``WORKDIR/compare.md`` and ``compare.json``: accuracy per bit-width
(the runs' ``results.json``), bytes to serve the requested bit-widths, BitOPs per bit-width,
training seconds; and three plots. The definitions are in ``docs/compare.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import pprint
import time
from typing import Any

import ml_collections

from jaxquant.errors import ConfigError, JaxquantError

KINDS = ("train", "ptq")
ENTRY_KEYS = {
    "train": {"name", "label", "kind", "overrides", "per_bits"},
    "ptq": {"name", "label", "kind", "overrides", "source", "method", "act_bits"},
}
COMPARE_KEYS = {"base", "bits", "entries", "ptq", "title"}  # title: the plots' subject
FP_BITS = 32
FLOAT_BYTES = 4  # every unquantized parameter and statistic is stored as float32


@dataclasses.dataclass
class Run:
    """One ``jaxquant train`` or ``jaxquant ptq`` call of an entry."""

    name: str  # the folder name under the compare's workdir
    workdir: pathlib.Path
    config: ml_collections.ConfigDict  # train: the run config; ptq: the PTQ config
    bits: int | None = None  # a per-bit-width run's bit-width


@dataclasses.dataclass
class Entry:
    """One row of the table: its runs (one, or one per bit-width) and, for PTQ, its source."""

    name: str
    label: str
    kind: str
    runs: list[Run]
    per_bits: bool = False
    source: str = ""
    method: str = ""
    act_bits: int = 0


# ----------------------------------------------------------------------------------------------
# The plan: every entry resolved into its runs' configs, all checked before anything runs.


def load(path: str | pathlib.Path, overrides: dict[str, str] | None = None):
    """The compare config of ``path`` with ``--config.KEY=VALUE`` overrides applied."""
    from jaxquant import config as config_lib

    config = config_lib.load_config(path)
    unknown = sorted(set(config.keys()) - COMPARE_KEYS)
    if unknown or "base" not in config or "entries" not in config:
        raise ConfigError(
            f"{path} is not a compare config: it needs base, bits and entries"
            + (f" (unknown keys {unknown})" if unknown else "")
            + "; see experiments/configs/compare_digits.py"
        )
    return config_lib.apply_overrides(config, overrides or {})


def _jsonable(config) -> Any:
    return json.loads(json.dumps(config.to_dict()))


def _copy(config) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(config.to_dict())


def _apply(config, overrides, where: str) -> None:
    """Set ``{dotted key: Python value}`` through the CLI's typed override (same checks)."""
    from jaxquant import config as config_lib

    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: overrides must be a dict {{key: value}}, got {overrides!r}")
    for key, value in overrides.items():
        try:
            config_lib.override(config, str(key), repr(value))
        except JaxquantError as e:
            raise ConfigError(f"{where}: {e}") from None


def _check_run(config, where: str) -> None:
    """The checks ``jaxquant train`` makes before it loads anything (settings, method, bits)."""
    from jaxquant import config as config_lib
    from jaxquant.methods import get_method

    try:
        config_lib.check_run_config(config)
        method = get_method(config.method)
        spec = method.quant_spec(config)
        if method.validate_bits:
            method.validate_bits(config, spec)
        else:
            spec.validate(config.bits)
    except JaxquantError as e:
        raise ConfigError(f"{where}: {e}") from None


def requested_bits(config) -> tuple[int, ...]:
    """The compare's ``bits``: integers, each a bit-width 2..16 or 32 (FP)."""
    bits = config.get("bits", ())
    bits = bits if isinstance(bits, (tuple, list)) else (bits,)
    if not bits or not all(isinstance(b, int) and (2 <= b <= 16 or b == FP_BITS) for b in bits):
        raise ConfigError(
            f"compare config: bits must be bit-widths 2..16 or 32, e.g. (2, 4, 8); got {bits!r}"
        )
    return tuple(sorted(set(int(b) for b in bits)))


def plan(config, workdir: str | pathlib.Path) -> list[Entry]:
    """Every entry as its runs, each config built and checked (one-line `ConfigError`s naming the
    entry); nothing is written."""
    from jaxquant.configs.ptq import ptq_config
    from jaxquant.ptq.config import METHODS as PTQ_METHODS
    from jaxquant.ptq.config import validate_config

    workdir = pathlib.Path(workdir)
    bits = requested_bits(config)
    entries_raw = config.entries
    if not isinstance(entries_raw, (tuple, list)) or not entries_raw:
        raise ConfigError("compare config: entries must be a non-empty tuple of dicts")
    ptq_base = ptq_config()
    if config.get("ptq") is not None:
        _apply(ptq_base, _flat(config.ptq.to_dict()), "compare config ptq")
    entries: list[Entry] = []
    names: set[str] = set()
    for i, raw in enumerate(entries_raw):
        if not isinstance(raw, dict):
            raise ConfigError(f"compare entry {i}: must be a dict, got {type(raw).__name__}")
        name = raw.get("name")
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"compare entry {i}: name must be an identifier, got {name!r}")
        where = f"compare entry {name!r}"
        if name in names:
            raise ConfigError(f"{where}: two entries have this name")
        names.add(name)
        kind = raw.get("kind")
        if kind not in KINDS:
            raise ConfigError(f"{where}: kind must be one of {KINDS}, got {kind!r}")
        unknown = sorted(set(raw) - ENTRY_KEYS[kind])
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {unknown} for kind {kind!r}; "
                f"known: {sorted(ENTRY_KEYS[kind])}"
            )
        label = str(raw.get("label") or name)
        overrides = raw.get("overrides", {})
        if kind == "train":
            per_bits = raw.get("per_bits", False)
            if not isinstance(per_bits, bool):
                raise ConfigError(f"{where}: per_bits must be True or False, got {per_bits!r}")
            base = _copy(config.base)
            _apply(base, overrides, where)
            runs = []
            if per_bits:
                for b in bits:
                    run_config = _copy(base)
                    run_config.bits = (b,)
                    _check_run(run_config, f"{where} at {b} bits")
                    runs.append(Run(f"{name}_{b}", workdir / f"{name}_{b}", run_config, b))
            else:
                if "bits" not in overrides:
                    base.bits = bits
                _check_run(base, where)
                runs.append(Run(name, workdir / name, base))
            entries.append(Entry(name, label, kind, runs, per_bits=per_bits))
            continue
        source = raw.get("source")
        sources = {e.name: e for e in entries if e.kind == "train"}
        if source not in sources:
            raise ConfigError(
                f"{where}: source must name a train entry listed before it "
                f"({sorted(sources) or 'none yet'}), got {source!r}"
            )
        src = sources[source]
        if src.per_bits or FP_BITS not in tuple(src.runs[0].config.bits):
            raise ConfigError(
                f"{where}: source {source!r} must be one run with 32 among its bits "
                "(the FP model PTQ quantizes), e.g. overrides={'bits': (32,)}"
            )
        method = raw.get("method")
        if method not in PTQ_METHODS:
            raise ConfigError(f"{where}: method must be one of {PTQ_METHODS}, got {method!r}")
        act_bits = raw.get("act_bits", 0)
        if not isinstance(act_bits, int) or isinstance(act_bits, bool):
            raise ConfigError(f"{where}: act_bits must be an integer (0: the weight bits)")
        ptq = _copy(ptq_base)
        _apply(ptq, overrides, where)
        weight_bits = [b for b in bits if b < FP_BITS]
        if not weight_bits:
            raise ConfigError(f"{where}: bits has no integer bit-width to quantize to")
        ptq.settings = tuple(f"W{b}A{act_bits or b}" for b in weight_bits)
        ptq.methods = (method,)
        try:
            validate_config(ptq)
        except JaxquantError as e:
            raise ConfigError(f"{where}: {e}") from None
        run = Run(name, workdir / name, ptq)
        entries.append(
            Entry(name, label, kind, [run], source=source, method=method, act_bits=act_bits)
        )
    return entries


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# ----------------------------------------------------------------------------------------------
# Running: train / PTQ what is not finished.


def train_finished(run: Run) -> bool:
    """A finished training run of this config: ``results.json`` written after ``config.json``
    (the report follows the last step), and ``config.json`` is this run's config."""
    results, stored = run.workdir / "results.json", run.workdir / "config.json"
    if not (results.is_file() and stored.is_file()):
        return False
    if results.stat().st_mtime < stored.stat().st_mtime:
        return False
    try:
        return json.loads(stored.read_text()) == _jsonable(run.config)
    except json.JSONDecodeError:
        return False


def ptq_finished(run: Run, source: Run) -> bool:
    """A finished PTQ of this PTQ config, written after its source's results."""
    results = run.workdir / "ptq_results.json"
    if not results.is_file():
        return False
    source_results = source.workdir / "results.json"
    if source_results.is_file() and results.stat().st_mtime < source_results.stat().st_mtime:
        return False
    try:
        return json.loads(results.read_text()).get("config") == _jsonable(run.config)
    except json.JSONDecodeError:
        return False


def config_file(run: Run, root: pathlib.Path) -> pathlib.Path:
    """Write the run's config as a ``get_config()`` file, ``WORKDIR/configs/<run>.py``."""
    path = root / "configs" / f"{run.name}.py"
    text = (
        f'"""`jaxquant compare`: the config of run {run.name}, written by jaxquant.compare.\n'
        f'  jaxquant train --config {path} --workdir {run.workdir}\n"""\n\n'
        "import ml_collections\n\n"
        f"CONFIG = {pprint.pformat(run.config.to_dict(), sort_dicts=False)}\n\n\n"
        "def get_config():\n"
        "    return ml_collections.ConfigDict(CONFIG)\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def run_entries(entries: list[Entry], root: pathlib.Path, progress: bool = True) -> int:
    """Train / PTQ every unfinished run, in entry order; returns 0, or the exit code of the first
    ``jaxquant train`` that failed (its one-line error already printed)."""
    from jaxquant import cli, ptq

    by_name = {e.name: e for e in entries}
    for entry in entries:
        for run in entry.runs:
            if entry.kind == "train":
                if train_finished(run):
                    print(f"=== {run.name}: finished, reading {run.workdir / 'results.json'}")
                    continue
                argv = ["train", "--config", str(config_file(run, root)), "--workdir"]
                argv += [str(run.workdir)] + ([] if progress else ["--no-progress"])
                print(f"\n=== {run.name}: jaxquant {' '.join(argv)}", flush=True)
                code = cli.main(argv)
                if code != 0:
                    return code
                continue
            source = by_name[entry.source].runs[0]
            if ptq_finished(run, source):
                print(f"=== {run.name}: finished, reading {run.workdir / 'ptq_results.json'}")
                continue
            print(
                f"\n=== {run.name}: jaxquant ptq --workdir {source.workdir} --out {run.workdir} "
                f'--config.settings="{tuple(run.config.settings)}" '
                f'--config.methods="{tuple(run.config.methods)}"',
                flush=True,
            )
            ptq.run(source.workdir, run.config, run.workdir, progress=progress)
    return 0


# ----------------------------------------------------------------------------------------------
# Costs: the layers of a model, bytes and BitOPs.


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


# ----------------------------------------------------------------------------------------------
# Collecting: the numbers of every entry.


def _accuracies(path: pathlib.Path) -> tuple[dict[int, float], float | None]:
    results = json.loads(path.read_text())
    accuracy = {int(b): float(a) for b, a in results["accuracy"].items()}
    return accuracy, results.get("train_seconds")


def collect(entries: list[Entry], bits: tuple[int, ...]) -> dict:
    """``{entry name: numbers}``: accuracy per bit-width (of ``bits``, and FP where a run has it),
    bytes per bit-width and to serve every requested integer bit-width, BitOPs, seconds."""
    from jaxquant.data import load_config_dataset

    datasets: dict = {}

    def dataset_of(config):
        key = (config.dataset, config.data_dir, config.image_size)
        if key not in datasets:
            datasets[key] = load_config_dataset(config)
        return datasets[key]

    def costs(config):
        dataset = dataset_of(config)
        return model_costs(config, dataset.num_classes, dataset.image_shape)

    out: dict[str, dict] = {}
    by_name = {e.name: e for e in entries}
    for entry in entries:
        row = {
            "label": entry.label,
            "kind": entry.kind,
            "runs": [str(r.workdir) for r in entry.runs],
            "accuracy": {},
            "bytes": {},
            "bitops": {},
            "train_seconds": None,
        }
        if entry.kind == "train":
            seconds = []
            for run in entry.runs:
                accuracy, run_seconds = _accuracies(run.workdir / "results.json")
                seconds.append(run_seconds)
                wanted = [run.bits] if run.bits is not None else list(accuracy)
                for b in wanted:
                    if b in accuracy and (b in bits or b == FP_BITS):
                        row["accuracy"][b] = accuracy[b]
                layers, sizes = costs(run.config)
                if run.config.method == "vertical":
                    per_k = vertical_bytes(run, dataset_of(run.config), layers, sizes)
                    for b in row["accuracy"]:
                        if b in per_k and (run.bits is None or b == run.bits):
                            row["bytes"][b] = per_k[b]
                else:
                    size = train_run_bytes(run.config, layers, sizes)
                    for b in [run.bits] if run.bits is not None else row["accuracy"]:
                        row["bytes"][b] = size
                for b in [run.bits] if run.bits is not None else row["accuracy"]:
                    if b < FP_BITS and b in row["accuracy"]:
                        row["bitops"][b] = bitops(run.config, layers, b)
            if all(s is not None for s in seconds):
                row["train_seconds"] = round(sum(seconds), 1)
        else:
            (run,) = entry.runs
            source = by_name[entry.source].runs[0]
            results = json.loads((run.workdir / "ptq_results.json").read_text())
            layers, sizes = costs(source.config)
            seconds = 0.0
            for setting in results["settings"]:
                weight_bits = int(setting[1:].split("A")[0])
                act_bits = int(setting.split("A")[1])
                row["accuracy"][weight_bits] = float(results["accuracy"][entry.method][setting])
                row["bytes"][weight_bits] = ptq_bytes(
                    run.config, layers, sizes, weight_bits, act_bits
                )
                fixed = ptq_fixed_layers(layers)
                macs = sum(layer.macs for layer in layers if layer.path not in fixed)
                row["bitops"][weight_bits] = weight_bits * min(act_bits, FP_BITS) * macs
                seconds += float(results["seconds"][entry.method][setting])
            row["train_seconds"] = round(seconds, 1)
        row["bytes_all"] = bytes_to_serve(entry, row["bytes"])
        out[entry.name] = row
    return out


def bytes_to_serve(entry: Entry, per_bits: dict[int, int]) -> int | None:
    """Bytes to serve every requested integer bit-width the entry has (an FP-only entry: its FP
    model): dedicated and PTQ entries, the sum of their models; Vertical Layering, the file's
    prefix of the highest one; any other one-run method, its one model."""
    served = [b for b in per_bits if b < FP_BITS] or list(per_bits)
    if not served:
        return None
    if entry.kind == "ptq" or entry.per_bits:
        return sum(per_bits[b] for b in served)
    if entry.runs[0].config.method == "vertical":
        return per_bits[max(served)]
    return per_bits[served[0]]


# ----------------------------------------------------------------------------------------------
# The table and the plots.


def _si(n: float | None) -> str:
    if n is None:
        return ""
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= factor:
            return f"{n / factor:.3g}{suffix}"
    return f"{n:.3g}"


def columns(rows: dict, bits: tuple[int, ...]) -> list[int]:
    """The table's bit-widths: the requested ones, then FP where any row has it."""
    has_fp = any(FP_BITS in row["accuracy"] for row in rows.values())
    return [b for b in bits if b < FP_BITS] + ([FP_BITS] if FP_BITS in bits or has_fp else [])


def format_compare_table(rows: dict, bits: tuple[int, ...], title: str = "") -> str:
    """Markdown: one row per entry; accuracy (%) per bit-width, bytes to serve the requested
    integer bit-widths, BitOPs per integer bit-width, training seconds."""
    from jaxquant.report import bits_label

    cols = columns(rows, bits)
    low = [b for b in cols if b < FP_BITS]
    served = ", ".join(str(b) for b in low)
    header = (
        ["method"]
        + [bits_label(b) for b in cols]
        + [f"bytes ({served}-bit)"]
        + [f"BitOPs {bits_label(b)}" for b in low]
        + ["train s"]
    )
    lines = ([f"**{title}**", ""] if title else []) + [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for row in rows.values():
        cells = [f"{100 * row['accuracy'][b]:.2f}" if b in row["accuracy"] else "" for b in cols]
        cells.append(f"{row['bytes_all']:,}" if row["bytes_all"] is not None else "")
        cells += [_si(row["bitops"].get(b)) for b in low]
        seconds = row["train_seconds"]
        cells.append("" if seconds is None else f"{seconds:.1f}")
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


NOTES = (
    "accuracy: each run's results.json; bytes: to serve every listed integer bit-width "
    "(dedicated and PTQ: the sum of one packed model per bit-width; Vertical Layering: the "
    "exported file without its header; Any-Precision: the float32 latent weights and every "
    "precision's parameters; MBQuant: 2-bit branches and float32 parameters; the FP row: its "
    "float32 model); BitOPs per image over the layers at the row's bit-width (MBQuant: its "
    "branches); train s: the runs' train_seconds (PTQ: calibration seconds, after the FP run). "
    "Definitions: docs/compare.md."
)


def _figure():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.8), dpi=120)
    return fig, fig.subplots()


def _finish(fig, ax, path, xlabel: str, title: str) -> pathlib.Path:
    from jaxquant.report import save_figure

    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def plot_bytes(rows: dict, path, title: str = "") -> pathlib.Path:
    """Accuracy at each integer bit-width against the bytes to serve them all, one column of
    points per row, each point labelled with its bit-width; an FP-only row is one star."""
    fig, ax = _figure()
    for row in rows.values():
        if row["bytes_all"] is None:
            continue
        low = sorted(b for b in row["accuracy"] if b < FP_BITS)
        if not low:
            ax.plot(
                [row["bytes_all"]], [100 * row["accuracy"][FP_BITS]], "*", ms=10, label=row["label"]
            )
            continue
        ys = [100 * row["accuracy"][b] for b in low]
        (line,) = ax.plot([row["bytes_all"]] * len(low), ys, marker="o", label=row["label"])
        for b, y in zip(low, ys):
            ax.annotate(
                str(b),
                (row["bytes_all"], y),
                xytext=(4, -3),
                textcoords="offset points",
                fontsize=6,
                color=line.get_color(),
            )
    ax.set_xscale("log")
    return _finish(fig, ax, path, "bytes to serve every bit-width (log)", title)


def plot_bitops(rows: dict, path, title: str = "") -> pathlib.Path:
    """Accuracy against BitOPs per image, one line per row through its bit-widths; FP as a
    dashed level."""
    fig, ax = _figure()
    for row in rows.values():
        low = sorted(b for b in row["bitops"] if b in row["accuracy"])
        color = None
        if low:
            (line,) = ax.plot(
                [row["bitops"][b] for b in low],
                [100 * row["accuracy"][b] for b in low],
                marker="o",
                label=row["label"],
            )
            color = line.get_color()
        if FP_BITS in row["accuracy"]:
            ax.axhline(
                100 * row["accuracy"][FP_BITS],
                color=color or "black",
                linestyle="--",
                linewidth=1,
                label=f"{row['label']} (FP)" if low else row["label"],
            )
    ax.set_xscale("log")
    return _finish(fig, ax, path, "BitOPs per image (log)", title)


# ----------------------------------------------------------------------------------------------
# The command.


def compare(
    config_path: str | pathlib.Path,
    workdir: str | pathlib.Path,
    overrides: dict[str, str] | None = None,
    progress: bool = True,
) -> int:
    """``jaxquant compare``: plan (every entry checked first), run what is not finished, write
    ``compare.md``, ``compare.json`` and the three plots to ``workdir``; returns the exit code."""
    from jaxquant.report import plot_accuracy

    config = load(config_path, overrides)
    workdir = pathlib.Path(workdir)
    entries = plan(config, workdir)
    bits = requested_bits(config)
    runs = sum(len(e.runs) for e in entries)
    print(
        f"jaxquant compare: {len(entries)} methods, {runs} runs, bits {bits}, workdir {workdir}",
        flush=True,
    )
    start = time.perf_counter()
    code = run_entries(entries, workdir, progress)
    if code != 0:
        return code
    rows = collect(entries, bits)
    subject = str(config.get("title") or "") or f"{config.base.dataset}, {config.base.model}"
    title = f"{subject}: test accuracy (%) by bit-width"
    text = format_compare_table(rows, bits, title) + "\n\n" + NOTES
    print("\n" + text)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "compare.md").write_text(text + "\n")
    payload = {
        "config": str(config_path),
        "title": title,
        "bits": list(bits),
        "columns": columns(rows, bits),
        "entries": {
            name: {
                **row,
                **{
                    key: {str(b): v for b, v in row[key].items()}
                    for key in ("accuracy", "bytes", "bitops")
                },
            }
            for name, row in rows.items()
        },
        "seconds": round(time.perf_counter() - start, 1),
    }
    (workdir / "compare.json").write_text(json.dumps(payload, indent=2) + "\n")
    cols = columns(rows, bits)
    plot_accuracy(
        {
            row["label"]: {b: a for b, a in row["accuracy"].items() if b in cols}
            for row in rows.values()
        },
        workdir / "accuracy_vs_bits.png",
        title=f"{subject}: accuracy vs bit-width",
    )
    plot_bytes(rows, workdir / "accuracy_vs_bytes.png", f"{subject}: accuracy vs bytes")
    plot_bitops(rows, workdir / "accuracy_vs_bitops.png", f"{subject}: accuracy vs BitOPs")
    print(
        f"\nsaved {workdir / 'compare.md'}, {workdir / 'compare.json'} and "
        "accuracy_vs_bits.png, accuracy_vs_bytes.png, accuracy_vs_bitops.png"
    )
    return 0

"""LSQ with Bin Regularization (Han et al., ICCV 2021; no official code): LSQ's model and
quantizers (`jaxquant.methods.lsq`), plus the bin regulariser of the quantized weights
(`jaxquant.regularizers`)::

    L = CE + lambda * schedule(step) * sum_p L_BR(weights at precision p)

``lambda = 0.5`` (the paper's Table 7). Schedules (``binreg.schedule``): ``two_stage`` (the
paper's: CE only for ``binreg.start_epochs``, default a third of the run, then CE + BR),
``joint`` (BR from the first step), ``alternating`` (our definition: blocks of
``binreg.alternate_epochs`` epochs alternate CE only / CE + BR, CE only first) and
``alternating_steps_br`` (the paper's S3, see `make_phases`: blocks alternate between the step
sizes alone, trained by CE, and the weights alone, trained by BR alone; step sizes first).
``binreg.lambda_ > 0`` adds BR to ``lsq``, ``vertical`` and ``anyprecision``.
Details: docs/methods/binreg.md
"""

from __future__ import annotations

import math
import pathlib
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxquant import regularizers
from jaxquant.errors import ConfigError
from jaxquant.layers import QuantConv, QuantDense, visit_layers
from jaxquant.methods import lsq
from jaxquant.methods.base import METHODS, Method, get_method, register, section
from jaxquant.params import get_path
from jaxquant.regularizers import LayerQuantizer
from jaxquant.report import save_figure

NAME = "binreg"
DEFAULT_DISTILLATION = "none"
DEFAULT_LAMBDA = 0.5
SCHEDULES = ("two_stage", "joint", "alternating", "alternating_steps_br")
ALTERNATING = ("alternating", "alternating_steps_br")  # the schedules of blocks
SECTION = {
    "lambda_": -1.0,  # lambda; -1 = the method's (binreg 0.5, the paper's Table 7; others 0 = off)
    # two_stage | joint | alternating | alternating_steps_br (see the module docstring)
    "schedule": "two_stage",
    # two_stage: CE-only epochs first; -1 = a third of epochs (the paper: 30 of 90)
    "start_epochs": -1.0,
    # alternating, alternating_steps_br: length of each block in epochs (fractions allowed)
    "alternate_epochs": 1.0,
    # weight (w vs code*s, the re-implementation's) | code (w/s vs the integer code)
    "units": "weight",
    "stop_step_gradient": False,  # True: BR's gradient does not reach the step sizes
    # sum (the re-implementation's reading of the paper) | mean over layers
    "layer_reduction": "sum",
}
"""``config.binreg``: read by every method whose `Method.bin_regularization` is not None."""


def _get(config, key: str):
    return section(config, METHOD)[key]


def resolve_lambda(config) -> float:
    """``config.binreg.lambda_``, with -1 replaced by the method's default (binreg 0.5, else 0)."""
    lam = float(_get(config, "lambda_"))
    if lam == -1.0:
        return get_method(config.method).bin_regularization or 0.0
    if lam < 0:
        raise ConfigError(
            f"binreg.lambda_ is {lam}; use a weight >= 0 (or -1 for the method's default)"
        )
    return lam


def resolve_start_epochs(config) -> float:
    """Two-stage: the CE-only epochs, with -1 replaced by a third of ``config.epochs``."""
    start = float(_get(config, "start_epochs"))
    return config.epochs / 3.0 if start == -1.0 else start


def schedule_weight(
    step,
    *,
    lam: float,
    schedule: str,
    steps_per_epoch: int,
    start_epochs: float = 0.0,
    alternate_epochs: float = 1.0,
) -> jax.Array:
    """The weight of BR at optimizer step ``step`` (may be traced): ``lam`` when BR is on, else 0
    (see the module docstring for the schedules; ``alternating`` and ``alternating_steps_br``
    switch BR on in the same blocks, the odd ones)."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown binreg.schedule {schedule!r}; choose one of {SCHEDULES}")
    step = jnp.asarray(step, jnp.int32)
    if schedule == "joint":
        on = jnp.ones((), bool)
    elif schedule == "two_stage":
        on = step >= int(round(start_epochs * steps_per_epoch))
    else:
        on = in_br_phase(step, steps_per_epoch, alternate_epochs)
    return jnp.where(on, jnp.float32(lam), jnp.float32(0.0))


def in_br_phase(step, steps_per_epoch: int, alternate_epochs: float) -> jax.Array:
    """Whether optimizer step ``step`` (may be traced) lies in an odd block of
    ``round(alternate_epochs * steps_per_epoch)`` steps (at least 1): the BR blocks of the
    ``alternating`` and ``alternating_steps_br`` schedules."""
    block = max(int(round(alternate_epochs * steps_per_epoch)), 1)
    return (jnp.asarray(step, jnp.int32) // block) % 2 == 1


def make_phases(config, steps_per_epoch: int) -> tuple[Callable | None, Callable | None]:
    """``(task_weight, trainable)`` for ``binreg.schedule = 'alternating_steps_br'`` (both None
    for the other schedules, or when BR is off): ``task_weight(step)`` is the weight of the task
    loss (`MultiPrecisionTrainer.task_weight`), ``trainable(step)`` says which optimizer group
    moves (`training.optim.make_optimizer`).

    **The paper's S3.** Han et al. compare three ways of training with BR (their S1, S2 and
    S3) and choose S2 (``two_stage``). S3 alternates between updating the quantization step
    sizes alone, with the task loss, and applying Bin Regularization alone, which updates the
    weights with the BR loss. That one sentence is all we have of it (the paper's full text was
    not at hand, and it has no public code); jaxquant's reading, step by step:

    - Blocks of ``binreg.alternate_epochs`` epochs (``round(a * E)`` optimizer steps, at least 1;
      a tiny value alternates every step), **step sizes first**: the blocks of the
      ``alternating`` schedule, with BR in the odd ones.
    - **Step-size phase**: the loss is the task loss alone (BR's weight 0), and only the
      optimizer's ``quantizer`` group moves: every quantizer parameter
      (`jaxquant.layers.is_quantizer_param`: the weights' and the activations' step sizes).
    - **BR phase**: the loss is ``lambda * BR`` alone (the task loss's weight is 0, so no CE
      gradient reaches any parameter), and only the ``model`` group moves: the weights. The
      step sizes do not move even though BR has a gradient on them (``stop_step_gradient``
      makes no difference here).
    - A group that does not move gets a zero update and its optimizer state (momentum, Adam's
      moments, weight decay) does not advance, as with one optimizer per group of which only
      one steps; so the weights' momentum only ever holds BR gradients and the step sizes'
      Adam moments only CE gradients. The learning rate schedules follow the run's step.
    - **BatchNorm**: its scale and bias are network parameters, in the ``model`` group. They do
      not move in the step-size phase; in the BR phase BR gives them no gradient, so they move
      only by the model group's weight decay (with ``optimizer.decay_batchnorm``, the default)
      and momentum, like the biases and full-precision layers. ``optimizer.weight_decay=0``
      gives the strict reading, in which the BR phase changes only the quantized kernels. The
      running statistics are re-estimated by every training batch in both phases (the forward
      pass runs in both), so evaluation sees the statistics of the current weights.

    Since no weight ever sees the task loss, the schedule is for a trained network: fine-tune
    with ``init_from``, as the paper quantizes pretrained models.
    """
    if str(_get(config, "schedule")) != "alternating_steps_br" or resolve_lambda(config) == 0.0:
        return None, None
    alternate = float(_get(config, "alternate_epochs"))

    def task_weight(step):
        return jnp.where(in_br_phase(step, steps_per_epoch, alternate), 0.0, 1.0)

    def trainable(step):
        br = in_br_phase(step, steps_per_epoch, alternate)
        return {"model": br, "quantizer": jnp.logical_not(br)}

    return task_weight, trainable


# ----------------------------------------------------------------------------------------------
# Which layers carry quantized weights, and the regulariser of a model.


def model_layers(model: nn.Module, sample: jax.Array) -> dict[tuple[str, ...], LayerQuantizer]:
    """Every `QuantConv`/`QuantDense` of ``model`` whose kernel is quantized by a quantizer with
    bins (LSQ, vertical, DoReFa), by its path in the params tree, with the layer's own bit-widths
    (a first/last layer at ``first_last_bits`` has one). Found by tracing one abstract forward
    pass (no compute)."""
    found: dict[tuple[str, ...], LayerQuantizer] = {}

    def visit(module, args, y):
        if module.spec.weight.has_bins:
            found[tuple(module.path)] = LayerQuantizer(tuple(module.bits), module.spec.weight)

    visit_layers(
        lambda: model.init(jax.random.key(0), sample, 0, train=True), (QuantConv, QuantDense), visit
    )
    return {path: layer for path, layer in found.items() if layer.max_bits > 0}


def make_regularizer(
    config, model: nn.Module, image_shape: Sequence[int], steps_per_epoch: int
) -> tuple[Callable | None, Callable | None]:
    """``(regularizer, weight)`` for `MultiPrecisionTrainer` from ``config`` (both None when BR is
    off): ``regularizer(params, precision)`` is BR of the sub-network at that precision index,
    ``weight(step)`` is lambda times the schedule. ``image_shape`` (HWC) is the model's input.
    Raises `ConfigError` for a config BR cannot run."""
    lam = resolve_lambda(config)
    if lam == 0.0:
        return None, None
    if get_method(config.method).bin_regularization is None:
        covered = sorted(m.name for m in METHODS.values() if m.bin_regularization is not None)
        raise ConfigError(
            f"Bin Regularization does not apply to method {config.method!r} (its weights are not "
            f"bins of one quantizer grid); set binreg.lambda_=0 or use one of {covered}"
        )
    schedule = str(_get(config, "schedule"))
    units = str(_get(config, "units"))
    reduction = str(_get(config, "layer_reduction"))
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown binreg.schedule {schedule!r}; choose one of {SCHEDULES}")
    if units not in regularizers.UNITS:
        raise ConfigError(f"unknown binreg.units {units!r}; choose one of {regularizers.UNITS}")
    if reduction not in regularizers.REDUCTIONS:
        raise ConfigError(
            f"unknown binreg.layer_reduction {reduction!r}; choose one of {regularizers.REDUCTIONS}"
        )
    start = resolve_start_epochs(config)
    alternate = float(_get(config, "alternate_epochs"))
    if schedule == "two_stage" and not 0 <= start < config.epochs:
        raise ConfigError(
            f"binreg.start_epochs={start:g} leaves no epoch of BR in a {config.epochs}-epoch run; "
            f"use a value in [0, {config.epochs}) (or -1 for a third of the run)"
        )
    if schedule in ALTERNATING and alternate <= 0:
        raise ConfigError(
            f"binreg.alternate_epochs={alternate:g}; use a positive block length in epochs"
        )
    layers = model_layers(model, jnp.zeros((1,) + tuple(image_shape), jnp.float32))
    if not layers:
        raise ConfigError(
            "Bin Regularization found no quantized weights in the model (every layer is full "
            "precision); train integer bit-widths or set binreg.lambda_=0"
        )
    stop = bool(_get(config, "stop_step_gradient"))

    def regularizer(params, precision):
        return regularizers.bin_regularization(
            params,
            precision,
            layers=layers,
            units=units,
            stop_step_gradient=stop,
            reduction=reduction,
        )

    def weight(step):
        return schedule_weight(
            step,
            lam=lam,
            schedule=schedule,
            steps_per_epoch=steps_per_epoch,
            start_epochs=start,
            alternate_epochs=alternate,
        )

    return regularizer, weight


def describe(config) -> str:
    """One line naming BR's settings for a run header ("" when BR is off)."""
    try:
        lam = resolve_lambda(config)
    except ConfigError:
        return ""
    if lam == 0.0:
        return ""
    schedule = str(_get(config, "schedule"))
    detail = {
        "two_stage": f"after {resolve_start_epochs(config):g} CE-only epochs",
        "joint": "from the start",
        "alternating": f"in alternate blocks of {float(_get(config, 'alternate_epochs')):g} epochs",
        "alternating_steps_br": f"blocks of {float(_get(config, 'alternate_epochs')):g} epochs "
        "alternate the step sizes by CE and the weights by BR",
    }
    return (
        f"bin regularization lambda {lam:g} {schedule} ({detail.get(schedule, '')}), "
        f"{_get(config, 'units')} units, {_get(config, 'layer_reduction')} over layers"
        + (", no gradient to the steps" if _get(config, "stop_step_gradient") else "")
    )


# ----------------------------------------------------------------------------------------------
# Measurements: quantization MSE and bin statistics, per layer.


def layer_name(path: Sequence[str]) -> str:
    return "/".join(path)


def layer_statistics(
    layer_params: Mapping[str, Any], layer: LayerQuantizer, precision: int
) -> dict:
    """Quantization error and bins of one layer's weights at precision index ``precision``.

    Returns ``bits``, ``weights``, ``step`` (the step in weight units per code unit; the mean
    over channels for per-channel steps), ``mse`` (``mean (w - w_hat)^2`` in weight units; for
    DoReFa, of the FP form ``tanh(w)/max|tanh w| E`` against the quantized weight),
    ``mse_code`` (the same in step units: ``mean (w/s - code)^2``), ``br`` and ``br_code``
    (the regulariser in both units) and ``bins``: per non-empty code ``level`` (code units),
    ``count``, ``mean_offset`` (mean of ``w/s`` minus the level) and ``variance`` (of ``w/s``),
    pooled over channels when the steps are per channel.
    """
    (vw, bw, lw, _), bit_width = regularizers.layer_bins(
        layer_params, layer, precision, units="weight"
    )
    (vc, bc, lc, num_bins), _ = regularizers.layer_bins(
        layer_params, layer, precision, units="code"
    )
    codes_per_grid = 2**layer.max_bits
    code = jnp.ravel(bc) % codes_per_grid
    count, mean, variance = regularizers.bin_statistics(vc, code, codes_per_grid)
    levels = lc[:codes_per_grid]
    error_w = jnp.ravel(vw) - lw[jnp.ravel(bw)]
    error_c = jnp.ravel(vc) - lc[jnp.ravel(bc)]
    # The step in weight units per code unit: the spacing of adjacent levels, per grid.
    grids_w = lw.reshape(-1, codes_per_grid)
    step = jnp.mean((grids_w[:, 1] - grids_w[:, 0]) / (lc[1] - lc[0]))
    count, mean, variance, levels = map(np.asarray, (count, mean, variance, levels))
    bins = [
        {
            "level": float(levels[j]),
            "count": int(count[j]),
            "mean_offset": float(mean[j] - levels[j]),
            "variance": float(variance[j]),
        }
        for j in range(codes_per_grid)
        if count[j] > 0
    ]
    return {
        "bits": int(bit_width),
        "weights": int(np.size(vw)),
        "step": float(step),
        "mse": float(jnp.mean(jnp.square(error_w))),
        "mse_code": float(jnp.mean(jnp.square(error_c))),
        "br": float(regularizers.bin_regularizer(vw, bw, lw, num_bins)),
        "br_code": float(regularizers.bin_regularizer(vc, bc, lc, num_bins)),
        "bins": bins,
    }


def bin_report(
    params,
    layers: Mapping[tuple[str, ...], LayerQuantizer],
    precision: int,
    only: str | None = None,
) -> dict[str, dict]:
    """`layer_statistics` of every quantized layer (or the one named ``only``) by layer name,
    plus ``'total'``: the weighted-mean MSE over all weights and the summed BR."""
    names = {layer_name(path): path for path in layers}
    if only is not None and only not in names:
        raise ConfigError(f"no quantized layer {only!r}; choose one of {', '.join(names)}")
    report = {}
    for name, path in names.items():
        if only is None or name == only:
            report[name] = layer_statistics(get_path(params, path), layers[path], precision)
    if report and only is None:
        weights = sum(r["weights"] for r in report.values())
        report["total"] = {
            "weights": weights,
            "mse": sum(r["mse"] * r["weights"] for r in report.values()) / weights,
            "mse_code": sum(r["mse_code"] * r["weights"] for r in report.values()) / weights,
            "br": sum(r["br"] for r in report.values()),
            "br_code": sum(r["br_code"] for r in report.values()),
        }
    return report


def format_report(report: Mapping[str, dict], title: str = "") -> str:
    """A Markdown table: one row per layer (MSE, MSE in step units, BR, non-empty bins), and the
    per-bin rows (level, count, mean offset and standard deviation in steps) of a lone layer."""
    lines = ([f"**{title}**", ""] if title else []) + [
        "| layer | bits | weights | step | MSE | MSE / s^2 | BR | BR / s^2 | bins used |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in report.items():
        if name == "total":
            lines.append(
                f"| total | | {r['weights']:,} | | {r['mse']:.3e} | {r['mse_code']:.4f} | "
                f"{r['br']:.3e} | "
                f"{r['br_code']:.4f} | |"
            )
            continue
        lines.append(
            f"| {name} | {r['bits']} | {r['weights']:,} | {r['step']:.4g} | {r['mse']:.3e} | "
            f"{r['mse_code']:.4f} | {r['br']:.3e} | {r['br_code']:.4f} | {len(r['bins'])} |"
        )
    layers = [name for name in report if name != "total"]
    if len(layers) == 1:
        r = report[layers[0]]
        lines += [
            "",
            f"bins of {layers[0]} at {r['bits']} bits (offsets and spreads in steps):",
            "",
            "| level | count | mean offset | std |",
            "|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {b['level']:g} | {b['count']:,} | {b['mean_offset']:+.4f} | "
            f"{math.sqrt(max(b['variance'], 0.0)):.4f} |"
            for b in r["bins"]
        ]
    return "\n".join(lines)


def largest_layer(layers: Mapping[tuple[str, ...], LayerQuantizer], params) -> str:
    """The name of the quantized layer with the most weights (the default layer to plot)."""
    return max(
        (layer_name(p) for p in layers),
        key=lambda n: np.size(get_path(params, tuple(n.split("/")))["kernel"]),
    )


def plot_bins(
    panels: Sequence[tuple[str, Mapping[str, Any], LayerQuantizer, int]],
    path: str | pathlib.Path,
    title: str = "",
    histogram_bins: int = 120,
) -> pathlib.Path:
    """Side-by-side histograms of one layer's weights in step units (``w / s``), each bin's
    weights in its own colour, the levels marked by dashed lines. ``panels``: ``(label,
    layer_params, layer, precision)`` each, e.g. the same layer of an LSQ and an LSQ+BR run."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6 * len(panels), 3.4), dpi=120)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharex=True))  # one x-range: panels compare
    for ax, (label, layer_params, layer, precision) in zip(axes, panels):
        (values, bins, levels, _), bit_width = regularizers.layer_bins(
            layer_params, layer, precision, units="code"
        )
        values, bins, levels = (
            np.ravel(np.asarray(values)),
            np.ravel(np.asarray(bins)),
            np.asarray(levels),
        )
        codes_per_grid = 2**layer.max_bits
        code = bins % codes_per_grid
        used = np.unique(code)
        edges = np.linspace(values.min(), values.max(), histogram_bins + 1)
        for j in used:  # the colour follows the level, so a level has one colour in every panel
            ax.hist(values[code == j], bins=edges, color=f"C{j % 10}", alpha=0.85)
            ax.axvline(levels[j], color="k", linestyle="--", linewidth=0.8)
        stats = layer_statistics(layer_params, layer, precision)
        ax.set_title(
            f"{label}: {int(bit_width)}-bit, MSE/s$^2$ {stats['mse_code']:.3f}", fontsize=9
        )
        ax.set_xlabel("w / s (step units); dashed: levels")
        ax.set_ylabel("weights")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


METHOD = register(
    Method(
        name=NAME,
        quant_spec=lsq.quant_spec,
        section=SECTION,
        legacy_keys={f"binreg_{key.rstrip('_')}": key for key in SECTION},
        bin_regularization=DEFAULT_LAMBDA,
    )
)

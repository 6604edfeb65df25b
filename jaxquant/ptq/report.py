"""Accuracy of a quantized network, and the PTQ table and plot."""

from __future__ import annotations

import pathlib
from typing import Iterable, Sequence

import numpy as np

from jaxquant.ptq.capture import ActivationQuant, Quantizer, act_arrays
from jaxquant.ptq.config import METHOD_LABELS
from jaxquant.report import save_figure


def accuracy(
    quantizer: Quantizer,
    variables: dict,
    act: dict[str, ActivationQuant],
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int = 500,
) -> float:
    """Test accuracy of the network with ``variables`` and input quantizers ``act``."""
    from jaxquant.data import array_batches

    return batches_accuracy(quantizer, variables, act, array_batches(images, labels, batch_size))


def batches_accuracy(
    quantizer: Quantizer,
    variables: dict,
    act: dict[str, ActivationQuant],
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
) -> float:
    """`accuracy` over ``(images, labels)`` batches (a dataset's ``test_batches``)."""
    from jaxquant.training import batches_accuracy as predict_accuracy

    arrays = act_arrays(quantizer.layers, act)
    return predict_accuracy(
        lambda images: quantizer.predict(
            variables, quantizer.network.inputs(images, False), arrays
        ),
        batches,
    )


def format_ptq_table(
    accuracy_table: dict[str, dict[str, float]],
    settings: Sequence[str],
    title: str = "",
    digits: int = 2,
    scale: float = 100.0,
) -> str:
    """Markdown: one row per method, one column per setting (``fp`` fills every column)."""
    lines = ([f"**{title}**", ""] if title else []) + [
        "| method | " + " | ".join(settings) + " |",
        "|---|" + "---:|" * len(settings),
    ]
    for method, row in accuracy_table.items():
        cells = [f"{scale * row[s]:.{digits}f}" if s in row else "" for s in settings]
        lines.append(f"| {METHOD_LABELS.get(method, method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def draw_ptq_bars(ax, accuracy_table: dict[str, dict[str, float]], settings: Sequence[str]) -> None:
    """Grouped bars on ``ax``: test accuracy per setting, one bar per method, FP as a dashed
    line."""
    methods = [m for m in accuracy_table if m != "fp"]
    width = 0.8 / max(len(methods), 1)
    for k, method in enumerate(methods):
        xs = [i + (k - (len(methods) - 1) / 2) * width for i in range(len(settings))]
        ax.bar(
            xs,
            [100 * accuracy_table[method].get(s, np.nan) for s in settings],
            width,
            label=METHOD_LABELS.get(method, method),
        )
    if "fp" in accuracy_table:
        fp = 100 * next(iter(accuracy_table["fp"].values()))
        ax.axhline(fp, color="black", linestyle="--", linewidth=1, label=f"FP ({fp:.2f})")
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels(settings)
    ax.set_ylabel("test accuracy (%)")
    values = [100 * v for row in accuracy_table.values() for v in row.values()]
    ax.set_ylim(max(0.0, min(values) - 5), min(100.0, max(values) + 3))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")


def plot_ptq(
    accuracy_table: dict[str, dict[str, float]],
    settings: Sequence[str],
    path: str | pathlib.Path,
    title: str = "",
) -> pathlib.Path:
    """`draw_ptq_bars` in a figure of its own, saved to ``path``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 3.8), dpi=120)
    ax = fig.subplots()
    draw_ptq_bars(ax, accuracy_table, settings)
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)

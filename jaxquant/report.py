"""Results: the per-bit-width accuracy table, its JSON file and the accuracy-vs-bit-width plot."""

from __future__ import annotations

import json
import pathlib
from typing import Mapping

FP_LABEL = "FP"


def bits_label(bits: int) -> str:
    """``'FP'`` for 32 bits (full precision), else ``'<b>-bit'``."""
    return FP_LABEL if int(bits) >= 32 else f"{int(bits)}-bit"


def format_table(results: Mapping[str, Mapping[int, float]], title: str = "") -> str:
    """A Markdown table: one row per run (method), one column per bit-width, accuracy in %."""
    all_bits = sorted({int(b) for accuracies in results.values() for b in accuracies})
    header = "| run | " + " | ".join(bits_label(b) for b in all_bits) + " |"
    lines = ([f"**{title}**", ""] if title else []) + [header, "|---|" + "---:|" * len(all_bits)]
    for run, accuracies in results.items():
        accuracies = {int(b): a for b, a in accuracies.items()}
        cells = [f"{100 * accuracies[b]:.2f}" if b in accuracies else "" for b in all_bits]
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_results(
    workdir: str | pathlib.Path, accuracies: Mapping[int, float], extra: dict | None = None
) -> pathlib.Path:
    """Write ``results.json`` (``{"accuracy": {"2": 0.93, ..., "32": 0.97}, ...}``) in the
    workdir."""
    path = pathlib.Path(workdir) / "results.json"
    payload = {"accuracy": {str(int(b)): float(a) for b, a in accuracies.items()}, **(extra or {})}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def plot_accuracy(
    results: Mapping[str, Mapping[int, float]], path: str | pathlib.Path, title: str = ""
) -> pathlib.Path:
    """Accuracy (%) against bit-width, one line per run; FP (32 bits) drawn as a dashed level in
    the run's colour (a run with FP only: the level alone, labelled with the run). Run i takes
    matplotlib's colour ``C<i>``, so plots of the same runs in the same order match."""
    # A bare Figure draws without pyplot, so a notebook's backend (inline, widget) is left alone.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.8), dpi=120)
    ax = fig.subplots()
    for i, (run, accuracies) in enumerate(results.items()):
        accuracies = {int(b): 100 * a for b, a in accuracies.items()}
        low = sorted(b for b in accuracies if b < 32)
        if low:
            ax.plot(low, [accuracies[b] for b in low], marker="o", color=f"C{i}", label=run)
        if 32 in accuracies:
            ax.axhline(
                accuracies[32],
                color=f"C{i}",
                linestyle="--",
                linewidth=1,
                label=f"{run} (FP)" if low else run,
            )
    ax.set_xlabel("bit-width (weights and activations)")
    ax.set_ylabel("test accuracy (%)")
    ticks = sorted({int(b) for a in results.values() for b in a if int(b) < 32})
    if ticks:
        ax.set_xticks(ticks)
    ax.grid(alpha=0.3)
    legend(fig, ax, len(results))
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def legend(fig, ax, rows: int) -> None:
    """The legend inside the axes for up to 4 rows; beside them, on a wider figure, for more
    (a legend of 5+ entries inside would cover the lines)."""
    if rows <= 4:
        ax.legend(fontsize=8)
        return
    fig.set_figwidth(fig.get_figwidth() + 2.5)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def save_figure(fig, path: str | pathlib.Path) -> pathlib.Path:
    """``fig`` (a bare matplotlib ``Figure``) laid out tightly and saved to ``path``."""
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path)
    return path

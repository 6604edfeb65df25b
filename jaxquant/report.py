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
    """Accuracy (%) against bit-width, one line per run; FP (32 bits) drawn as a dashed level."""
    # A bare Figure draws without pyplot, so a notebook's backend (inline, widget) is left alone.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.8), dpi=120)
    ax = fig.subplots()
    for run, accuracies in results.items():
        accuracies = {int(b): 100 * a for b, a in accuracies.items()}
        low = sorted(b for b in accuracies if b < 32)
        (line,) = ax.plot(low, [accuracies[b] for b in low], marker="o", label=run)
        if 32 in accuracies:
            ax.axhline(
                accuracies[32],
                color=line.get_color(),
                linestyle="--",
                linewidth=1,
                label=f"{run} (FP)",
            )
    ax.set_xlabel("bit-width (weights and activations)")
    ax.set_ylabel("test accuracy (%)")
    ticks = sorted({int(b) for a in results.values() for b in a if int(b) < 32})
    if ticks:
        ax.set_xticks(ticks)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def save_figure(fig, path: str | pathlib.Path) -> pathlib.Path:
    """``fig`` (a bare matplotlib ``Figure``) laid out tightly and saved to ``path``."""
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path)
    return path

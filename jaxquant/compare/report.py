"""The compare's report: every entry's numbers (`collect`), the markdown table and the plots."""

from __future__ import annotations

import json
import pathlib

from jaxquant.compare.costs import (
    bitops,
    model_costs,
    ptq_bytes,
    ptq_fixed_layers,
    train_run_bytes,
    vertical_bytes,
)
from jaxquant.compare.planner import FP_BITS, Entry


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


def _finish(fig, ax, path, xlabel: str, title: str, rows: int) -> pathlib.Path:
    from jaxquant.report import legend, save_figure

    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    legend(fig, ax, rows)
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def plot_bytes(rows: dict, path, title: str = "") -> pathlib.Path:
    """Accuracy at each integer bit-width against the bytes to serve them all, one column of
    points per row, each point labelled with its bit-width; an FP-only row is one star. Row i
    takes colour ``C<i>``, as in the other two plots."""
    fig, ax = _figure()
    for i, row in enumerate(rows.values()):
        if row["bytes_all"] is None:
            continue
        low = sorted(b for b in row["accuracy"] if b < FP_BITS)
        if not low:
            ax.plot(
                [row["bytes_all"]],
                [100 * row["accuracy"][FP_BITS]],
                "*",
                ms=10,
                color=f"C{i}",
                label=row["label"],
            )
            continue
        ys = [100 * row["accuracy"][b] for b in low]
        ax.plot([row["bytes_all"]] * len(low), ys, marker="o", color=f"C{i}", label=row["label"])
        for b, y in zip(low, ys):
            ax.annotate(
                str(b),
                (row["bytes_all"], y),
                xytext=(4, -3),
                textcoords="offset points",
                fontsize=6,
                color=f"C{i}",
            )
    ax.set_xscale("log")
    return _finish(fig, ax, path, "bytes to serve every bit-width (log)", title, len(rows))


def plot_bitops(rows: dict, path, title: str = "") -> pathlib.Path:
    """Accuracy against BitOPs per image, one line per row through its bit-widths; FP as a
    dashed level in its row's colour."""
    fig, ax = _figure()
    for i, row in enumerate(rows.values()):
        low = sorted(b for b in row["bitops"] if b in row["accuracy"])
        if low:
            ax.plot(
                [row["bitops"][b] for b in low],
                [100 * row["accuracy"][b] for b in low],
                marker="o",
                color=f"C{i}",
                label=row["label"],
            )
        if FP_BITS in row["accuracy"]:
            ax.axhline(
                100 * row["accuracy"][FP_BITS],
                color=f"C{i}",
                linestyle="--",
                linewidth=1,
                label=f"{row['label']} (FP)" if low else row["label"],
            )
    ax.set_xscale("log")
    return _finish(fig, ax, path, "BitOPs per image (log)", title, len(rows))

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

The package: `planner` (the config resolved into runs and checked), `runner` (train / PTQ what is
not finished), `costs` (layers, bytes, BitOPs), `report` (the numbers, the table, the plots) and
`compare`, the command that chains them.
"""

from __future__ import annotations

import json
import pathlib
import time

from jaxquant.compare.costs import FLOAT_BYTES, Layer, bitops, model_costs, packed
from jaxquant.compare.planner import FP_BITS, Entry, Run, load, plan, requested_bits
from jaxquant.compare.report import (
    NOTES,
    collect,
    columns,
    format_compare_table,
    plot_bitops,
    plot_bytes,
)
from jaxquant.compare.runner import run_entries

__all__ = [
    "FLOAT_BYTES",
    "FP_BITS",
    "Entry",
    "Layer",
    "Run",
    "bitops",
    "collect",
    "compare",
    "load",
    "model_costs",
    "packed",
    "plan",
    "requested_bits",
    "run_entries",
]


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

"""Running the notebooks in notebooks/ from the tests (``tests/test_notebook*.py``, one file per
notebook so that pytest-xdist spreads them over its workers).

Each notebook has one settings cell tagged ``parameters``; the test inserts a cell after it that
overrides those values (papermill's convention) and executes a copy with nbclient in a kernel
that runs this interpreter, so neither a globally installed kernel nor the repo is touched.
"""

import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"


def execute(path: pathlib.Path, kernel: str, overrides: str, timeout: int = 300):
    """Execute a copy of the notebook with ``overrides`` run after its ``parameters`` cell."""
    nb = nbformat.read(path, as_version=4)
    tagged = [
        i
        for i, cell in enumerate(nb.cells)
        if "parameters" in cell.get("metadata", {}).get("tags", [])
    ]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    injected = nbformat.v4.new_code_cell(overrides, metadata={"tags": ["injected-parameters"]})
    injected["id"] = "injected-parameters"
    nb.cells.insert(tagged[0] + 1, injected)
    client = nbclient.NotebookClient(
        nb, kernel_name=kernel, timeout=timeout, resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    return nb


def parameters(workdir, *settings: str) -> str:
    """The injected cell: ``settings``, the run's ``WORKDIR``, and a check that the kernel runs
    this interpreter."""
    return "\n".join(
        [
            *settings,
            f"WORKDIR = {str(workdir)!r}",
            "import sys",
            f"assert sys.executable == {sys.executable!r}, sys.executable",
        ]
    )


def outputs(nb, output_type=None):
    return [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if output_type is None or out["output_type"] == output_type
    ]

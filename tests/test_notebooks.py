"""The notebooks in notebooks/ run top to bottom (with small settings) and show their outputs.

Each notebook has one settings cell tagged ``parameters``; the test inserts a cell after it that
overrides those values (papermill's convention) and executes a copy with nbclient in a kernel
that runs this interpreter, so neither a globally installed kernel nor the repo is touched.
"""
import json
import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "jaxquant-tests"


@pytest.fixture
def kernel_of_this_interpreter(tmp_path, monkeypatch):
    """A kernelspec that launches ``sys.executable`` (JUPYTER_PATH is searched first), so the
    notebook runs in the venv that runs the tests whatever kernels the machine has installed."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "jaxquant tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return KERNEL


def execute(path: pathlib.Path, kernel: str, overrides: str, timeout: int = 300):
    """Execute a copy of the notebook with ``overrides`` run after its ``parameters`` cell."""
    nb = nbformat.read(path, as_version=4)
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    injected = nbformat.v4.new_code_cell(overrides, metadata={"tags": ["injected-parameters"]})
    injected["id"] = "injected-parameters"
    nb.cells.insert(tagged[0] + 1, injected)
    client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=timeout,
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    return nb


def parameters(workdir, *settings: str) -> str:
    """The injected cell: ``settings``, the run's ``WORKDIR``, and a check that the kernel runs
    this interpreter."""
    return "\n".join([*settings, f"WORKDIR = {str(workdir)!r}", "import sys",
                      f"assert sys.executable == {sys.executable!r}, sys.executable"])


def outputs(nb, output_type=None):
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
            if output_type is None or out["output_type"] == output_type]


def test_committed_notebooks_have_no_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: clear its outputs"


def test_vertical_layering_notebook_runs(tmp_path, kernel_of_this_interpreter):
    workdir = tmp_path / "run"
    overrides = parameters(
        workdir,
        "EPOCHS = 1",
        "WIDTHS = (8, 8, 8)",
        "BITS = (2, 4, 8, 32)",  # 3, 5, 6, 7 come from the cascade with borrowed, re-estimated BN
    )
    nb = execute(NOTEBOOKS / "vertical_layering.ipynb", kernel_of_this_interpreter, overrides)
    assert not outputs(nb, "error")
    text = "".join(out.get("text", "") for out in outputs(nb, "stream"))
    assert "jaxquant train: vertical / small_cnn on digits" in text  # the CLI ran
    assert "integer execution agrees with fake-quant at every bit-width" in text
    markdown = [out["data"]["text/markdown"] for out in outputs(nb, "display_data") if "text/markdown" in out["data"]]
    table = next(m for m in markdown if "bytes read" in m)
    for k in range(2, 9):
        assert f"\n| {k} | " in table, f"no row for {k} bits in the table"
    assert any("max abs logit difference" in m for m in markdown)
    figures = [out for out in outputs(nb, "display_data") if "image/png" in out["data"]]
    assert len(figures) == 1, "the notebook should show one figure (accuracy and bytes read vs bit-width)"
    assert (workdir / "model.vl").is_file() and (workdir / "vertical_layering.png").is_file()


def test_mbquant_notebook_runs(tmp_path, kernel_of_this_interpreter):
    workdir = tmp_path / "run"
    overrides = parameters(
        workdir,
        "EPOCHS = 1",
        "WIDTHS = (8, 8, 8)",
    )
    nb = execute(NOTEBOOKS / "mbquant.ipynb", kernel_of_this_interpreter, overrides)
    assert not outputs(nb, "error")
    text = "".join(out.get("text", "") for out in outputs(nb, "stream"))
    assert "jaxquant train: mbquant / small_cnn on digits" in text  # the CLI ran
    markdown = [out["data"]["text/markdown"] for out in outputs(nb, "display_data") if "text/markdown" in out["data"]]
    selection = next(m for m in markdown if "amortised selection" in m)
    assert "\n| 5 |  | full | full | half | 2.5 |" in selection  # b=5: branches 1, 2 and half of 3
    table = next(m for m in markdown if "BitOPs" in m)
    for b in range(2, 9):
        assert f"\n| {b} | " in table, f"no row for {b} bits in the table"
    assert table.count("| 1.0000 |") == 7  # widths (8, 8, 8): the partial slice is half a branch
    figures = [out for out in outputs(nb, "display_data") if "image/png" in out["data"]]
    assert len(figures) == 1, "the notebook should show one figure (accuracy and BitOPs vs bit-width)"
    assert (workdir / "results.json").is_file() and (workdir / "mbquant.png").is_file()


def test_bin_regularization_notebook_runs(tmp_path, kernel_of_this_interpreter):
    workdir = tmp_path / "run"
    overrides = parameters(
        workdir,
        "EPOCHS = 1",  # two-stage: CE only for the first third of the epoch, then CE + BR
        "WIDTHS = (8, 8, 8)",
        "BITS = (2,)",
    )
    nb = execute(NOTEBOOKS / "bin_regularization.ipynb", kernel_of_this_interpreter, overrides)
    assert not outputs(nb, "error")
    text = "".join(out.get("text", "") for out in outputs(nb, "stream"))
    assert "jaxquant train: lsq / small_cnn on digits" in text  # both runs, through the CLI
    assert "jaxquant train: binreg / small_cnn on digits" in text
    assert "bin regularization lambda 0.5 two_stage" in text
    markdown = [out["data"]["text/markdown"] for out in outputs(nb, "display_data") if "text/markdown" in out["data"]]
    accuracy = next(m for m in markdown if "test accuracy (%)" in m)
    assert "\n| LSQ | 2/2 | " in accuracy and "\n| LSQ + BR (two-stage) | 2/2 | " in accuracy
    mse = next(m for m in markdown if "quantization MSE per layer" in m)
    assert "| LSQ: MSE / s^2 | LSQ + BR: MSE / s^2 |" in mse
    assert "\n| conv0 | 576 | " in mse and "\n| conv1 | 576 | " in mse and "\n| total | 1,152 | | | " in mse
    bins = next(m for m in markdown if "bins of conv" in m)
    assert "| LSQ: mean offset | LSQ: variance |" in bins and "BR of the layer in step units" in bins
    figures = [out for out in outputs(nb, "display_data") if "image/png" in out["data"]]
    assert len(figures) == 1, "the notebook should show one figure (the bins of one layer, LSQ vs LSQ + BR)"
    for run in ("lsq", "binreg"):
        assert (workdir / run / "results.json").is_file()
    assert (workdir / "bin_regularization.png").is_file()


def test_bitsplit_notebook_runs(tmp_path, kernel_of_this_interpreter):
    workdir = tmp_path / "run"
    overrides = parameters(
        workdir,
        "EPOCHS = 2",
        "WIDTHS = (8, 8, 8)",
        "SETTINGS = ('W4A8', 'W2A8')",
        "PTQ_EPOCHS = 3",
        "CALIBRATION_IMAGES = 64",
        "BN_BATCHES = 3",
    )
    nb = execute(NOTEBOOKS / "bitsplit_ptq.ipynb", kernel_of_this_interpreter, overrides)
    assert not outputs(nb, "error")
    text = "".join(out.get("text", "") for out in outputs(nb, "stream"))
    assert "jaxquant train: lsq / small_cnn on digits" in text  # the FP run, through the CLI
    assert "jaxquant ptq:" in text and "W2A8 BitSplit + ECAQ (our reading):" in text
    markdown = [out["data"]["text/markdown"] for out in outputs(nb, "display_data") if "text/markdown" in out["data"]]
    table = next(m for m in markdown if "test accuracy (%)" in m)
    assert "| method | W4A8 | W2A8 |" in table
    for label in ("FP (no quantization)", "round-to-nearest, per channel", "BitSplit", "BitSplit + ECAQ (our reading)"):
        assert f"\n| {label} | " in table
    assert "conv0: output error" in text and "% lower)" in text
    figures = [out for out in outputs(nb, "display_data") if "image/png" in out["data"]]
    assert len(figures) == 1, "the notebook should show one figure (accuracy, and the error per layer)"
    assert (workdir / "ptq" / "ptq_results.json").is_file() and (workdir / "bitsplit_ptq.png").is_file()

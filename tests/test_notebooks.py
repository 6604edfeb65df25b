"""The notebooks in notebooks/ are committed without outputs, and the Vertical Layering one runs
top to bottom with small settings. The other notebooks: ``test_notebook_<name>.py``, one file
each so that pytest-xdist spreads them over its workers; the runner: ``notebook_runner.py``."""

from notebook_runner import NOTEBOOKS, execute, nbformat, outputs, parameters


def test_committed_notebooks_have_no_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, (
                    f"{path.name}: clear its outputs"
                )


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
    markdown = [
        out["data"]["text/markdown"]
        for out in outputs(nb, "display_data")
        if "text/markdown" in out["data"]
    ]
    table = next(m for m in markdown if "bytes read" in m)
    for k in range(2, 9):
        assert f"\n| {k} | " in table, f"no row for {k} bits in the table"
    assert any("max abs logit difference" in m for m in markdown)
    figures = [out for out in outputs(nb, "display_data") if "image/png" in out["data"]]
    assert len(figures) == 1, (
        "the notebook should show one figure (accuracy and bytes read vs bit-width)"
    )
    assert (workdir / "model.vl").is_file() and (workdir / "vertical_layering.png").is_file()

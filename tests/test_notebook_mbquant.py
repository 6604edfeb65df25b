"""notebooks/mbquant.ipynb runs top to bottom with small settings and shows its outputs."""

from notebook_runner import (
    NOTEBOOKS,
    execute,
    fresh_venv_kernel,  # noqa: F401  (the notebook_kernel fixture)
    outputs,
    parameters,
)


def test_mbquant_notebook_runs(tmp_path, notebook_kernel):
    workdir = tmp_path / "run"
    overrides = parameters(
        workdir,
        "EPOCHS = 1",
        "WIDTHS = (8, 8, 8)",
    )
    nb = execute(NOTEBOOKS / "mbquant.ipynb", notebook_kernel, overrides)
    assert not outputs(nb, "error")
    text = "".join(out.get("text", "") for out in outputs(nb, "stream"))
    assert "jaxquant train: mbquant / small_cnn on digits" in text  # the CLI ran
    markdown = [
        out["data"]["text/markdown"]
        for out in outputs(nb, "display_data")
        if "text/markdown" in out["data"]
    ]
    selection = next(m for m in markdown if "amortised selection" in m)
    assert "\n| 5 |  | full | full | half | 2.5 |" in selection  # b=5: branches 1, 2 and half of 3
    table = next(m for m in markdown if "BitOPs" in m)
    for b in range(2, 9):
        assert f"\n| {b} | " in table, f"no row for {b} bits in the table"
    assert table.count("| 1.0000 |") == 7  # widths (8, 8, 8): the partial slice is half a branch
    figures = [out for out in outputs(nb, "display_data") if "image/png" in out["data"]]
    assert len(figures) == 1, (
        "the notebook should show one figure (accuracy and BitOPs vs bit-width)"
    )
    assert (workdir / "results.json").is_file() and (workdir / "mbquant.png").is_file()

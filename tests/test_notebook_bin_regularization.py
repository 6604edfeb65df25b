"""notebooks/bin_regularization.ipynb runs top to bottom with small settings and shows its
outputs."""

from notebook_runner import (
    NOTEBOOKS,
    execute,
    fresh_venv_kernel,  # noqa: F401  (the notebook_kernel fixture)
    outputs,
    parameters,
)


def test_bin_regularization_notebook_runs(tmp_path, notebook_kernel):
    workdir = tmp_path / "run"
    overrides = parameters(
        workdir,
        "EPOCHS = 1",  # two-stage: CE only for the first third of the epoch, then CE + BR
        "WIDTHS = (8, 8, 8)",
        "BITS = (2,)",
    )
    nb = execute(NOTEBOOKS / "bin_regularization.ipynb", notebook_kernel, overrides)
    assert not outputs(nb, "error")
    text = "".join(out.get("text", "") for out in outputs(nb, "stream"))
    assert "jaxquant train: lsq / small_cnn on digits" in text  # both runs, through the CLI
    assert "jaxquant train: binreg / small_cnn on digits" in text
    assert "bin regularization lambda 0.5 two_stage" in text
    markdown = [
        out["data"]["text/markdown"]
        for out in outputs(nb, "display_data")
        if "text/markdown" in out["data"]
    ]
    accuracy = next(m for m in markdown if "test accuracy (%)" in m)
    assert "\n| LSQ | 2/2 | " in accuracy and "\n| LSQ + BR (two-stage) | 2/2 | " in accuracy
    mse = next(m for m in markdown if "quantization MSE per layer" in m)
    assert "| LSQ: MSE / s^2 | LSQ + BR: MSE / s^2 |" in mse
    assert (
        "\n| conv0 | 576 | " in mse
        and "\n| conv1 | 576 | " in mse
        and "\n| total | 1,152 | | | " in mse
    )
    bins = next(m for m in markdown if "bins of conv" in m)
    assert (
        "| LSQ: mean offset | LSQ: variance |" in bins and "BR of the layer in step units" in bins
    )
    figures = [out for out in outputs(nb, "display_data") if "image/png" in out["data"]]
    assert len(figures) == 1, (
        "the notebook should show one figure (the bins of one layer, LSQ vs LSQ + BR)"
    )
    for run in ("lsq", "binreg"):
        assert (workdir / run / "results.json").is_file()
    assert (workdir / "bin_regularization.png").is_file()

"""notebooks/bitsplit_ptq.ipynb runs top to bottom with small settings and shows its outputs."""

from notebook_runner import (
    NOTEBOOKS,
    execute,
    fresh_venv_kernel,  # noqa: F401  (the notebook_kernel fixture)
    outputs,
    parameters,
)


def test_bitsplit_notebook_runs(tmp_path, notebook_kernel):
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
    nb = execute(NOTEBOOKS / "bitsplit_ptq.ipynb", notebook_kernel, overrides)
    assert not outputs(nb, "error")
    text = "".join(out.get("text", "") for out in outputs(nb, "stream"))
    assert "jaxquant train: lsq / small_cnn on digits" in text  # the FP run, through the CLI
    assert "jaxquant ptq:" in text and "W2A8 BitSplit + ECAQ (our reading):" in text
    markdown = [
        out["data"]["text/markdown"]
        for out in outputs(nb, "display_data")
        if "text/markdown" in out["data"]
    ]
    table = next(m for m in markdown if "test accuracy (%)" in m)
    assert "| method | W4A8 | W2A8 |" in table
    for label in (
        "FP (no quantization)",
        "round-to-nearest, per channel",
        "BitSplit",
        "BitSplit + ECAQ (our reading)",
    ):
        assert f"\n| {label} | " in table
    assert "conv0: output error" in text and "% lower)" in text
    figures = [out for out in outputs(nb, "display_data") if "image/png" in out["data"]]
    assert len(figures) == 1, (
        "the notebook should show one figure (accuracy, and the error per layer)"
    )
    assert (workdir / "ptq" / "ptq_results.json").is_file() and (
        workdir / "bitsplit_ptq.png"
    ).is_file()

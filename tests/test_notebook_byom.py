"""notebooks/bring_your_own_model.ipynb runs top to bottom with small settings: a Linen and an
NNX CNN trained at every bit-width through jaxquant.quantize, BitSplit PTQ, a table, a plot."""

from notebook_runner import (
    NOTEBOOKS,
    execute,
    fresh_venv_kernel,  # noqa: F401  (the notebook_kernel fixture)
    outputs,
    parameters,
)


def test_bring_your_own_model_notebook_runs(tmp_path, notebook_kernel):
    workdir = tmp_path / "run"
    overrides = parameters(workdir, "EPOCHS = 2", "PTQ_EPOCHS = 3", "PTQ_SETTINGS = ('W4A8',)")
    nb = execute(NOTEBOOKS / "bring_your_own_model.ipynb", notebook_kernel, overrides)
    assert not outputs(nb, "error")
    text = "".join(out.get("text", "") for out in outputs(nb, "stream"))
    assert "linen test accuracy:" in text and "nnx test accuracy:" in text
    assert "BitSplit PTQ test accuracy:" in text
    markdown = [
        out["data"]["text/markdown"]
        for out in outputs(nb, "display_data")
        if "text/markdown" in out["data"]
    ]
    table = next(m for m in markdown if "test accuracy (%) by bit-width" in m)
    assert "| model | 2-bit | 4-bit | 8-bit | FP |" in table
    for row in ("Linen CNN, jaxquant.quantize", "NNX CNN, jaxquant.quantize", "| FP | W4A8 |"):
        assert row in table
    figures = [out for out in outputs(nb, "display_data") if "image/png" in out["data"]]
    assert len(figures) == 1
    assert (workdir / "accuracy_vs_bits.png").is_file()

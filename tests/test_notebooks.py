"""The notebooks in notebooks/ are committed without outputs, open with the same install cells
(``notebook_install_cell.py``), whose logic works without a kernel too, link only to files inside
the repository (the README too), and the Vertical Layering one runs top to bottom with small
settings. The other notebooks: ``test_notebook_<name>.py``, one file each so that pytest-xdist
spreads them over its workers; the runner: ``notebook_runner.py``."""

import re
import subprocess
import sys

import notebook_install_cell
import pytest
from notebook_runner import (
    NOTEBOOKS,
    execute,
    fresh_venv_kernel,  # noqa: F401  (the notebook_kernel fixture)
    nbformat,
    outputs,
    parameters,
)


def test_committed_notebooks_have_no_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, (
                    f"{path.name}: clear its outputs"
                )


def test_vertical_layering_notebook_runs(tmp_path, notebook_kernel):
    workdir = tmp_path / "run"
    overrides = parameters(
        workdir,
        "EPOCHS = 1",
        "WIDTHS = (8, 8, 8)",
        "BITS = (2, 4, 8, 32)",  # 3, 5, 6, 7 come from the cascade with borrowed, re-estimated BN
    )
    nb = execute(NOTEBOOKS / "vertical_layering.ipynb", notebook_kernel, overrides)
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


def test_every_notebook_opens_with_the_same_install_cells():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        expected = notebook_install_cell.cells(nbformat)
        found = [(cell.get("id"), cell.cell_type, cell.source) for cell in nb.cells[1:3]]
        assert found == [(cell["id"], cell.cell_type, cell.source) for cell in expected], (
            f"{path.name}: its install cells differ from tests/notebook_install_cell.py: "
            "run `python tests/notebook_install_cell.py`"
        )
        assert nb.cells[0].cell_type == "markdown", f"{path.name}: the first cell is its title"


inputtransformer2 = pytest.importorskip("IPython.core.inputtransformer2")
STUB = """\
class _Shell:  # get_ipython(): prints the magic, as IPython would expand it, and stops
    def run_line_magic(self, magic, line):
        print(magic, line.replace("{_spec}", _spec))
        raise SystemExit(0)
get_ipython = _Shell
"""


def run_install_cell(cwd, spec="", site=True):
    """The install cell's Python (IPython's translation) in a subprocess, with ``%pip`` stubbed;
    without ``site`` the interpreter does not see site-packages, so jaxquant is not importable."""
    code = inputtransformer2.TransformerManager().transform_cell(notebook_install_cell.CODE)
    assert code.count('JAXQUANT_SPEC = ""') == 1
    code = STUB + code.replace('JAXQUANT_SPEC = ""', f"JAXQUANT_SPEC = {spec!r}")
    flags = [] if site else ["-S"]
    return subprocess.run(
        [sys.executable, *flags, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_install_cell_without_a_checkout_or_spec_says_what_to_set(tmp_path):
    done = run_install_cell(tmp_path, site=False)
    assert done.returncode != 0
    assert "RuntimeError: jaxquant is not installed: set JAXQUANT_SPEC" in done.stderr


def test_install_cell_installs_the_checkout_it_sits_in():
    done = run_install_cell(NOTEBOOKS, site=False)
    assert done.stdout == f'pip install -q "{NOTEBOOKS.parent}"\n', done.stderr


def test_install_cell_installs_a_wheel_of_another_version(tmp_path):
    # jaxquant is importable here (the venv's own, version 0.1.0...), but not the wheel's version
    wheel = "/content/jaxquant-999.0-py3-none-any.whl"
    done = run_install_cell(tmp_path, spec=wheel)
    assert done.stdout == f'pip install -q "{wheel}"\n', done.stderr


MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)


def test_links_in_the_notebooks_and_readme_stay_inside_the_repository():
    root = NOTEBOOKS.parent.resolve()
    texts = [(root / "README.md", (root / "README.md").read_text())]
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        texts += [(path, cell.source) for cell in nb.cells if cell.cell_type == "markdown"]
    checked = 0
    for path, text in texts:
        for target in MARKDOWN_LINK.findall(text) + REFERENCE_LINK.findall(text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL (https:, mailto:) or an anchor in the same page
            file = target.split("#")[0].split("?")[0]
            assert not file.startswith("/"), f"{path.name}: {target} is an absolute path"
            resolved = (path.parent / file).resolve()
            assert resolved.is_relative_to(root), f"{path.name}: {target} leaves the repository"
            assert resolved.exists(), f"{path.name}: {target} does not exist"
            checked += 1
    assert checked > 10
    for path, text in texts:  # nor do they name the notes the project was written from
        for outside in ("../shared", "shared/", "digest"):
            assert outside not in text, f"{path.name} points to {outside!r}"

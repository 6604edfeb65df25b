"""The install cells of the notebooks in notebooks/, one source for all of them.

Every notebook opens with its title cell, then these two cells: a short note on installing
(markdown) and the install cell (code). ``tests/test_notebooks.py`` fails when a notebook's copy
drifts from this file; after changing the text here, rewrite the notebooks with

    .venv/bin/python tests/notebook_install_cell.py

which also adds the two cells to a new notebook (after its first cell).

The install cell installs jaxquant from one pip requirement, ``JAXQUANT_SPEC``: by default the
checkout the notebook sits in (``../pyproject.toml`` names jaxquant), or whatever the user sets (a
``git+https://`` URL, or the path or URL of a wheel; Colab has no checkout). It is a no-op when
jaxquant is importable at the expected version (the checkout's, or the wheel's), installs with
``%pip`` into the kernel's own environment and makes the package importable without restarting
the kernel; it warns in one line when pip changed jax, numpy, ... after they were imported (then
only a restart helps). The notebooks need nothing beyond jaxquant's own dependencies (matplotlib,
scikit-learn and tqdm are among them), which the tests check by running every notebook in a fresh
virtualenv that holds only ipykernel (``tests/notebook_runner.py``).
"""

import pathlib
import sys

NOTES_ID = "install-notes"
CODE_ID = "install"

NOTES = """\
**Installing.** The next cell installs jaxquant, with the packages these notebooks use (jax, Flax,
matplotlib, scikit-learn), into this kernel, and does nothing when the right version is already
importable. Run from a checkout (this notebook in its `notebooks/` folder), it installs that
checkout. **In Colab** (or anywhere without a checkout): set `JAXQUANT_SPEC` at the top of the cell
to a pip requirement for jaxquant: the repository's git URL,
`JAXQUANT_SPEC = "git+https://github.com/OWNER/jaxquant.git"`, or a wheel built in a checkout by
`pip wheel --no-deps -w dist .` and uploaded to the session,
`JAXQUANT_SPEC = "/content/jaxquant-VERSION-py3-none-any.whl"`. If the cell warns that pip changed
jax or numpy, restart the session (Runtime > Restart session) and run the notebook from the top."""

CODE = """\
# Install jaxquant into this kernel (a no-op when the right version is already importable): from
# the checkout this notebook sits in, else from JAXQUANT_SPEC, a pip requirement (needed in Colab).
JAXQUANT_SPEC = ""  # e.g. "git+https://github.com/OWNER/jaxquant.git" or a wheel's path or URL

import importlib
import importlib.metadata
import importlib.util
import pathlib
import re
import site
import sys


def _version_of(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


_spec, _expected = JAXQUANT_SPEC.strip(), None  # _expected None: any installed version will do
_pyproject = pathlib.Path.cwd().parent / "pyproject.toml"
_project = _pyproject.read_text() if _pyproject.is_file() else ""
if _spec:
    _wheel = re.search(r"jaxquant-([^-/]+)-[^/]*\\.whl$", _spec)
    _expected = _wheel.group(1) if _wheel else None
elif re.search(r'^name\\s*=\\s*"jaxquant"\\s*$', _project, re.M):
    _spec = str(_pyproject.parent)  # this notebook runs in a checkout: install the checkout
    _version = re.search(r'^version\\s*=\\s*"([^"]+)"', _project, re.M)
    _expected = _version.group(1) if _version else None

if importlib.util.find_spec("jaxquant") is None or _expected not in (None, _version_of("jaxquant")):
    if not _spec:
        raise RuntimeError(
            "jaxquant is not installed: set JAXQUANT_SPEC at the top of this cell to a pip "
            'requirement for it (the repository\\'s "git+https://..." URL, or the path or URL of a '
            "wheel built in a checkout by `pip wheel --no-deps .`) and run this cell again")
    _imported = {name: _version_of(name) for name in ("jax", "jaxlib", "numpy", "flax", "optax")
                 if name in sys.modules}
    %pip install -q "{_spec}"
    importlib.invalidate_caches()
    for _name in [name for name in sys.modules if name.split(".")[0] == "jaxquant"]:
        del sys.modules[_name]  # an older jaxquant was imported: the next import loads the new one
    if importlib.util.find_spec("jaxquant") is None:  # installed where the kernel does not look yet
        for _directory in [*site.getsitepackages(), site.getusersitepackages()]:
            site.addsitedir(_directory)
    if importlib.util.find_spec("jaxquant") is None:
        raise RuntimeError(f"pip did not install jaxquant from {_spec!r}: see its messages above")
    _changed = [f"{name} {old} -> {_version_of(name)}" for name, old in _imported.items()
                if _version_of(name) != old]
    if _changed:
        print(f"Warning: pip changed {', '.join(_changed)} after it was imported: restart the "
              "kernel (Colab: Runtime > Restart session) and run the notebook from the top.")

import jaxquant

print("jaxquant", jaxquant.__version__, "from", pathlib.Path(jaxquant.__file__).parent)"""


def cells(nbformat):
    """The two cells, as ``nbformat`` (version 4) cells."""
    notes = nbformat.v4.new_markdown_cell(NOTES)
    notes["id"] = NOTES_ID
    code = nbformat.v4.new_code_cell(CODE)
    code["id"] = CODE_ID
    return [notes, code]


def synced(nb, nbformat):
    """``nb`` with the current install cells right after its first cell (the title), replacing
    the cells with their ids wherever they were."""
    rest = [cell for cell in nb.cells if cell.get("id") not in (NOTES_ID, CODE_ID)]
    nb.cells = rest[:1] + cells(nbformat) + rest[1:]
    return nb


def main(argv=None):
    import nbformat

    folder = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
    for path in sorted(folder.glob("*.ipynb")):
        text = path.read_text()
        nb = synced(nbformat.reads(text, as_version=4), nbformat)
        new = nbformat.writes(nb) + "\n"
        if new != text:
            path.write_text(new)
            print(f"rewrote {path.name}'s install cells")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

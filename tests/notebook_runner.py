"""Running the notebooks in notebooks/ from the tests (``tests/test_notebook*.py``, one file per
notebook so that pytest-xdist spreads them over its workers).

Every notebook runs as a Colab user runs it: in a kernel of a fresh virtualenv that holds nothing
but ipykernel (the session fixture ``notebook_kernel``, created once per test session and shared
by the xdist workers), so the notebook's own install cell (``notebook_install_cell.py``) installs
jaxquant from this checkout, with everything the notebook imports, and the notebook fails here
if that is not enough. The first notebook to run installs it; the others find it installed (their
install cell is then a no-op). The checkout is installed non-editable, as Colab gets it: a built
package in site-packages, not this tree; pip builds it in the tree's ``build/`` and
``jaxquant.egg-info/`` (both ignored by git).

Each notebook has one settings cell tagged ``parameters``; the test inserts a cell after it that
overrides those values (papermill's convention) and executes a copy with nbclient, so neither a
globally installed kernel nor the repo's notebooks are touched.
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import pytest
from notebook_install_cell import CODE_ID

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("jupyter_client.kernelspec")
manager = pytest.importorskip("jupyter_client.manager")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNEL_NAME = "jaxquant-fresh-venv"
INSTALL_TIMEOUT = 900  # s, for the install cell: pip may have to download jax and the rest
# One pip at a time per checkout: the xdist workers install into the same venv, and pip builds
# the checkout in its build/ folder (other test sessions of this checkout included).
INSTALL_LOCK = pathlib.Path(tempfile.gettempdir()) / (
    f"jaxquant-notebook-install-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}.lock"
)


@dataclasses.dataclass(frozen=True)
class Kernel:
    python: str  # the venv's interpreter: the kernel's sys.executable
    kernels: str  # the folder that holds the kernel's spec


@contextlib.contextmanager
def locked(path: pathlib.Path):
    """An exclusive lock on ``path`` (created if missing), across processes."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session", name="notebook_kernel")
def fresh_venv_kernel(tmp_path_factory) -> Kernel:
    """A kernel in a fresh virtualenv with only ipykernel installed, one per test session.

    Under pytest-xdist every worker has its own session fixtures, so the venv lies in the folder
    the workers' temporary folders share, and the first worker to get here creates it under a
    lock while the others wait for it. Skips (every notebook test) when it cannot be created, for
    instance without the package registry."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # pytest-N/, shared by this session's workers
    with locked(base / "notebook-venv.lock"):
        return _fresh_venv(base / "notebook-venv")


def _fresh_venv(venv: pathlib.Path) -> Kernel:
    python = venv / "bin" / "python"
    kernels = venv / "share" / "jupyter" / "kernels"
    kernel = Kernel(python=str(python), kernels=str(kernels))
    refused = venv.with_name(venv.name + ".skipped")  # why it could not be created
    if refused.is_file():
        pytest.skip(refused.read_text())
    if (kernels / KERNEL_NAME / "kernel.json").is_file():
        return kernel
    start = time.perf_counter()
    for command in (
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "ipykernel"],
    ):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
            failed = done.returncode != 0
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            said = next((line for line in reversed(lines) if not line.startswith("WARNING")), "")
        except subprocess.TimeoutExpired:
            failed, said = True, f"no answer in {INSTALL_TIMEOUT} s"
        if failed:
            reason = f"no fresh virtualenv for the notebooks: {' '.join(command[2:])}: {said}"
            refused.write_text(reason)
            pytest.skip(reason)
    hidden = subprocess.run(
        [str(python), "-c", "import importlib.util; print(importlib.util.find_spec('jaxquant'))"],
        cwd=NOTEBOOKS,
        capture_output=True,
        text=True,
    )
    assert hidden.stdout.strip() == "None", (
        f"the fresh venv sees jaxquant before any notebook installed it ({hidden.stdout.strip()}"
        f"{hidden.stderr.strip()}): is PYTHONPATH set?"
    )
    (kernels / KERNEL_NAME).mkdir(parents=True)
    (kernels / KERNEL_NAME / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "jaxquant notebooks (fresh venv)",
                "language": "python",
            }
        )
    )
    print(f"fresh venv with ipykernel: {time.perf_counter() - start:.1f} s ({venv})")
    return kernel


def execute(path: pathlib.Path, kernel: Kernel, overrides: str, timeout: int = 300):
    """Execute a copy of the notebook in ``kernel`` with ``overrides`` run after its
    ``parameters`` cell, and with a check that the kernel runs the venv's interpreter and the
    jaxquant its install cell installed there."""
    nb = nbformat.read(path, as_version=4)
    tagged = [
        i
        for i, cell in enumerate(nb.cells)
        if "parameters" in cell.get("metadata", {}).get("tags", [])
    ]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    checks = [
        "import pathlib",
        "import sys",
        f"assert sys.executable == {kernel.python!r}, sys.executable",
        "assert pathlib.Path(jaxquant.__file__).is_relative_to(sys.prefix), jaxquant.__file__",
    ]
    injected = nbformat.v4.new_code_cell(
        "\n".join([overrides, *checks]), metadata={"tags": ["injected-parameters"]}
    )
    injected["id"] = "injected-parameters"
    nb.cells.insert(tagged[0] + 1, injected)
    km = manager.AsyncKernelManager(
        kernel_name=KERNEL_NAME,
        kernel_spec_manager=kernelspec.KernelSpecManager(kernel_dirs=[kernel.kernels]),
    )
    client = nbclient.NotebookClient(
        nb, km=km, timeout=timeout, resources={"metadata": {"path": str(path.parent)}}
    )
    with client.setup_kernel(cleanup_kc=True):  # the client shuts the kernel down at the end
        for index, cell in enumerate(nb.cells):
            if cell.get("id") != CODE_ID:
                client.execute_cell(cell, index)
                continue
            client.timeout = INSTALL_TIMEOUT
            with locked(INSTALL_LOCK):
                start = time.perf_counter()
                client.execute_cell(cell, index)
                print(f"{path.name}: install cell {time.perf_counter() - start:.1f} s")
            client.timeout = timeout
    return nb


def parameters(workdir, *settings: str) -> str:
    """The injected cell's settings: ``settings`` and the run's ``WORKDIR``."""
    return "\n".join([*settings, f"WORKDIR = {str(workdir)!r}"])


def outputs(nb, output_type=None):
    return [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if output_type is None or out["output_type"] == output_type
    ]

import json
import os
import shutil
import sys
import tempfile

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The suite compiles hundreds of programs and runs most of them for milliseconds, so compile
# time is most of its time. LLVM's optimisation level 0 (XLA's own HLO passes still run, and
# convolutions and matmuls still call the same library kernels) took tests/test_cli.py +
# tests/test_training.py from 244 s to 156 s on the 2-core machine (a level already set in
# XLA_FLAGS is kept, which is how to compare). Set here, before JAX starts, so xdist workers,
# CLI subprocesses and notebook kernels inherit it. Benchmarks and real runs keep XLA's defaults.
TEST_XLA_FLAG = "--xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAG}".strip()

# The suite is dominated by XLA compilation, and many tests compile the same programs (the CLI
# runs the same digits step in several tests, in-process and in subprocesses; the notebooks run
# in their own kernels). A persistent compilation cache, passed on through the environment so
# subprocesses and pytest-xdist workers share it, compiles each of them once per session. A hit
# loads the very executable a compile would have produced, so results are unchanged. A cache the
# user set (JAX_COMPILATION_CACHE_DIR) is used as is; ours is removed at the end.
CACHE_VARIABLE = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
    worker_input = getattr(config, "workerinput", None)
    if worker_input is not None:  # a pytest-xdist worker: the controller's cache
        if worker_input.get("xla_cache"):
            os.environ.setdefault(CACHE_VARIABLE, worker_input["xla_cache"])
        return
    if CACHE_VARIABLE not in os.environ:
        config.xla_cache_created = tempfile.mkdtemp(prefix="jaxquant-tests-xla-cache-")
        os.environ[CACHE_VARIABLE] = config.xla_cache_created


def pytest_unconfigure(config):
    created = getattr(config, "xla_cache_created", None)
    if created:
        shutil.rmtree(created, ignore_errors=True)


try:
    import xdist  # noqa: F401  (the hook below exists only with pytest-xdist)

    def pytest_configure_node(node):
        node.workerinput["xla_cache"] = os.environ.get(CACHE_VARIABLE, "")
except ImportError:
    pass


@pytest.fixture
def kernel_of_this_interpreter(tmp_path, monkeypatch):
    """A kernelspec that launches ``sys.executable`` (JUPYTER_PATH is searched first), so the
    notebook runs in the venv that runs the tests whatever kernels the machine has installed."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "jaxquant-tests"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "jaxquant tests",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "jaxquant-tests"

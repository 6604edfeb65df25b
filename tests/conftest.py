import os
import shutil
import tempfile

# Tests run on CPU, single-threaded XLA intra-op work is enough for the tiny models here.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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

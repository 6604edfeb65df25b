"""jaxquant: train one network that runs at any weight/activation bit-width, in JAX/Flax."""
from jaxquant.errors import (BitWidthError, CheckpointError, ConfigError, DatasetNotFoundError,
                             JaxquantError, NonFiniteLossError)

__version__ = "0.1.0"

__all__ = ["BitWidthError", "CheckpointError", "ConfigError", "DatasetNotFoundError", "JaxquantError",
           "NonFiniteLossError", "__version__", "export_vertical", "load_vertical"]


def __getattr__(name: str):
    # The artefact API imports JAX; load it on first use so `import jaxquant` stays light.
    if name in ("export_vertical", "load_vertical"):
        from jaxquant import export
        return getattr(export, name)
    raise AttributeError(f"module 'jaxquant' has no attribute {name!r}")

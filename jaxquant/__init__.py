"""jaxquant: train one network that runs at any weight/activation bit-width, in JAX/Flax."""
from jaxquant.errors import (BitWidthError, CheckpointError, ConfigError, DatasetNotFoundError,
                             JaxquantError, NonFiniteLossError)

__version__ = "0.1.0"

__all__ = ["BitWidthError", "CheckpointError", "ConfigError", "DatasetNotFoundError", "JaxquantError",
           "NonFiniteLossError", "__version__"]

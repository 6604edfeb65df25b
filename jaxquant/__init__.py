"""jaxquant: train one network that runs at any weight/activation bit-width, in JAX/Flax.

The entry points are attributes of this package (``dir(jaxquant)`` lists them, so a notebook's
tab completion shows them); each is imported on first use, so ``import jaxquant`` stays light.
"""

from jaxquant.errors import (
    BitWidthError,
    CheckpointError,
    ConfigError,
    DatasetNotFoundError,  # noqa: F401
    InputError,
    JaxquantError,
    NonFiniteError,
    NonFiniteLossError,
    PrecisionError,
)

__version__ = "0.1.0"

# Public name -> the module that defines it (imported on first access).
_LAZY = {
    # Training.
    "MultiPrecisionTrainer": "jaxquant.training",
    "TrainState": "jaxquant.training",
    "OptimizerConfig": "jaxquant.training",
    "make_optimizer": "jaxquant.training",
    "fit": "jaxquant.training",
    "evaluate": "jaxquant.training",
    # Layers.
    "QuantSpec": "jaxquant.layers",
    "QuantConv": "jaxquant.layers",
    "QuantDense": "jaxquant.layers",
    "PrecisionBatchNorm": "jaxquant.layers",
    "MultiBranchConv": "jaxquant.layers",
    "BranchSelection": "jaxquant.layers",
    "FULL_PRECISION": "jaxquant.layers",
    "Lowering": "jaxquant.layers",
    # Your own Linen model at every bit-width.
    "quantize": "jaxquant.interception",
    "Rule": "jaxquant.interception",
    "PrecisionModel": "jaxquant.interception",
    # Quantizers (each family: jaxquant.quantizers.LSQ, DoReFaWeight, Vertical, ...).
    "Quantizer": "jaxquant.quantizers",
    # Models.
    "SmallCNN": "jaxquant.models",
    "CifarResNet": "jaxquant.models",
    "ResNet": "jaxquant.models",
    "ResNet18": "jaxquant.models",
    "ResNet34": "jaxquant.models",
    "MobileNetV2": "jaxquant.models",
    "MultiBranchCNN": "jaxquant.models",
    "MultiBranchCifarResNet": "jaxquant.models",
    "MultiBranchResNet": "jaxquant.models",
    # Methods, from a config.
    "Method": "jaxquant.methods",
    "build_model": "jaxquant.methods",
    "build_trainer": "jaxquant.methods",
    "METHODS": "jaxquant.methods",
    # Runs and artefacts.
    "load_run": "jaxquant.runs",
    "run_input_contract": "jaxquant.runs",
    "InputContract": "jaxquant.data",
    "export_vertical": "jaxquant.export",
    "load_vertical": "jaxquant.export",
}
# Submodules reachable as attributes (``jaxquant.quantizers.lsq``, ``jaxquant.ptq.run``, ...).
_SUBMODULES = (
    "quantizers",
    "layers",
    "models",
    "methods",
    "training",
    "ptq",
    "data",
    "runs",
    "export",
    "interception",
)

__all__ = sorted(
    [
        "BitWidthError",
        "CheckpointError",
        "ConfigError",
        "DatasetNotFoundError",
        "InputError",
        "JaxquantError",
        "NonFiniteError",
        "NonFiniteLossError",
        "PrecisionError",
        "__version__",
        *_LAZY,
        *_SUBMODULES,
    ]
)


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"jaxquant.{name}")
    else:
        raise AttributeError(f"module 'jaxquant' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

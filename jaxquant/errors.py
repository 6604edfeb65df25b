"""User-facing errors: one line that says what is wrong and how to fix it.

Every error a user can cause is a `JaxquantError` (a `ValueError`), so library callers can
catch one type, and the CLI turns it into a one-line message and exit code 2.
"""


class JaxquantError(ValueError):
    """Base class of every error caused by user input, data or files."""


class BitWidthError(JaxquantError):
    """A bit-width the chosen quantizer cannot represent."""


class ConfigError(JaxquantError):
    """An unknown config key, a value of the wrong type or an inconsistent config."""


class DatasetNotFoundError(JaxquantError):
    """A dataset that is neither prepared locally nor downloadable from this machine."""


class CheckpointError(JaxquantError):
    """A checkpoint that is corrupt or was written by an incompatible config."""


class PrecisionError(JaxquantError):
    """A precision index outside a model's bit-widths, or per-precision arrays (one row per
    bit-width: BatchNorm statistics, quantizer steps) built for another number of bit-widths."""


class NonFiniteError(JaxquantError):
    """Values a user trusts (parameters, statistics, predictions) hold NaN or infinity."""


class NonFiniteLossError(NonFiniteError):
    """Training diverged: the loss became NaN or infinite."""


class InputError(JaxquantError):
    """Images a model cannot take: a wrong shape, number of channels, dtype or value range
    (`jaxquant.data.InputContract`)."""

"""PTQ settings: the methods, ``W<bits>A<bits>`` settings and the config's validation (the
keys and defaults are `jaxquant.configs.ptq.ptq_config`)."""

from __future__ import annotations

from jaxquant.configs.ptq import ptq_config
from jaxquant.errors import BitWidthError, ConfigError
from jaxquant.methods import bitsplit
from jaxquant.ptq.methods import PTQ_METHODS
from jaxquant.quantizers import FP_BITS

METHODS = tuple(PTQ_METHODS)  # every method; the default config runs them all
METHOD_LABELS = {"fp": "FP (no quantization)", **{m.name: m.label for m in PTQ_METHODS.values()}}


def validate_config(config) -> list[tuple[int, int]]:
    """Check a PTQ config (keys, settings, methods, sizes); return the parsed settings."""
    known = set(ptq_config().keys())
    unknown = sorted(set(config.keys()) - known)
    if unknown:
        raise ConfigError(
            f"unknown PTQ config key(s) {unknown}; known keys: {', '.join(sorted(known))}"
        )
    if not config.settings:
        raise ConfigError("config.settings is empty; give at least one, e.g. ('W4A8',)")
    for method in config.methods:
        if method not in METHODS:
            raise ConfigError(f"unknown PTQ method {method!r}; choose from {METHODS}")
    for key in (
        "calibration_images",
        "calibration_rows",
        "activation_samples",
        "block",
        "bn_batch_size",
        "eval_batch_size",
    ):
        if int(config[key]) < 1:
            raise ConfigError(f"config.{key} must be at least 1, got {config[key]}")
    for key in ("epochs", "ofwa_epochs", "bn_batches"):
        if int(config[key]) < 0:
            raise ConfigError(f"config.{key} must be 0 or more, got {config[key]}")
    bitsplit.check_bits(int(config.first_last_weight_bits))
    if not 2 <= int(config.last_activation_bits) <= 16:
        raise BitWidthError(
            f"config.last_activation_bits must be 2..16, got {config.last_activation_bits}"
        )
    return [parse_setting(s) for s in config.settings]


def parse_setting(setting: str) -> tuple[int, int]:
    """``'W4A8'`` -> ``(4, 8)``; ``A32`` means full-precision activations."""
    text = str(setting).strip().upper()
    try:
        w_text, a_text = text[1:].split("A")
        if not text.startswith("W"):
            raise ValueError
        weight_bits, act_bits = int(w_text), int(a_text)
    except ValueError:
        raise ConfigError(
            f"setting {setting!r} is not of the form W<bits>A<bits>, e.g. W4A8"
        ) from None
    bitsplit.check_bits(weight_bits)
    if not (2 <= act_bits <= 16 or act_bits == FP_BITS):
        raise BitWidthError(
            f"setting {setting!r}: activation bits must be 2..16, or 32 for full precision"
        )
    return weight_bits, act_bits

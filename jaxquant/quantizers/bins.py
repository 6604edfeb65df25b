"""Bins of a quantized tensor, for Bin Regularization: every element's bin is its integer code,
every bin's level the value the quantizer outputs for it, in weight or code units.

A per-output-channel quantizer has one grid per channel (the last axis): its bins are
``channel * K + code``, K the codes per grid."""

from __future__ import annotations

import jax
import jax.numpy as jnp

UNITS = ("weight", "code")


def check_units(units: str) -> None:
    if units not in UNITS:
        raise ValueError(f"unknown BR units {units!r}; choose one of {UNITS}")


def channel_bins(
    codes_index: jax.Array, num_codes: int, per_channel: bool
) -> tuple[jax.Array, int]:
    """``(bins, num_bins)``: bin ``c * K + j`` per channel c, or ``j`` for one grid."""
    if not per_channel:
        return codes_index, num_codes
    channels = codes_index.shape[-1]
    return codes_index + num_codes * jnp.arange(
        channels, dtype=codes_index.dtype
    ), channels * num_codes


def per_channel_levels(
    levels_per_code: jax.Array, step: jax.Array, per_channel: bool, units: str
) -> jax.Array:
    """Levels of every bin: ``code`` in code units, ``code * s`` (per channel) in weight units."""
    if units == "code":
        return jnp.tile(levels_per_code, step.size) if per_channel else levels_per_code
    if per_channel:
        return (step[:, None] * levels_per_code[None, :]).reshape(-1)
    return levels_per_code * step

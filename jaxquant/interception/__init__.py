"""Bring your own model: any-precision training of an unchanged Flax Linen or NNX model
(`quantize`), with per-layer `Rule`s over module paths."""

from jaxquant.interception.linen import TRAIN_KWARGS, PrecisionModel, quantize
from jaxquant.interception.nnx import NNXPrecisionModel, precision_scope, quantize_nnx
from jaxquant.interception.rules import Rule, default_rules, match

__all__ = [
    "NNXPrecisionModel",
    "PrecisionModel",
    "Rule",
    "TRAIN_KWARGS",
    "default_rules",
    "match",
    "precision_scope",
    "quantize",
    "quantize_nnx",
]

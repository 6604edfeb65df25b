"""Bring your own model: any-precision training of an unchanged Flax model (`quantize`), with
per-layer `Rule`s over module paths."""

from jaxquant.interception.linen import TRAIN_KWARGS, PrecisionModel, quantize
from jaxquant.interception.rules import Rule, default_rules, match

__all__ = ["PrecisionModel", "Rule", "TRAIN_KWARGS", "default_rules", "match", "quantize"]

"""Rules: which layers of a user's model are quantized, by what, and at which bit-widths.

An ordered list of `Rule`; a layer takes the first rule whose regex matches its module path
(``"block1/Conv_0"``), and a layer no rule matches stays full precision. A rule's ``bits``:
None runs the layer at the model's bit-widths; one value runs it at that bit-width at every
precision (an 8-bit first or last layer); P values give it its own bit-width per precision.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

from jaxquant import quantizers as q
from jaxquant.errors import BitWidthError, ConfigError


@dataclasses.dataclass(frozen=True)
class Rule:
    """``pattern`` (a regex searched in the module path), the ``weight`` and ``activation``
    quantizers (objects or registered names; ``"none"`` keeps that operand full precision) and
    the layer's ``bits`` (see the module docstring)."""

    pattern: str
    weight: q.Quantizer | str = "lsq"
    activation: q.Quantizer | str = "lsq"
    bits: tuple[int, ...] | None = None

    def __post_init__(self):
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ConfigError(f"rule pattern {self.pattern!r} is not a regex ({e})") from None
        weight = q.weight_quantizer(self.weight) if isinstance(self.weight, str) else self.weight
        act = self.activation
        act = q.activation_quantizer(act) if isinstance(act, str) else act
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "activation", act)
        if self.bits is not None:
            object.__setattr__(self, "bits", tuple(int(b) for b in self.bits))

    @classmethod
    def keep_fp(cls, pattern: str) -> Rule:
        """Layers matching ``pattern`` stay full precision."""
        return cls(pattern, q.FullPrecision(), q.FullPrecision())

    def layer_bits(self, model_bits: tuple[int, ...]) -> tuple[int, ...]:
        """The layer's bit-widths (checked against both quantizers)."""
        bits = model_bits if self.bits is None else self.bits
        if len(bits) not in (1, len(model_bits)):
            raise BitWidthError(
                f"rule {self.pattern!r}: bits {bits} must be one bit-width or one per precision "
                f"of the model's {model_bits}"
            )
        try:
            self.weight.validate(bits)
            return self.activation.validate(bits)
        except BitWidthError as e:
            raise BitWidthError(f"rule {self.pattern!r}: {e}") from None


def match(rules: Sequence[Rule], path: str) -> Rule | None:
    """The first rule whose pattern is found in ``path``; None if none."""
    return next((rule for rule in rules if re.search(rule.pattern, path)), None)


def default_rules() -> tuple[Rule, ...]:
    """Every conv and dense layer: LSQ weights and unsigned LSQ activations."""
    return (Rule(".*"),)

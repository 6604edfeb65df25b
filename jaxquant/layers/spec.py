"""`QuantSpec`: which quantizer a layer applies to its weights and inputs, and how a trained
model executes."""
from __future__ import annotations

import dataclasses
from typing import Sequence

from jaxquant import quantizers as q
from jaxquant.errors import BitWidthError, ConfigError

WEIGHT_QUANTIZERS = ("lsq", "dorefa", "vertical", "codes", "none")
EXECUTIONS = ("fake_quant", "integer", "bit_serial")
ACTIVATION_QUANTIZERS = ("lsq", "dorefa", "none")

QUANTIZER_PARAM_NAMES = frozenset({"weight_step", "act_step", "weight_lower", "weight_upper",
                                   "act_lower", "act_upper"})
"""Parameter names that belong to quantizers (optimised by their own optimizer group)."""


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """Which quantizers a layer uses.

    weight: ``lsq`` (signed, learned step per precision), ``dorefa`` (Any-Precision), ``vertical``
      (one learned source step at ``source_bits``; every precision by ``cascade``, see
      `quantizers.vertical_weight`), ``codes`` (inference: the kernel is stored as k-bit
      offset-binary codes ``codes`` with step ``code_step``, weight ``(u - (2^k-1)/2) * step``,
      as `jaxquant.load_vertical` builds it) or ``none``.
    activation: ``lsq`` (learned step), ``dorefa`` (fixed [0, 1] range) or ``none``.
    per_channel: one weight step per output channel instead of per tensor.
    signed_activations: LSQ activations on a signed grid (inputs that are not post-ReLU).
    source_bits, cascade: the ``vertical`` weight quantizer's source bit-width and cascade.
    execution: how a ``codes`` conv with LSQ activations computes: ``fake_quant`` (float conv of
      dequantized values), ``integer`` (int32 conv of the integer codes, scales applied after) or
      ``bit_serial`` (one int32 conv per weight bit plane, ``sum_i 2^i conv(a, plane_i)``).
    """
    weight: str = "lsq"
    activation: str = "lsq"
    per_channel: bool = False
    signed_activations: bool = False
    source_bits: int = 8
    cascade: str = "floor"
    execution: str = "fake_quant"

    def __post_init__(self):
        if self.weight not in WEIGHT_QUANTIZERS:
            raise ConfigError(f"unknown weight quantizer {self.weight!r}; choose one of {WEIGHT_QUANTIZERS}")
        if self.activation not in ACTIVATION_QUANTIZERS:
            raise ConfigError(f"unknown activation quantizer {self.activation!r}; choose one of {ACTIVATION_QUANTIZERS}")
        if self.cascade not in q.VERTICAL_CASCADES:
            raise ConfigError(f"unknown cascade {self.cascade!r}; choose one of {q.VERTICAL_CASCADES}")
        if self.execution not in EXECUTIONS:
            raise ConfigError(f"unknown execution {self.execution!r}; choose one of {EXECUTIONS}")
        if self.execution != "fake_quant" and (self.weight != "codes" or self.activation != "lsq"
                                               or self.signed_activations):
            raise ConfigError("integer and bit-serial execution need weight='codes' with unsigned LSQ activations")

    def validate(self, bits: Sequence[int]) -> tuple[int, ...]:
        """Check ``bits`` against both quantizers; return the tuple."""
        q.validate_bits(bits, self.weight if self.weight != "none" else "lsq")
        if self.weight == "vertical":
            q.validate_bits((self.source_bits,), "vertical")
            for b in bits:
                if self.source_bits < b < q.FP_BITS:
                    raise BitWidthError(f"bit-width {b} is above the source bit-width {self.source_bits}; "
                                          f"raise source_bits or drop {b}")
        return q.validate_bits(bits, self.activation if self.activation != "none" else "lsq")


FULL_PRECISION = QuantSpec(weight="none", activation="none")

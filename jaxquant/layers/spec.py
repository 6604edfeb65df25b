"""`QuantSpec`: which quantizer objects a layer applies to its weights and inputs, and how a
trained model executes."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from jaxquant import quantizers as q
from jaxquant.errors import ConfigError

EXECUTIONS = ("fake_quant", "integer", "bit_serial")
QUANTIZER_PARAM_PREFIXES = ("weight_", "act_")
"""A layer stores its quantizers' parameters as ``weight_<name>`` and ``act_<name>``."""


def is_quantizer_param(name: str) -> bool:
    """Whether a parameter belongs to a quantizer (optimised by its own optimizer group)."""
    return name.startswith(QUANTIZER_PARAM_PREFIXES)


def _with_settings(quantizer: q.Quantizer, **settings) -> q.Quantizer:
    """``quantizer`` with those ``settings`` (not None) that are fields of its type."""
    fields = {f.name for f in dataclasses.fields(quantizer)}
    changes = {k: v for k, v in settings.items() if v is not None and k in fields}
    return dataclasses.replace(quantizer, **changes) if changes else quantizer


@dataclasses.dataclass(frozen=True, init=False)
class QuantSpec:
    """The weight and activation `Quantizer` of a layer, and its execution.

    ``weight`` and ``activation`` are quantizer objects (`jaxquant.quantizers`), or names from
    the quantizer table (``lsq``, ``dorefa``, ``vertical``, ``codes``, ``none``; activations
    ``lsq``, ``dorefa``, ``interval``, ``none``) built with the keyword settings:
    ``per_channel`` (one weight step per output channel), ``signed_activations`` (a signed
    activation grid, for inputs that are not post-ReLU), ``source_bits`` and ``cascade``
    (Vertical Layering). Settings also apply to quantizer objects that have them.
    ``execution``: how a `quantizers.StoredCodes` conv with unsigned LSQ activations computes:
    ``fake_quant`` (float conv of dequantized values), ``integer`` (int32 conv of the codes,
    scales applied after) or ``bit_serial`` (one int32 conv per weight bit plane).
    """

    weight: q.Quantizer
    activation: q.Quantizer
    execution: str

    def __init__(
        self,
        weight: q.Quantizer | str | None = None,
        activation: q.Quantizer | str | None = None,
        *,
        per_channel: bool | None = None,
        signed_activations: bool | None = None,
        source_bits: int | None = None,
        cascade: str | None = None,
        execution: str = "fake_quant",
    ):
        weight = (
            q.LSQ.for_weights() if weight is None else weight
        )  # default: LSQ weights and activations
        activation = q.LSQ.for_activations() if activation is None else activation
        if isinstance(weight, str):
            weight = q.weight_quantizer(weight)
        if isinstance(activation, str):
            activation = q.activation_quantizer(activation)
        for role, value in (("weight", weight), ("activation", activation)):
            if not isinstance(value, q.Quantizer):
                raise ConfigError(f"QuantSpec {role} must be a Quantizer or a name, got {value!r}")
        weight = _with_settings(
            weight, per_channel=per_channel, source_bits=source_bits, cascade=cascade
        )
        activation = _with_settings(activation, signed=signed_activations)
        if execution not in EXECUTIONS:
            raise ConfigError(f"unknown execution {execution!r}; choose one of {EXECUTIONS}")
        if execution != "fake_quant" and not (
            isinstance(weight, q.StoredCodes)
            and isinstance(activation, q.LSQ)
            and not activation.signed
        ):
            raise ConfigError(
                "integer and bit-serial execution need weight='codes' with unsigned LSQ activations"
            )
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "activation", activation)
        object.__setattr__(self, "execution", execution)

    # Read-only views of the quantizers' settings.
    per_channel = property(lambda self: bool(getattr(self.weight, "per_channel", False)))
    signed_activations = property(lambda self: bool(getattr(self.activation, "signed", False)))
    source_bits = property(lambda self: getattr(self.weight, "source_bits", None))
    cascade = property(lambda self: getattr(self.weight, "cascade", None))

    def validate(self, bits: Sequence[int]) -> tuple[int, ...]:
        """Check ``bits`` against both quantizers; return the tuple."""
        self.weight.validate(bits)
        return self.activation.validate(bits)


FULL_PRECISION = QuantSpec(q.FullPrecision(), q.FullPrecision())

"""The one table from quantizer names (as configs and the CLI spell them) to `Quantizer` types.

A name may stand for a weight and an activation quantizer (``dorefa``: `DoReFaWeight` and
`DoReFaActivation`); `register` adds a family, `weight_quantizer`/`activation_quantizer` build
one from its name and settings."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from jaxquant.errors import BitWidthError, ConfigError
from jaxquant.quantizers.base import FullPrecision, Quantizer
from jaxquant.quantizers.core import check_bits
from jaxquant.quantizers.dorefa import DoReFaActivation, DoReFaWeight
from jaxquant.quantizers.interval import IntervalActivation, IntervalWeight
from jaxquant.quantizers.lsq import LSQ
from jaxquant.quantizers.vertical import StoredCodes, Vertical

ROLES = ("weight", "activation")
# name -> role -> (type, default settings)
_TABLE: dict[str, dict[str, tuple[type, dict[str, Any]]]] = {}


def register(
    name: str,
    *,
    weight: type | None = None,
    activation: type | None = None,
    weight_defaults: dict | None = None,
    activation_defaults: dict | None = None,
) -> None:
    """Make ``name`` build ``weight`` and/or ``activation`` (`Quantizer` subclasses) from
    configs, with the given default settings (dataclass fields)."""
    for role, cls in (("weight", weight), ("activation", activation)):
        if cls is not None and not (isinstance(cls, type) and issubclass(cls, Quantizer)):
            raise ConfigError(
                f"register({name!r}): {role} must be a Quantizer subclass, got {cls!r}"
            )
    entry = _TABLE.setdefault(name, {})
    if weight is not None:
        entry["weight"] = (weight, dict(weight_defaults or {}))
    if activation is not None:
        entry["activation"] = (activation, dict(activation_defaults or {}))


def unregister(name: str) -> None:
    """Remove ``name`` from the table (both roles); no error if it is absent."""
    _TABLE.pop(name, None)


def names(role: str) -> tuple[str, ...]:
    """The registered names of ``role`` (``weight`` or ``activation``) quantizers."""
    return tuple(sorted(n for n, entry in _TABLE.items() if role in entry))


def build(name: str, role: str, **settings) -> Quantizer:
    """The ``role`` quantizer registered as ``name`` with ``settings``; settings that are not
    fields of its type are ignored (a legacy `QuantSpec` passes every flag to both)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if role not in _TABLE.get(name, {}):
        raise ConfigError(f"unknown {role} quantizer {name!r}; choose one of {names(role)}")
    cls, defaults = _TABLE[name][role]
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{**defaults, **{k: v for k, v in settings.items() if k in fields}})


def weight_quantizer(name: str, **settings) -> Quantizer:
    return build(name, "weight", **settings)


def activation_quantizer(name: str, **settings) -> Quantizer:
    return build(name, "activation", **settings)


def validate_bits(bits: Iterable[int], quantizer: str | Quantizer) -> tuple[int, ...]:
    """Check a static tuple of bit-widths against what a quantizer (or a registered name, either
    role) represents; return it as a tuple (`BitWidthError` naming the offending value)."""
    if isinstance(quantizer, str):
        entry = _TABLE.get(quantizer)
        if not entry:
            raise BitWidthError(f"unknown quantizer {quantizer!r}; choose one of {sorted(_TABLE)}")
        cls = entry.get("weight", entry.get("activation"))[0]
        return check_bits(bits, cls.supported_bits, quantizer)
    return quantizer.validate(bits)


register(
    "lsq", weight=LSQ, activation=LSQ, activation_defaults={"signed": False, "per_example": True}
)
register("dorefa", weight=DoReFaWeight, activation=DoReFaActivation)
register("interval", weight=IntervalWeight, activation=IntervalActivation)
register("vertical", weight=Vertical)
register("codes", weight=StoredCodes)
register("none", weight=FullPrecision, activation=FullPrecision)

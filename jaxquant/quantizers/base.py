"""`Quantizer`: a quantizer family with its settings, as one small typed value.

A quantizer is a frozen dataclass (hashable, compared by value, so it can sit in a Flax module's
fields) whose methods are pure functions of arrays. A layer built for bit-widths ``bits`` uses it
in three calls::

    params = quantizer.init(x, bits)                     # at model init, for all P bit-widths
    x_hat = quantizer.quantize(x, quantizer.at(params, p), bits[p])
    s = quantizer.grid_scale(x, quantizer.at(params, p), bits[p])  # x_hat = n * s, n integer

``params`` maps the names in ``param_names`` to arrays; a layer stores each as
``{role}_{name}`` (``weight_step``, ``act_step``, ...), and the optimizer puts every parameter
named ``weight_*`` or ``act_*`` in the quantizer group. A new family subclasses `Quantizer`,
sets ``name`` and ``supported_bits``, writes ``quantize`` (and ``init``, ``at`` and
``grid_scale`` if it has parameters or a grid), and may call `jaxquant.quantizers.register`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import jax

from jaxquant.quantizers.core import FP_BITS, check_bits

Params = Mapping[str, jax.Array]

INTEGER_BITS = tuple(range(2, 17)) + (FP_BITS,)
"""The bit-widths most families represent: 2..16 and full precision."""


@dataclasses.dataclass(frozen=True)
class Quantizer:
    """Base of every quantizer family (see the module docstring for the protocol).

    Class attributes: ``name`` (the family's name in configs), ``supported_bits`` (the static
    bit-widths it can represent), ``param_names`` (its learned parameters).
    """

    name: ClassVar[str] = ""
    supported_bits: ClassVar[tuple[int, ...]] = INTEGER_BITS
    param_names: ClassVar[tuple[str, ...]] = ()

    def validate(self, bits) -> tuple[int, ...]:
        """Check a model's static tuple of bit-widths; return it (`BitWidthError` if not)."""
        return check_bits(bits, self.supported_bits, self.name or type(self).__name__)

    def init(self, x: jax.Array, bits: tuple[int, ...]) -> dict[str, jax.Array]:
        """The learned parameters for every bit-width of ``bits``, initialised from ``x``."""
        return {}

    def at(self, params: Params, precision) -> Params:
        """The parameters used at precision index ``precision`` (default: all are shared)."""
        return params

    def quantize(self, x: jax.Array, params: Params, bits) -> jax.Array:
        """The fake-quantized ``x`` at bit-width ``bits`` (static or traced), float32."""
        raise NotImplementedError(f"{type(self).__name__} does not define quantize")

    def grid_scale(self, x: jax.Array, params: Params, bits) -> Any:
        """``s`` of ``quantize(x) = n * s`` with n integer-valued; 1 at full precision."""
        raise NotImplementedError(f"{type(self).__name__} has no integer grid; compute in float32")

    def effective_bits(self, bits):
        """The bit-width that decides full precision for the grid (`grid_integers`)."""
        return bits

    def code_bits(self, bits: tuple[int, ...]) -> int:
        """The widest integer code this quantizer produces for ``bits`` (0: none, all FP)."""
        integer = [b for b in bits if b < FP_BITS]
        return max(integer) if integer else 0

    has_bins: ClassVar[bool] = False
    """Whether `bins` is defined (Bin Regularization applies to the quantizer's weights)."""

    def bins(
        self,
        x: jax.Array,
        params: Params,
        bits,
        *,
        max_bits: int,
        units: str = "weight",
        stop_step_gradient: bool = False,
    ) -> tuple[jax.Array, jax.Array, jax.Array, int]:
        """``(values, bins, levels, num_bins)``: each element's value and integer bin (its code),
        each bin's level, in weight or code ``units`` (`jaxquant.regularizers`)."""
        raise NotImplementedError(f"{type(self).__name__} defines no bins")

    def for_signed_inputs(self) -> Quantizer | None:
        """This quantizer for inputs that may be negative (an image, a linear bottleneck), or
        None where it cannot represent them (a fixed ``[0, 1]`` range)."""
        return None


@dataclasses.dataclass(frozen=True)
class FullPrecision(Quantizer):
    """No quantization: ``x`` passes through at every bit-width (a full-precision layer)."""

    name: ClassVar[str] = "none"
    supported_bits: ClassVar[tuple[int, ...]] = (FP_BITS,)

    def validate(self, bits) -> tuple[int, ...]:
        # A full-precision layer sits in a model of any bit-widths; check the usual ones.
        return check_bits(bits, INTEGER_BITS, "full-precision")

    def quantize(self, x, params, bits):
        return x

    def grid_scale(self, x, params, bits):
        return 1.0

    def effective_bits(self, bits):
        return FP_BITS

    def code_bits(self, bits) -> int:
        return 0

    def for_signed_inputs(self):
        return self

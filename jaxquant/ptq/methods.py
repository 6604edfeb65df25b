"""The PTQ methods as values: how each fits one layer's weight matrix, and what it needs from
the calibration data. `quantize_model` reads only these fields."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from jaxquant.errors import ConfigError
from jaxquant.methods import bitsplit

Fit = Callable[[jax.Array, int, "tuple | None", object], "tuple[dict, tuple[float, float] | None]"]


@dataclasses.dataclass(frozen=True)
class WeightFit:
    """A PTQ method.

    fit: ``(w [M, N], bits, rows, config) -> ({'codes', 'alpha'}, errors)``: integer codes and a
      scale per output row; ``rows`` is ``(x, y)`` (calibration inputs and FP outputs) for a
      layer it reconstructs, else None; ``errors`` the reconstruction error before and after.
      ``x`` is ``[K, N]``, or ``[K, M, N]`` for a depthwise conv (`jaxquant.ptq.fit_rows`: each
      output channel's own input patch).
    reconstructs: it fits layers to calibration rows (BitSplit's ``ofwa_rr``).
    error_compensated: a layer's inputs come from the network with every earlier layer
      quantized (ECAQ), not from the FP network.
    """

    name: str
    label: str
    fit: Fit
    reconstructs: bool = False
    error_compensated: bool = False


def _round_to_nearest(w, bits, rows, config):
    codes, alpha = bitsplit.round_to_nearest(w, bits)
    return {"codes": codes, "alpha": alpha}, None


def _bitsplit(w, bits, rows, config):
    result = bitsplit.quantize_weight(
        w,
        bits,
        *(rows or (None, None)),
        epochs=config.epochs,
        ofwa_epochs=config.ofwa_epochs,
        block=config.block,
    )
    errors = (
        None
        if result["errors"] is None
        else (float(result["errors"][0]), float(result["errors"][-1]))
    )
    return {"codes": result["codes"], "alpha": result["alpha"]}, errors


PTQ_METHODS: dict[str, WeightFit] = {
    m.name: m
    for m in (
        WeightFit("rtn", "round-to-nearest, per channel", _round_to_nearest),
        WeightFit("bitsplit", "BitSplit", _bitsplit, reconstructs=True),
        WeightFit(
            "bitsplit_ecaq",
            "BitSplit + ECAQ (our reading)",
            _bitsplit,
            reconstructs=True,
            error_compensated=True,
        ),
    )
}


def get_ptq_method(name: str) -> WeightFit:
    if name not in PTQ_METHODS:
        raise ConfigError(f"unknown PTQ method {name!r}; choose from {tuple(PTQ_METHODS)}")
    return PTQ_METHODS[name]

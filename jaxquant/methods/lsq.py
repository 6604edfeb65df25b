"""Learned Step Size Quantization (Esser et al., ICLR 2020): the dedicated baseline.

Trained for one bit-width (``bits=(b,)``) it is the dedicated model every once-for-all method is
compared against; with several bit-widths it is multi-precision LSQ (a step size and BN per
precision, shared latent weights). Signed weights in ``[-2^(b-1), 2^(b-1)-1]``, unsigned
activations in ``[0, 2^b-1]``, the step-size gradient scaled by ``1/sqrt(N Qp)`` and
initialised at ``2 mean|v| / sqrt(Qp)`` from the first batch.
"""
from jaxquant.layers import QuantSpec

NAME = "lsq"
DEFAULT_DISTILLATION = "none"


def quant_spec(config) -> QuantSpec:
    return QuantSpec(weight="lsq", activation="lsq", per_channel=bool(config.per_channel))

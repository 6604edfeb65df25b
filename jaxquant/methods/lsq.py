"""Learned Step Size Quantization (Esser et al., ICLR 2020): the dedicated baseline.

``v_hat = round(clip(v/s, -Qn, Qp)) * s`` with a learned step ``s``: signed weights in
``[-2^(b-1), 2^(b-1)-1]``, unsigned activations in ``[0, 2^b-1]``, the step-size gradient scaled
by ``1/sqrt(N Qp)``, ``s`` initialised at ``2 mean|v| / sqrt(Qp)`` from the first batch. Trained
for one bit-width (``bits=(b,)``) it is the dedicated model every once-for-all method is compared
against; with several, multi-precision LSQ (a step and BN per precision, shared latent weights).
Details: docs/methods/lsq.md
"""

from jaxquant.layers import QuantSpec
from jaxquant.methods.base import Method, register
from jaxquant.quantizers import LSQ

NAME = "lsq"
DEFAULT_DISTILLATION = "none"


def quant_spec(config) -> QuantSpec:
    return QuantSpec(LSQ.for_weights(per_channel=bool(config.per_channel)), LSQ.for_activations())


METHOD = register(Method(name=NAME, quant_spec=quant_spec))

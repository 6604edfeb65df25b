"""Any-Precision DNN (Yu et al., AAAI 2021), the once-for-all baseline with public CIFAR numbers.

The official code's recipe (`SHI-Labs/Any-Precision-DNNs`): DoReFa weights
``(2 qfn(tanh w / 2max|tanh w| + 1/2) - 1) * mean|w|`` and activations ``qfn(clip(x, 0, 1))``;
switchable BN; FP first conv and classifier; every bit-width re-quantized from the FP latent
weights (no nesting); recursive in-place distillation. Two small differences from the code, no
flag: the FP shortcut's BN is switchable, and running variances are biased (Flax's convention).
Details: docs/methods/anyprecision.md
"""

from jaxquant.layers import QuantSpec
from jaxquant.methods.base import Method, register
from jaxquant.quantizers import DoReFaActivation, DoReFaWeight

NAME = "anyprecision"
DEFAULT_DISTILLATION = "recursive"


def quant_spec(config) -> QuantSpec:
    """DoReFa for weights and activations (per tensor; DoReFa has no step to make per-channel)."""
    return QuantSpec(DoReFaWeight(), DoReFaActivation())


METHOD = register(Method(name=NAME, quant_spec=quant_spec, distillation=DEFAULT_DISTILLATION))

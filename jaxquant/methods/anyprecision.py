"""Any-Precision DNN (Yu et al., AAAI 2021), the once-for-all baseline with public CIFAR numbers.

The recipe, from the official code (`SHI-Labs/Any-Precision-DNNs`, digest section 3):
DoReFa weights ``(2 qfn(tanh w / 2max|tanh w| + 1/2) - 1) * mean|w|`` and activations
``qfn(clip(x, 0, 1))`` (ReLU at 32 bits); switchable BN (one per bit-width); FP first conv and
classifier; every bit-width re-quantized from the FP latent weights (no nesting); recursive
in-place distillation (each bit-width learns from the next higher one); Adam 1e-3, no weight
decay. Its CIFAR model is the pre-activation ResNet-20 with width x5 (`experiments/configs`).

Differences from the official code, both small: the FP 1x1 shortcut's BN is switchable here (the
code uses one plain BN shared by all bit-widths, whose statistics then mix the bit-widths'
inputs), and running variances use the biased batch variance (Flax's convention; PyTorch's
running average uses the unbiased one).
"""
from jaxquant.layers import QuantSpec

NAME = "anyprecision"
DEFAULT_DISTILLATION = "recursive"


def quant_spec(config) -> QuantSpec:
    """DoReFa for weights and activations (per tensor; DoReFa has no step to make per-channel)."""
    return QuantSpec(weight="dorefa", activation="dorefa")

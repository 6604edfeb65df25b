"""Flax Linen layers whose precision is data (one idea per module: `spec`, `conv`, `quant`,
`batchnorm`, `multibranch`; every public name is importable from here).

A layer is built for a static tuple of bit-widths ``bits`` (``P = len(bits)``) and called with a
precision **index** ``precision`` (a traced int) into that tuple. State that differs per
precision (LSQ step sizes, BatchNorm statistics and affine) carries a leading axis of size P and
is gathered with the index, so ``jax.vmap`` over ``precision`` runs every sub-network at once.

Swap ``nn.Conv`` for `QuantConv` and ``nn.Dense`` for `QuantDense` in your own model, and
``nn.BatchNorm`` for `PrecisionBatchNorm` (switchable BN). `MultiBranchConv` is a conv of G
branches of fixed 2-bit weights selected per precision by a `BranchSelection` (the tables are the
method's: `jaxquant.methods.mbquant`).

**Dtypes: the compute dtype follows the input.** Parameters (and BatchNorm statistics) are
float32 and initialised from ``x.astype(float32)``, so a bfloat16 init equals a float32 one.
A layer returns its input's dtype; quantizer arithmetic and BatchNorm run in float32; convs and
matmuls take operands in the input dtype and accumulate in float32.

**Exact grid in bfloat16.** A fake-quantized tensor is ``x_hat = n * s`` (n integer-valued,
s the grid's scale: `quantizers.grid_integers`). bfloat16 (8 significant bits) would move
``n * s`` off its grid, so with bfloat16 inputs a quantized layer computes
``y = conv(n_x, n_w) * (s_x * s_w)``: the integer operands are exact in bfloat16 for
``|n| <= 256``, the conv accumulates in float32 and the scales (``s_w`` per output channel with
``per_channel``) are applied after, in float32. Gradients are those of ``conv(x_hat, w_hat)``:
``n = x_hat / stop_gradient(s)`` snapped to the integer, times ``stop_gradient(s_x s_w)``, so step
sizes get their gradients only through the quantizers. Full precision (``bits >= 32``): s = 1,
nothing snapped. A bfloat16 layer with a quantized bit-width above 8 raises `ConfigError`
(use float32 for 9..16 bits).

**Conv lowering** (`Lowering`, set for a trace by ``with lowering(...)``; the trainer sets its
own): ``batching`` ``auto`` (default) is ``unroll`` on CPU and ``native`` on GPU/TPU
(`resolve_conv_batching`); ``weight_gradient`` ``auto`` is ``im2col`` on CPU and ``xla``
elsewhere (`resolve_weight_gradient`).
"""

from jaxquant.layers.batchnorm import (
    PrecisionBatchNorm,
    batch_moments,
    batch_norm_train,
    normalize,
    switchable_batch_norm,
)
from jaxquant.layers.conv import (
    CONV_BATCHINGS,
    WEIGHT_GRADIENTS,
    Lowering,
    conv_backward,
    conv_forward,
    conv_weight_gradient,
    current_lowering,
    lowering,
    precision_conv,
    resolve_conv_batching,
    resolve_weight_gradient,
)
from jaxquant.layers.find import visit_layers
from jaxquant.layers.multibranch import (
    INTERVAL_INIT,
    WEIGHT_INTERVAL_STDS,
    BranchSelection,
    MultiBranchConv,
)
from jaxquant.layers.quant import (
    QuantConv,
    QuantDense,
    bits_at,
    check_exact_codes,
    check_precision,
    check_precision_rows,
    on_grid,
    quantizer_params,
)
from jaxquant.layers.spec import (
    EXECUTIONS,
    FULL_PRECISION,
    QUANTIZER_PARAM_PREFIXES,
    QuantSpec,
    is_quantizer_param,
)

__all__ = [
    "EXECUTIONS",
    "QUANTIZER_PARAM_PREFIXES",
    "is_quantizer_param",
    "QuantSpec",
    "FULL_PRECISION",
    "CONV_BATCHINGS",
    "WEIGHT_GRADIENTS",
    "Lowering",
    "lowering",
    "current_lowering",
    "resolve_conv_batching",
    "resolve_weight_gradient",
    "conv_forward",
    "conv_backward",
    "conv_weight_gradient",
    "precision_conv",
    "bits_at",
    "check_exact_codes",
    "check_precision",
    "check_precision_rows",
    "quantizer_params",
    "on_grid",
    "QuantConv",
    "QuantDense",
    "batch_norm_train",
    "batch_moments",
    "normalize",
    "PrecisionBatchNorm",
    "switchable_batch_norm",
    "visit_layers",
    "INTERVAL_INIT",
    "WEIGHT_INTERVAL_STDS",
    "BranchSelection",
    "MultiBranchConv",
]

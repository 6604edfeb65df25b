"""Post-training quantization of a trained full-precision Flax model, layer by layer: BitSplit
(`jaxquant.methods.bitsplit`), BitSplit with error-compensated activation quantization, and
per-channel round-to-nearest as the baseline.

Works on any Linen model built from `QuantConv`/`QuantDense` (or plain ``nn.Conv``/``nn.Dense``):
the layers are found, their inputs captured and quantized by a Flax method interceptor, so the
model's code is not touched and the result is the same model with quantized kernels plus one
activation step per layer.

The pipeline, as the official code's fast script:

1. **Calibration**: ``calibration_images`` training images (640) *with* training augmentation;
   one full-precision forward (eval-mode BN) records, for every layer, im2col rows of its input X
   and the matching rows of its pre-BN output Y at ``calibration_rows`` (15,000) random positions.
   The im2col feature order is (C, kh, kw), the order of `layer_matrix`, so ``Y = X W^T``.
   A depthwise conv (``feature_group_count`` = input = output channels, MobileNetV2's) is
   fitted per channel on its own ``kh*kw`` patch (`fit_rows`); other grouped convs are refused.
2. **Weights**: the first layer and the classifier at ``first_last_weight_bits`` (8), the others at
   W bits. BitSplit: `fwa` -> `split` -> `ofwa` -> `ofwa_rr` (100 epochs; a depthwise conv:
   `ofwa_rr_dw`, a Gram matrix per channel, as the code's MobileNetV2 script) against the rows; the
   classifier by `ofwa` only (the code's choice; ``classifier_reconstruction`` to change it).
   Round-to-nearest: ``max|w| / (2^(M-1) - 1)`` per output channel.
3. **BatchNorm re-estimation** (``bn_batches`` of ``bn_batch_size`` augmented training images,
   201 x 64 as the code) with the quantized weights.
4. **Activations**: one unsigned (signed if the layer sees negative inputs) per-tensor step per
   layer input by the MSE fixed point ``s = <x, q> / <q, q>`` on up to ``activation_samples``
   random values (the positive ones for unsigned), from a forward with quantized weights and FP
   activations. The image input of the first layer stays FP; the classifier's input uses
   ``last_activation_bits`` (8). Residual sums stay FP (only layer inputs are quantized).
5. **BatchNorm re-estimation** again, with activations quantized.

**Error-compensated activation quantization** (ECAQ, the paper's Algorithm 1, absent from the
released code; *our reading*): layers are quantized in call order. For layer l the calibration
batch runs through the network whose layers before l are already quantized (weights and input
activations; BN on batch statistics, standing in for the re-estimation that follows); the
activation step of l is set on that input X~, and the bit-split weights are fitted to
``min || Y_l - Q(X~_l) W_q ||`` with Y_l the full-precision target, so the weights absorb the
error of everything before them. One BN re-estimation ends it.

The round-to-nearest baseline goes through steps 3-5 too, so the methods differ only in weights.
"""

from jaxquant.ptq.calibration import (
    BN_STACK_BYTES,
    CalibrationData,
    mse_step,
    reestimate_batchnorm,
    sample_rows,
)
from jaxquant.ptq.capture import (
    LAYER_TYPES,
    ActivationQuant,
    Layer,
    Network,
    Quantizer,
    act_arrays,
    activation_range,
    fake_quantize,
    find_layers,
    fit_rows,
    get_kernel,
    im2col_rows,
    layer_matrix,
    layer_params,
    matrix_kernel,
    output_rows,
    quantizing,
    set_kernels,
)
from jaxquant.ptq.config import (
    METHOD_LABELS,
    METHODS,
    parse_setting,
    ptq_config,
    validate_config,
)
from jaxquant.ptq.fit import (
    QuantizedModel,
    activation_placement,
    classifier_name,
    quantize_model,
    reconstructs,
    weight_placement,
)
from jaxquant.ptq.io import load_quantized, save_quantized
from jaxquant.ptq.methods import PTQ_METHODS, WeightFit, get_ptq_method
from jaxquant.ptq.one_call import PTQResult, linen_network, load, quantize
from jaxquant.ptq.pipeline import fp_network, run, warm_up
from jaxquant.ptq.report import (
    accuracy,
    batches_accuracy,
    draw_ptq_bars,
    format_ptq_table,
    plot_ptq,
)

__all__ = [
    "quantize",
    "load",
    "PTQResult",
    "linen_network",
    "ptq_config",
    "METHODS",
    "METHOD_LABELS",
    "PTQ_METHODS",
    "WeightFit",
    "get_ptq_method",
    "validate_config",
    "parse_setting",
    "LAYER_TYPES",
    "Layer",
    "layer_matrix",
    "matrix_kernel",
    "im2col_rows",
    "fit_rows",
    "output_rows",
    "layer_params",
    "get_kernel",
    "set_kernels",
    "Network",
    "find_layers",
    "fake_quantize",
    "activation_range",
    "ActivationQuant",
    "act_arrays",
    "quantizing",
    "Quantizer",
    "mse_step",
    "sample_rows",
    "BN_STACK_BYTES",
    "CalibrationData",
    "reestimate_batchnorm",
    "QuantizedModel",
    "classifier_name",
    "reconstructs",
    "weight_placement",
    "activation_placement",
    "quantize_model",
    "accuracy",
    "batches_accuracy",
    "format_ptq_table",
    "draw_ptq_bars",
    "plot_ptq",
    "save_quantized",
    "load_quantized",
    "fp_network",
    "warm_up",
    "run",
]

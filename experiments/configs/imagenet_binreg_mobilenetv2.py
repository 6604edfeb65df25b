r"""LSQ + Bin Regularization on ImageNet, MobileNetV2 at 2 bits (weights and activations; FP stem
and classifier): the paper's headline model (BR adds +3.9 top-1 over LSQ at 2 bits, from its
abstract). ``--config.method=lsq`` trains the LSQ baseline. For GPU/TPU.

From the paper: lambda 0.5, two-stage with CE only for the first third of training, weights
only. The rest is the MobileNetV2 QAT recipe of the oscillations-QAT code's README
(`Qualcomm-AI-research/oscillations-qat`), as the BR paper's own was not reachable: SGD momentum
0.9, weight decay 2.5e-5, cosine, lr 0.01 (that recipe's 3-bit value; it fine-tunes from an FP
model), Adam for the quantizer steps, batch 256, 90 epochs, RandomResizedCrop + flip. The model
is `jaxquant.models.MobileNetV2` (torchvision's layout, depthwise convs quantized; the expansion
convs' inputs signed).

ImageNet streams from ``imagenet2012`` prepared as array_record in DATA_DIR
(`jaxquant.data.StreamingDataset`):
  jaxquant train --config experiments/configs/imagenet_binreg_mobilenetv2.py \
      --config.data_dir=DATA_DIR --workdir runs/imagenet_br_mobilenetv2
"""

from imagenet_binreg_resnet18 import get_config as resnet18_config  # a sibling config


def get_config():
    c = resnet18_config()
    c.model = "mobilenet_v2"
    c.width = 1
    c.bits = (2,)
    c.optimizer.learning_rate = 0.01
    c.optimizer.weight_decay = 2.5e-5
    c.optimizer.quantizer_learning_rate = 1e-5
    return c

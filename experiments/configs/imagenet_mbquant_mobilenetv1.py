r"""MBQuant on ImageNet, the official MBQuant code's README recipe for MobileNetV1 (`main_mv1.py`):
multi-branch MobileNetV1 (four 2-bit branches per pointwise 1x1 conv; the depthwise 3x3 convs
b-bit per selected chunk, the code's ``QConv_Tra_Mulit``; FP 3x3 stem and classifier; the code's
partial widths 52/40/101/.../892/1024), bits 2/4/6/8 trained together on every step, in-place
distillation from 8 bits, amortised selection; SGD momentum 0.9, lr 0.1, weight decay 1e-4 but
**none on the depthwise kernels and on BatchNorm** (``optimizer.no_decay=('*_dw/kernel',)``,
``decay_batchnorm=False``), Adam 1e-4 for the intervals, cosine stepped per epoch; 90 epochs,
global batch 256; the same ImageNet augmentation as ResNet-18. No channel shuffle (commented out
in the code). Intervals initialised from one training batch per bit-width.

Not the code's: the code starts from pytorchcv's pretrained FP ``mobilenet_w1`` tiled into every
branch; this trains from scratch (use ``--config.init_from`` with a run of the same model to
start from trained weights). Per-bit-width stem BN; ``weight_slots='branch'``,
``weight_interval_std='chunk'`` (``'position'``/``'filter'`` for the code's).
  jaxquant train --config experiments/configs/imagenet_mbquant_mobilenetv1.py \
      --config.data_dir=DATA_DIR --workdir runs/imagenet_mbquant_mobilenetv1
"""

from imagenet_mbquant_resnet18 import get_config as resnet18_config  # a sibling config


def get_config():
    c = resnet18_config()  # the same bits, selection, schedule, batch and epochs
    c.model = "mobilenet_v1"
    c.mbquant.partial_widths = ()  # the code's 13 widths (52, 40, 101, ..., 892, 1024)
    c.mbquant.channel_shuffle = False  # the code's MobileNetV1 has none
    c.optimizer.decay_batchnorm = False  # main_mv1.py: no decay on BatchNorm
    c.optimizer.no_decay = ("*_dw/kernel",)  # nor on the depthwise kernels
    return c

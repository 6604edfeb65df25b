r"""MBQuant on ImageNet, ResNet-50 with the official MBQuant code's model (``resnet50_quant`` in
`main_resnet.py`) and its ResNet recipe (the README has no ResNet-50 command; its ResNet-18 one):
multi-branch bottleneck ResNet-50 (four 2-bit branches per body conv and per 1x1 projection, FP
7x7 stem and classifier), the code's partial widths 208/416/832/2048 (block outputs) and
40/80/160/320 (bottleneck middles), no channel shuffle (commented out in the code's bottleneck);
bits 2/4/6/8 together, in-place distillation from 8 bits, amortised selection; SGD momentum 0.9,
lr 0.1, weight decay 1e-4 on every model parameter (BatchNorm included), Adam 1e-4 for the
intervals, cosine stepped per epoch; 90 epochs, global batch 256. From scratch: the code's
ResNet-50 loader of pretrained weights is broken as released.
  jaxquant train --config experiments/configs/imagenet_mbquant_resnet50.py \
      --config.data_dir=DATA_DIR --workdir runs/imagenet_mbquant_resnet50
"""

from imagenet_mbquant_resnet18 import get_config as resnet18_config  # a sibling config


def get_config():
    c = resnet18_config()  # the code's ResNet recipe: everything but the model
    c.model = "resnet50"
    c.mbquant.partial_widths = ()  # the code's (208, 416, 832, 2048) + (40, 80, 160, 320)
    c.mbquant.channel_shuffle = False  # commented out in the code's bottleneck
    return c

"""Full-precision CIFAR-10 ResNet-20 (post-activation, width x1): the model BitSplit quantizes
after training (`jaxquant ptq`). LSQ's FP recipe (`cifar10_lsq_resnet20.py` at 32 bits): SGD
momentum 0.9, lr 0.1, cosine, weight decay 1e-4, 200 epochs, batch 128, crop + flip. For GPU/TPU.
  jaxquant train --config experiments/configs/cifar10_fp_resnet20.py --workdir runs/fp_resnet20
  jaxquant ptq --workdir runs/fp_resnet20
"""

from cifar10_lsq_resnet20 import get_config as lsq_config  # a sibling config


def get_config():
    c = lsq_config()
    c.bits = (32,)  # 32 = full precision: the LSQ quantizers pass their inputs through
    return c

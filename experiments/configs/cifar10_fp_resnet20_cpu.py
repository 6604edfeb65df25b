r"""Full-precision CIFAR-10 (JPEG-rebuilt) ResNet-20, CPU scale: `cifar10_fp_resnet20.py` for 3
epochs, the FP model of the BitSplit CPU experiment (`experiments/bitsplit_cifar10.py`).
  jaxquant train --config experiments/configs/cifar10_fp_resnet20_cpu.py \
      --config.data_dir=/tmp/tfds_data
"""

from cifar10_fp_resnet20 import get_config as fp_config  # a sibling config


def get_config():
    c = fp_config()
    c.epochs = 3
    c.checkpoint_every_steps = 500
    return c

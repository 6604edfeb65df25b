r"""Vertical Layering on CIFAR-100 (the dataset the VL paper reports on, with ImageNet), the full
recipe for GPU/TPU: the same model and training as `cifar10_vertical_resnet20.py` (post-activation
ResNet-20 x1, bits 2..8 and FP from one 8-bit floor-cascade source, SGD momentum 0.9, lr 0.1,
cosine, wd 1e-4, 200 epochs, batch 128, crop + flip), with a 100-way classifier. Those values are
ours, not the paper's (its CIFAR-100 backbones and recipe are not public; see that file's
docstring for where each one comes from).
  jaxquant train --config experiments/configs/cifar100_vertical_resnet20.py \
      --config.data_dir=DATA_DIR --workdir runs/cifar100_vertical_resnet20
  jaxquant export --workdir runs/cifar100_vertical_resnet20 \
      --out runs/cifar100_vertical_resnet20/model.vl
CIFAR-100 must be prepared in DATA_DIR in the array_record format: online,
`jaxquant data prepare cifar100 --data-dir DATA_DIR` downloads and builds it (the `tf` extra).
"""

from cifar10_vertical_resnet20 import get_config as cifar10_config  # a sibling config


def get_config():
    c = cifar10_config()
    c.dataset = "cifar100"
    return c

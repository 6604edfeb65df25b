r"""Bin Regularization's fine-tuning protocol on CIFAR-10, post-activation ResNet-20 (width x1):
each low-bit model starts from the trained full-precision model (``init_from``, the FP run of
`cifar10_fp_resnet20.py`) and is fine-tuned with SGD momentum 0.9, lr 0.01 cosine, 90 epochs,
weight decay 1e-4 / 5e-5 / 2.5e-5 at 4 / 3 / 2 bits (``optimizer.weight_decay_by_bits``), LSQ
step sizes re-initialised from the FP weights and one batch. BR: lambda 0.5, two-stage with
the first 30 of the 90 epochs CE only (the paper's ImageNet schedule), weight units, summed over
layers. ``--config.method=lsq`` is the LSQ baseline of the same protocol. For GPU/TPU.
  jaxquant train --config experiments/configs/cifar10_fp_resnet20.py --workdir runs/fp_resnet20
  jaxquant train --config experiments/configs/cifar10_binreg_finetune_resnet20.py \
      --config.init_from=runs/fp_resnet20 --config.bits=2 --workdir runs/binreg_ft_2
"""

from cifar10_binreg_resnet20 import get_config as binreg_config  # a sibling config


def get_config():
    c = binreg_config()
    c.init_from = "runs/fp_resnet20"
    c.bits = (2,)
    c.epochs = 90
    c.optimizer.learning_rate = 0.01
    c.optimizer.schedule = "cosine"
    c.optimizer.weight_decay_by_bits = ((2, 2.5e-5), (3, 5e-5), (4, 1e-4))
    c.binreg.start_epochs = 30.0
    return c

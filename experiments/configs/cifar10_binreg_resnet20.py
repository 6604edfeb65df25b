r"""LSQ + Bin Regularization on CIFAR-10, post-activation ResNet-20 (width x1), one model per
bit-width (``--config.bits=2``, 3, 4; ``--config.method=lsq`` for the LSQ baseline). For GPU/TPU.

The recipe of `cifar10_lsq_resnet20.py` (SGD momentum 0.9, lr 0.1, cosine, weight decay 1e-4,
200 epochs, batch 128, crop + flip; step sizes with Adam 1e-3) plus BR: lambda 0.5 (the paper's
Table 7), two-stage with the first third CE only (the paper: 30 of 90 ImageNet epochs; its CIFAR
recipe is not known to us), weight units, summed over layers. The paper starts from a
full-precision model, as LSQ does; this config trains from scratch (no FP-checkpoint init here).
  jaxquant train --config experiments/configs/cifar10_binreg_resnet20.py --config.bits=2 \
      --config.data_dir=...
"""

from cifar10_lsq_resnet20 import get_config as lsq_config  # a sibling config


def get_config():
    c = lsq_config()
    c.method = "binreg"
    c.bits = (2,)
    # the method's: 0.5 for binreg (the paper), 0 for the --config.method=lsq baseline
    c.binreg.lambda_ = -1.0
    c.binreg.schedule = "two_stage"
    c.binreg.start_epochs = -1.0  # a third of the 200 epochs
    c.binreg.units = "weight"
    c.binreg.layer_reduction = "sum"
    return c

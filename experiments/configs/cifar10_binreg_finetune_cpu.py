r"""`cifar10_binreg_finetune_resnet20.py` at CPU scale: the same protocol (lr 0.01 cosine, the
per-bit-width weight decay, BR lambda 0.5 two-stage, weight units), 3 epochs with the first CE
only, from the 3-epoch FP ResNet-20 of `cifar10_fp_resnet20_cpu.py`
(`experiments/binreg_finetune_cifar10.py` runs both and the LSQ baseline).
  jaxquant train --config experiments/configs/cifar10_binreg_finetune_cpu.py \
      --config.init_from=runs/fp_resnet20_cpu --config.data_dir=/tmp/tfds_data
"""

from cifar10_binreg_finetune_resnet20 import get_config as finetune_config  # a sibling config


def get_config():
    c = finetune_config()
    c.init_from = "runs/fp_resnet20_cpu"
    c.epochs = 3
    c.binreg.start_epochs = 1.0
    c.checkpoint_every_steps = 500
    return c

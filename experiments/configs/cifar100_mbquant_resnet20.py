r"""MBQuant on CIFAR-100, the official MBQuant code's README recipe (`main_cifar.py`), for
GPU/TPU: multi-branch post-activation ResNet-20 (four 2-bit branches per body conv, FP stem and
classifier), bits 2/4/6/8 trained together on every step, in-place distillation from 8 bits
(``0.5 softCE + 0.5 CE``), amortised branch selection; SGD momentum 0.9, lr 0.1, weight decay
1e-4 on every model parameter (BatchNorm included), Adam 1e-4 for the intervals, both on a cosine
stepped once per epoch; 200 epochs, batch 128, random crop (pad 4) + flip. Intervals initialised
from one training batch per bit-width (the code's ``init_quant_model``).

Ours, not the code's: the partial-branch widths (11, 23, 43) (the code's 16/24/48 miss b*b
BitOPs by 8%), one tiled stem copy per branch (the code reads a 64-channel stem at branch
offsets) and per-bit-width stem BN; set ``weight_slots='position'`` and
``weight_interval_std='filter'`` for the code's interval slots and init quirk.
  jaxquant train --config experiments/configs/cifar100_mbquant_resnet20.py \
      --config.data_dir=DATA_DIR --workdir runs/cifar100_mbquant_resnet20
CIFAR-100 must be prepared in DATA_DIR (array_record): online,
`jaxquant data prepare cifar100 --data-dir DATA_DIR` downloads and builds it (the `tf` extra).
"""

from jaxquant.configs.base import base_config


def get_config():
    c = base_config()
    c.method = "mbquant"
    c.dataset = "cifar100"
    c.model = "resnet20"
    c.width = 1
    c.bits = (2, 4, 6, 8)
    c.mbquant.selection = "amortised"
    c.distillation = "largest"
    c.mbquant.interval_init = "batches"
    c.augment = "crop_flip"
    c.crop_padding = 4
    c.epochs = 200
    c.batch_size = 128
    c.optimizer.optimizer = "sgd"
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.decay_batchnorm = True
    c.optimizer.schedule = "cosine"
    c.optimizer.per_epoch_schedule = True
    c.optimizer.quantizer_optimizer = "adam"
    c.optimizer.quantizer_learning_rate = 1e-4
    c.optimizer.quantizer_schedule = "cosine"
    c.checkpoint_every_steps = 2000
    return c

r"""MBQuant on CIFAR-10 (JPEG-rebuilt: see experiments/README.md), CPU scale: one multi-branch
SmallCNN (FP stem of 8 channels tiled into four branches of 16/32/32-channel 2-bit convs, FP
classifier) trained once for every bit-width 2..8, in-place distillation from 8 bits, amortised
selection, intervals initialised from one batch per bit-width; the precisions unrolled in the
step, so each computes only its selected branches.

The code's optimisers (SGD momentum 0.9, lr 0.1, weight decay 1e-4 on every model parameter;
Adam 1e-4 for the intervals); ours, for a 2-epoch CPU budget: the cosine steps per step (the
code's per-epoch staircase would hold lr 0.1 for half of a 2-epoch run), no augmentation, and the
model size. `experiments/mbquant_cifar10.py` runs the comparison (naive selection, no
distillation, Any-Precision of the same body size).
  jaxquant train --config experiments/configs/cifar10_mbquant_cpu.py \
      --config.data_dir=/tmp/tfds_data
"""

from jaxquant.configs.base import base_config


def get_config():
    c = base_config()
    c.method = "mbquant"
    c.dataset = "cifar10"
    c.model = "small_cnn"
    c.widths = (8, 16, 32, 32)
    c.stem_pool = True
    c.augment = "none"
    c.bits = (2, 3, 4, 5, 6, 7, 8)
    c.mbquant.selection = "amortised"
    c.distillation = "largest"
    c.mbquant.interval_init = "batches"
    c.precision_mode = "unroll"
    c.epochs = 2
    c.batch_size = 128
    c.optimizer.optimizer = "sgd"
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "cosine"
    c.optimizer.quantizer_optimizer = "adam"
    c.optimizer.quantizer_learning_rate = 1e-4
    c.checkpoint_every_steps = 500
    return c

r"""Vertical Layering on CIFAR-10 (JPEG-rebuilt: see experiments/README.md), CPU scale: one SmallCNN
(16/32/64/64 channels, FP stem and classifier) trained once for bits 2..8 and FP, every integer
bit-width cascaded from one 8-bit source code (floor cascade, mid-rise grid). 4 epochs, Adam,
cosine, no augmentation; the precisions unrolled in the step (faster than vmap on CPU here).
  jaxquant train --config experiments/configs/cifar10_vertical_cpu.py \
      --config.data_dir=/tmp/tfds_data
The whole comparison (VL vs dedicated LSQ vs MSB slicing): experiments/vertical_cifar10.py.
"""

from jaxquant.configs.base import base_config


def get_config():
    c = base_config()
    c.method = "vertical"
    c.dataset = "cifar10"
    c.model = "small_cnn"
    c.widths = (16, 32, 64, 64)
    c.stem_pool = True
    c.augment = "none"
    c.bits = (2, 3, 4, 5, 6, 7, 8, 32)
    c.vertical.source_bits = 8
    c.vertical.cascade = "floor"
    c.distillation = "none"
    c.precision_mode = "unroll"
    c.epochs = 4
    c.batch_size = 128
    c.optimizer.optimizer = "adam"
    c.optimizer.learning_rate = 2e-3
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "cosine"
    c.optimizer.quantizer_learning_rate = 1e-3
    c.checkpoint_every_steps = 500
    return c

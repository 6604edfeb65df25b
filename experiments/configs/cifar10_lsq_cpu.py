r"""Dedicated LSQ on CIFAR-10 (JPEG-rebuilt), CPU scale: the baseline of `cifar10_vertical_cpu.py`,
one model per bit-width (``--config.bits=2`` ... ``8``; ``32`` trains the FP model), same model,
budget and optimizer.
  jaxquant train --config experiments/configs/cifar10_lsq_cpu.py --config.bits=4 \
      --config.data_dir=/tmp/tfds_data
"""

from cifar10_vertical_cpu import get_config as vertical_config  # a sibling config


def get_config():
    c = vertical_config()
    c.method = "lsq"
    c.bits = (4,)
    c.precision_mode = "vmap"
    return c

r"""Dedicated LSQ on Fashion-MNIST: one model per bit-width (override ``--config.bits=2``), with the
same SmallCNN, budget and optimizer as `fashion_mnist_anyprecision.py`. ``bits=32`` trains the FP
model.
  jaxquant train --config experiments/configs/fashion_mnist_lsq.py --config.bits=4 \
      --config.data_dir=/tmp/tfds_data
"""

from fashion_mnist_anyprecision import get_config as anyprecision_config  # a sibling config


def get_config():
    c = anyprecision_config()
    c.method = "lsq"
    c.bits = (4,)
    c.distillation = "none"
    return c

r"""Any-Precision DNN on Fashion-MNIST (real data, built by `jaxquant data prepare fashion_mnist`),
CPU scale.

One SmallCNN (16/32/64 channels, FP stem and classifier) trained once for bits 2, 4, 8 and FP:
DoReFa quantizers, switchable BN, recursive in-place distillation. 3 epochs, Adam, cosine.
  jaxquant train --config experiments/configs/fashion_mnist_anyprecision.py \
      --config.data_dir=/tmp/tfds_data
"""

from jaxquant.configs.base import base_config


def get_config():
    c = base_config()
    c.method = "anyprecision"
    c.dataset = "fashion_mnist"
    c.model = "small_cnn"
    c.widths = (16, 32, 64)
    c.stem_pool = True
    c.augment = "none"
    c.bits = (2, 4, 8, 32)
    c.distillation = "recursive"
    c.epochs = 3
    c.batch_size = 128
    c.optimizer.optimizer = "adam"
    c.optimizer.learning_rate = 2e-3
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "cosine"
    c.optimizer.quantizer_learning_rate = 1e-3
    c.checkpoint_every_steps = 500
    return c

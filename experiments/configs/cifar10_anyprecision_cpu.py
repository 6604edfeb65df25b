r"""Any-Precision DNN on CIFAR-10 (JPEG-rebuilt), CPU scale: the baseline of
`experiments/mbquant_cifar10.py`. A SmallCNN with twice the branch widths of
`cifar10_mbquant_cpu.py` (FP stem 16, quantized 32/64/64), so its quantized body has exactly as
many weights as MBQuant's four branches (59,904); every bit-width 2..8 trained together, DoReFa
quantizers, switchable BN, recursive distillation, Any-Precision's Adam (lr 1e-3, no weight
decay, cosine), the same 2 epochs and batch as MBQuant.
  jaxquant train --config experiments/configs/cifar10_anyprecision_cpu.py \
      --config.data_dir=/tmp/tfds_data
"""

from jaxquant.configs.base import base_config


def get_config():
    c = base_config()
    c.method = "anyprecision"
    c.dataset = "cifar10"
    c.model = "small_cnn"
    c.widths = (16, 32, 64, 64)
    c.stem_pool = True
    c.augment = "none"
    c.bits = (2, 3, 4, 5, 6, 7, 8)
    c.distillation = "recursive"
    c.epochs = 2
    c.batch_size = 128
    c.optimizer.optimizer = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "cosine"
    c.checkpoint_every_steps = 500
    return c

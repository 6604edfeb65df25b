"""Any-Precision DNN, the paper's CIFAR-10 recipe (official code's `train_cifar10.sh`), for GPU/TPU.

Pre-activation ResNet-20 with width x5 (80/160/320 channels), FP first conv and classifier, FP
1x1 shortcut convs, switchable BN, bits 1/2/4/8/32, recursive distillation; Adam lr 1e-3, no
weight decay, 200 epochs, LR x0.1 at epochs 100/150/180, batch 128, random crop (pad 4) + flip.
The official README reports 91.89 / 93.90 / 93.86 / 93.75 / 94.11 (1/2/4/8/FP bits).
  jaxquant train --config experiments/configs/cifar10_anyprecision_resnet20.py --config.data_dir=...
On this project's data the dataset is CIFAR-10 (JPEG-rebuilt): report it under that name.
"""

from jaxquant.configs.base import base_config


def get_config():
    c = base_config()
    c.method = "anyprecision"
    c.dataset = "cifar10"
    c.augment = "crop_flip"
    c.model = "resnet20"
    c.width = 5
    c.preactivation = True
    c.quantize_shortcut = False
    c.bits = (1, 2, 4, 8, 32)
    c.distillation = "recursive"
    c.epochs = 200
    c.batch_size = 128
    c.optimizer.optimizer = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "step"
    c.optimizer.step_epochs = (100.0, 150.0, 180.0)
    c.optimizer.per_epoch_schedule = True
    c.checkpoint_every_steps = 2000
    return c

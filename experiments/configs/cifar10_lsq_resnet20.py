"""Dedicated LSQ on CIFAR-10, post-activation ResNet-20 (width x1), one model per bit-width
(``--config.bits=2``, 3, 4, 8; 32 for the FP baseline). For GPU/TPU.

LSQ's recipe: SGD momentum 0.9, lr 0.1 (0.01 when fine-tuning from FP), cosine, weight decay
1e-4 (the LSQ paper lowers it at 2-3 bits), 200 epochs, batch 128, crop + flip; step sizes with
Adam at lr 1e-3 here (LSQ trains them with the same SGD; set
--config.optimizer.quantizer_optimizer=sgd).
"""

from jaxquant.configs.base import base_config


def get_config():
    c = base_config()
    c.method = "lsq"
    c.dataset = "cifar10"
    c.augment = "crop_flip"
    c.model = "resnet20"
    c.width = 1
    c.bits = (4,)
    c.distillation = "none"
    c.epochs = 200
    c.batch_size = 128
    c.optimizer.optimizer = "sgd"
    c.optimizer.learning_rate = 0.1
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "cosine"
    c.checkpoint_every_steps = 2000
    return c

r"""MBQuant on ImageNet, ResNet-50 with the official MBQuant code's model (``resnet50_quant`` in
`main_resnet.py`) and its ResNet recipe (the README has no ResNet-50 command; its ResNet-18 one):
multi-branch bottleneck ResNet-50 (four 2-bit branches per body conv and per 1x1 projection, FP
7x7 stem and classifier), the code's partial widths 208/416/832/2048 (block outputs) and
40/80/160/320 (bottleneck middles), no channel shuffle (commented out in the code's bottleneck);
bits 2/4/6/8 together, in-place distillation from 8 bits, amortised selection; SGD momentum 0.9,
lr 0.1, weight decay 1e-4 on every model parameter (BatchNorm included), Adam 1e-4 for the
intervals, cosine stepped per epoch; 90 epochs, global batch 256. From scratch: the code's
ResNet-50 loader of pretrained weights is broken as released.
  jaxquant train --config experiments/configs/imagenet_mbquant_resnet50.py \
      --config.data_dir=DATA_DIR --workdir runs/imagenet_mbquant_resnet50
"""

from jaxquant.configs.base import base_config


def get_config():
    c = base_config()
    c.method = "mbquant"
    c.dataset = "imagenet2012"
    c.model = "resnet50"
    c.bits = (2, 4, 6, 8)
    c.mbquant.selection = "amortised"
    c.mbquant.partial_widths = ()  # the code's (208, 416, 832, 2048) + (40, 80, 160, 320)
    c.mbquant.channel_shuffle = False  # commented out in the code's bottleneck
    c.distillation = "largest"
    c.mbquant.interval_init = "batches"
    c.augment = "none"  # RandomResizedCrop + flip happen in the input pipeline
    c.epochs = 90
    c.batch_size = 256
    c.optimizer.optimizer = "sgd"
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 1e-4
    c.optimizer.decay_batchnorm = True
    c.optimizer.schedule = "cosine"
    c.optimizer.per_epoch_schedule = True
    c.optimizer.warmup_epochs = 0.0
    c.optimizer.quantizer_optimizer = "adam"
    c.optimizer.quantizer_learning_rate = 1e-4
    c.optimizer.quantizer_schedule = "cosine"
    c.checkpoint_every_steps = 5000  # about one epoch (1,281,167 / 256)
    return c

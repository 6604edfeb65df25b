r"""LSQ + Bin Regularization on ImageNet, ResNet-18 (FP stem and classifier), one model per
bit-width (``--config.bits=2``, 3, 4; ``--config.method=lsq`` for the LSQ baseline). For GPU/TPU.

From the paper (Bin Regularization, ICCV 2021; lambda from its Table 7): lambda 0.5, two-stage
with 30 of 90 epochs CE only, weights only. The rest is LSQ's ImageNet recipe, not the BR
paper's (its tables and training details were not reachable): SGD momentum 0.9, lr 0.01 with
cosine decay (LSQ fine-tunes from an FP model; lr 0.1 from scratch), weight decay 1e-4 (LSQ
lowers it at 2-3 bits), batch 256, RandomResizedCrop + flip. The paper's headline models are
MobileNetV2 (`imagenet_binreg_mobilenetv2.py`) and MobileNetV3-Small at 2 bits; jaxquant has no
MobileNetV3.

ImageNet streams from ``imagenet2012`` prepared as array_record in DATA_DIR
(`jaxquant.data.StreamingDataset`):
  jaxquant train --config experiments/configs/imagenet_binreg_resnet18.py \
      --config.data_dir=DATA_DIR --workdir runs/imagenet_br_resnet18
"""

from jaxquant.configs.base import base_config


def get_config():
    c = base_config()
    c.method = "binreg"
    c.dataset = "imagenet2012"
    c.model = "resnet18"
    c.bits = (2,)
    c.distillation = "none"
    c.augment = "none"  # RandomResizedCrop + flip happen on the host as the data streams
    c.epochs = 90
    c.batch_size = 256
    c.eval_batch_size = 250
    # the method's: 0.5 for binreg (the paper), 0 for the --config.method=lsq baseline
    c.binreg.lambda_ = -1.0
    c.binreg.schedule = "two_stage"
    c.binreg.start_epochs = 30.0
    c.binreg.units = "weight"
    c.binreg.layer_reduction = "sum"
    c.optimizer.optimizer = "sgd"
    c.optimizer.learning_rate = 0.01
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "cosine"
    c.optimizer.quantizer_learning_rate = 1e-3
    c.checkpoint_every_steps = 5000
    return c

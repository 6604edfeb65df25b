r"""MBQuant on ImageNet, the official MBQuant code's README recipe for ResNet-18 (`main_resnet.py`),
for GPU/TPU: multi-branch ImageNet ResNet-18 (four 2-bit branches per body conv
and per 1x1 downsample, FP 7x7 stem and classifier, partial widths 40/76/184/396), bits 2/4/6/8
trained together on every step, in-place distillation from 8 bits (``0.5 softCE + 0.5 CE``),
amortised branch selection, from scratch; SGD momentum 0.9, lr 0.1, weight decay 1e-4 on every
model parameter (BatchNorm included), Adam 1e-4 for the intervals, both on a cosine stepped once
per epoch; 90 epochs, global batch 256 (the code: 4 GPUs x 64 with SyncBN; here BatchNorm sees
the global batch of a sharded step); RandomResizedCrop(224, scale 0.08-1) + flip for training,
resize 256 / centre-crop 224 for evaluation (on the host as the data streams,
`jaxquant.data.StreamingDataset`, so no on-device augmentation). Intervals initialised from one
training batch per bit-width (``init_quant_model``).

``channel_shuffle=True`` for parity with the code, whose downsample blocks shuffle the residual
path's channels across the selected branches
(`jaxquant.models.multibranch.channel_shuffle_indices`); the paper calls the branches
independent, so ``--config.mbquant.channel_shuffle=False`` is the clean variant.

Ours, not the code's: per-bit-width stem BN (the code shares one), ``weight_slots='branch'`` and
``weight_interval_std='chunk'`` (set ``'position'`` and ``'filter'`` for the code's interval
slots and init quirk).
  jaxquant train --config experiments/configs/imagenet_mbquant_resnet18.py \
      --config.data_dir=DATA_DIR --workdir runs/imagenet_mbquant_resnet18
ImageNet streams from ``imagenet2012`` prepared as array_record in DATA_DIR. ResNet-34:
``--config.model=resnet34`` (the code's partial widths 39/78/188/400 follow from the stage sizes).
"""

from jaxquant.configs.base import base_config


def get_config():
    c = base_config()
    c.method = "mbquant"
    c.dataset = "imagenet2012"
    c.model = "resnet18"
    c.bits = (2, 4, 6, 8)
    c.mbquant.selection = "amortised"
    c.mbquant.partial_widths = ()  # the model's default: the code's (40, 76, 184, 396)
    # the code's cross-branch shuffle in downsample blocks (parity)
    c.mbquant.channel_shuffle = True
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

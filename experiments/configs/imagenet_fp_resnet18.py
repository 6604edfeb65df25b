r"""Full-precision ImageNet ResNet-18 (torchvision's layout), the model BitSplit quantizes after
training (`imagenet_bitsplit_resnet18.py`). torchvision's reference recipe: SGD momentum 0.9,
lr 0.1 divided by 10 at epochs 30 and 60, weight decay 1e-4, 90 epochs, batch 256,
RandomResizedCrop(224) + flip; evaluation resize 256 / centre-crop 224. For GPU/TPU; ImageNet
streams from ``imagenet2012`` prepared as array_record in DATA_DIR.
  jaxquant train --config experiments/configs/imagenet_fp_resnet18.py \
      --config.data_dir=DATA_DIR --workdir runs/imagenet_fp_resnet18
  jaxquant ptq --workdir runs/imagenet_fp_resnet18 \
      --config experiments/configs/imagenet_bitsplit_resnet18.py
"""

from jaxquant.configs.base import base_config


def get_config():
    c = base_config()
    c.method = "lsq"
    c.bits = (32,)  # 32 = full precision: the LSQ quantizers pass their inputs through
    c.dataset = "imagenet2012"
    c.model = "resnet18"
    c.distillation = "none"
    c.augment = "none"  # RandomResizedCrop + flip happen on the host as the data streams
    c.epochs = 90
    c.batch_size = 256
    c.eval_batch_size = 250
    c.optimizer.optimizer = "sgd"
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "step"
    c.optimizer.step_epochs = (30.0, 60.0)
    c.optimizer.step_factor = 0.1
    c.optimizer.per_epoch_schedule = True
    c.checkpoint_every_steps = 5000
    return c

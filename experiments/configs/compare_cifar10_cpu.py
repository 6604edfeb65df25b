r"""Every method on CIFAR-10 (JPEG-rebuilt: see experiments/README.md) at the CPU-scale budgets of
the `cifar10_*_cpu.py` configs: `jaxquant compare`, bits 2, 3, 4 and 8.

The base is `cifar10_vertical_cpu.py`'s SmallCNN (FP stem 16 + max-pool, quantized 32/64/64, FP
classifier; no augmentation, batch 128, Adam 2e-3, cosine, 4 epochs); each entry sets what its
own CPU config sets: dedicated LSQ (`cifar10_lsq_cpu.py`, one run per bit-width), LSQ + Bin
Regularization (`cifar10_binreg_cpu.py`: 6 epochs, CE only for the first 2), Any-Precision
(`cifar10_anyprecision_cpu.py`: 2 epochs, Adam 1e-3, recursive distillation), Vertical Layering
(`cifar10_vertical_cpu.py`), MBQuant (`cifar10_mbquant_cpu.py`: its 8/16/32/32 multi-branch model,
SGD 0.1, 2 epochs), an FP SmallCNN of the base's budget, and BitSplit and round-to-nearest PTQ of
it at W<b>A<b> with the official code's calibration (`cifar10_bitsplit_cpu.py`). 23 minutes on
2 CPU cores (12 training runs of 1-4 minutes each, then both PTQs); the table is in
experiments/README.md.
  jaxquant compare experiments/configs/compare_cifar10_cpu.py --workdir runs/compare_cifar10 \
      --config.base.data_dir=/tmp/tfds_data
"""

import ml_collections
from cifar10_vertical_cpu import get_config as vertical_config  # a sibling config

from jaxquant.configs.compare import every_method
from jaxquant.configs.ptq import ptq_config


def get_config():
    c = ml_collections.ConfigDict()
    c.base = vertical_config()
    c.base.method = "lsq"
    c.bits = (2, 3, 4, 8)
    c.ptq = ptq_config()  # the official code's values; settings and methods come from the entries
    c.entries = every_method(
        lsq={"precision_mode": "vmap"},
        lsq_br={
            "precision_mode": "vmap",
            "epochs": 6,
            "binreg.lambda_": -1.0,
            "binreg.schedule": "two_stage",
            "binreg.start_epochs": 2.0,
            "binreg.units": "weight",
            "binreg.layer_reduction": "sum",
        },
        anyprecision={
            "distillation": "recursive",
            "precision_mode": "auto",
            "epochs": 2,
            "optimizer.learning_rate": 1e-3,
        },
        mbquant={
            "widths": (8, 16, 32, 32),
            "mbquant.selection": "amortised",
            "mbquant.interval_init": "batches",
            "distillation": "largest",
            "epochs": 2,
            "optimizer.optimizer": "sgd",
            "optimizer.learning_rate": 0.1,
            "optimizer.momentum": 0.9,
            "optimizer.weight_decay": 1e-4,
            "optimizer.quantizer_optimizer": "adam",
            "optimizer.quantizer_learning_rate": 1e-4,
        },
    )
    return c

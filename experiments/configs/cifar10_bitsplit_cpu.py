"""BitSplit PTQ of the CPU-scale FP ResNet-20 (`cifar10_fp_resnet20_cpu.py`): the official code's
values (640 augmented calibration images, 15,000 rows per layer, 100 ofwa_rr epochs, 8-bit first
layer and classifier, 8-bit classifier input, BN re-estimated twice) for W8A8 (a check), W4A8,
W3A8, W2A8 and W4A4, each by round-to-nearest, BitSplit and BitSplit + ECAQ.
  jaxquant ptq --workdir runs/fp_resnet20_cpu --config experiments/configs/cifar10_bitsplit_cpu.py
"""

from jaxquant.ptq import ptq_config


def get_config():
    c = ptq_config()
    c.settings = ("W8A8", "W4A8", "W3A8", "W2A8", "W4A4")
    c.methods = ("rtn", "bitsplit", "bitsplit_ecaq")
    return c

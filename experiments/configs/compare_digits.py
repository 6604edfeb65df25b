r"""Every method on scikit-learn's digits (offline), small enough for a test: `jaxquant compare`.

One tiny SmallCNN (FP stem of 8 channels, quantized 16/16 body, FP classifier), 6 epochs, Adam,
for bits 2, 4 and 8: dedicated LSQ and LSQ + Bin Regularization (one run per bit-width),
Any-Precision, Vertical Layering and MBQuant (one run each; MBQuant's four 2-bit branches of
4/8/8 channels hold as many body weights as the others' body), an FP run, and BitSplit and
round-to-nearest PTQ of that FP model at W<b>A<b> (a short calibration). 85 s on 2 CPU cores;
a rerun reads the finished runs and only writes the table.
  jaxquant compare experiments/configs/compare_digits.py --workdir runs/compare_digits
"""

import ml_collections

from jaxquant.configs.base import base_config
from jaxquant.configs.compare import every_method
from jaxquant.configs.ptq import ptq_config


def get_config():
    c = ml_collections.ConfigDict()
    b = c.base = base_config()
    b.dataset = "digits"
    b.model = "small_cnn"
    b.widths = (8, 16, 16)
    b.epochs = 6
    b.batch_size = 64
    b.optimizer.optimizer = "adam"
    b.optimizer.learning_rate = 3e-3
    b.optimizer.weight_decay = 0.0
    b.optimizer.schedule = "cosine"
    b.eval_every_epochs = 0  # evaluated once, at the end
    b.checkpoint_every_steps = 500
    c.bits = (2, 4, 8)
    p = c.ptq = ptq_config()  # settings and methods come from bits and each entry
    p.calibration_images = 256
    p.calibration_rows = 2000
    p.activation_samples = 20000
    p.epochs = 20
    p.ofwa_epochs = 10
    p.bn_batches = 10
    c.entries = every_method(mbquant={"widths": (4, 8, 8)})
    return c

r"""Bin Regularization's lambda sweep on CIFAR-10 (JPEG-rebuilt), CPU scale: the ablation of
Han et al. (ICCV 2021, Table 7, which selects lambda = 0.5), one 2-bit run per lambda with
everything else as `cifar10_binreg_cpu.py` (SmallCNN 16/32/64/64, 6 epochs, Adam 2e-3, the
paper's two-stage schedule: CE only for 2 epochs, then CE + lambda * BR in weight units).

Only Table 7's choice, 0.5, is known to us (the paper's full text was not at hand); the other
values of its grid are not, so ``LAMBDAS`` brackets 0.5 by factors of 2 to 5 either way, and 0
is the LSQ baseline (BR off, the same run as ``--config.method=lsq``). Replace ``LAMBDAS`` with
the table's values when they are known. The loop, about 3-3.5 minutes per run on the 2-core
machine when it is quiet:

  for lam in 0 0.1 0.25 0.5 1 2; do
    jaxquant train --config experiments/configs/cifar10_binreg_lambda_sweep_cpu.py \
        --config.binreg.lambda_=$lam --workdir runs/cifar10_binreg_lambda_$lam \
        --config.data_dir=/tmp/tfds_data
  done

Add ``--config.binreg.schedule=alternating_steps_br`` (the paper's S3; fine-tune a trained run
with ``--config.init_from``) or ``joint`` to sweep another schedule, ``--config.bits=3`` or
``4`` another bit-width; ``jaxquant bins --workdir DIR`` compares the runs' bins.
"""

from cifar10_binreg_cpu import get_config as binreg_config  # a sibling config

LAMBDAS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
"""The sweep's values of ``binreg.lambda_`` (the docstring's loop)."""


def get_config():
    c = binreg_config()
    c.bits = (2,)
    c.binreg.lambda_ = 0.5  # one point of the sweep; set it with --config.binreg.lambda_
    return c

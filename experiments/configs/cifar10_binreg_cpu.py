r"""LSQ + Bin Regularization on CIFAR-10 (JPEG-rebuilt), CPU scale: one dedicated model per
bit-width (``--config.bits=2``, 3, 4); ``--config.method=lsq`` trains the LSQ baseline with the
same model, budget and optimizer (`experiments/binreg_cifar10.py` runs the whole comparison).

SmallCNN 16/32/64/64 (FP stem + max-pool, FP classifier), 6 epochs, batch 128, Adam 2e-3 with
cosine decay (quantizer parameters Adam 1e-3), no augmentation, as `cifar10_lsq_cpu.py` but 6
epochs so that the paper's two-stage schedule has room: CE only for the first 2 epochs (the
paper: 30 of 90), then CE + 0.5 * BR (weight units, sum over layers). About 3-3.5 minutes per
run on the 2-core machine when it is quiet.
  jaxquant train --config experiments/configs/cifar10_binreg_cpu.py --config.bits=2 \
      --config.data_dir=/tmp/tfds_data
"""

from cifar10_lsq_cpu import get_config as lsq_config  # a sibling config


def get_config():
    c = lsq_config()
    c.method = "binreg"
    c.bits = (2,)
    c.epochs = 6
    # the method's: 0.5 for binreg (the paper), 0 for the --config.method=lsq baseline
    c.binreg.lambda_ = -1.0
    c.binreg.schedule = "two_stage"
    c.binreg.start_epochs = 2.0
    c.binreg.units = "weight"
    c.binreg.layer_reduction = "sum"
    return c

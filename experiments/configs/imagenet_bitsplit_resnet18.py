"""BitSplit PTQ of an FP ImageNet ResNet-18, as the official BitSplit fast script
(`main_quant_resnet18_twostep_fast.py`): one batch of 640 augmented training images, 15,000
im2col rows per conv, 100 ofwa_rr epochs, stem and FC weights at 8 bits (the FC by ofwa only),
the FC input at 8 bits, BN re-estimated twice on 201 x 64 training images; the paper's settings
W4A8 and W4A4 (plus W3A8 and W2A8).
For real clusters: ``ofwa_rr`` on layer4 (512 x 4608) is about 11 GMAC per plane-epoch.
  jaxquant ptq --workdir FP_RESNET18_RUN --config experiments/configs/imagenet_bitsplit_resnet18.py
FP_RESNET18_RUN is a `jaxquant train` run of ``model=resnet18``, ``bits=(32,)``
(`imagenet_fp_resnet18.py`); calibration and BN batches stream from its ``imagenet2012``.
"""

from jaxquant.ptq import ptq_config


def get_config():
    c = ptq_config()
    c.settings = ("W4A8", "W4A4", "W3A8", "W2A8")
    c.methods = ("rtn", "bitsplit", "bitsplit_ecaq")
    c.eval_batch_size = 64
    return c

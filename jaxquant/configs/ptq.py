"""The embedded PTQ config: every key `jaxquant ptq` understands, with the official BitSplit
code's values as defaults."""

import ml_collections


def ptq_config() -> ml_collections.ConfigDict:
    """Every key `jaxquant ptq` understands, with the official code's values as defaults."""
    c = ml_collections.ConfigDict()
    c.settings = (
        "W4A8",
        "W3A8",
        "W4A4",
        "W2A8",
        "W8A8",
    )  # W<weight bits>A<activation bits>; A32 = FP activations
    c.methods = ("rtn", "bitsplit", "bitsplit_ecaq")  # every PTQ method (jaxquant.ptq.METHODS)
    # training images, with training augmentation (the code's one batch of 640)
    c.calibration_images = 640
    c.calibration_rows = 15000  # random im2col rows per layer for the weight objective
    c.activation_samples = 200000  # random input values per layer for the activation step
    c.epochs = 100  # ofwa_rr epochs (the code: 100, no convergence test)
    c.ofwa_epochs = 50  # weight-only ofwa epochs before ofwa_rr
    c.block = 64  # coordinates per block of the (exactly sequential) blocked sweep
    c.first_last_weight_bits = 8  # the first layer and the classifier (the paper and code: 8)
    c.last_activation_bits = 8  # the classifier's input (the code: 8)
    c.quantize_image_input = False  # the first layer's input (the image): FP in the code
    # True: ofwa_rr for the classifier too (the code: ofwa only)
    c.classifier_reconstruction = False
    c.bn_batches = 201  # BatchNorm re-estimation batches (the code: 201 x 64, twice)
    c.bn_batch_size = 64
    c.eval_batch_size = 500
    c.seed = 0
    return c


def get_config():
    return ptq_config()

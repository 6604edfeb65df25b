"""The embedded default: Any-Precision DNN on scikit-learn's digits (no download needed).

One SmallCNN trained once for bits 2, 4, 8 and FP (32): DoReFa quantizers, switchable BN,
recursive in-place distillation, FP first conv and classifier. About a minute on 2 CPU cores.
"""

from jaxquant.configs.base import base_config


def get_config():
    config = base_config()
    config.method = "anyprecision"
    config.dataset = "digits"
    config.model = "small_cnn"
    config.bits = (2, 4, 8, 32)
    # the method's own: recursive for Any-Precision, none for lsq/binreg
    config.distillation = "auto"
    config.epochs = 40
    config.batch_size = 64
    config.optimizer.optimizer = "adam"
    config.optimizer.learning_rate = 3e-3
    config.optimizer.weight_decay = 0.0
    config.optimizer.schedule = "cosine"
    config.checkpoint_every_steps = 200
    return config

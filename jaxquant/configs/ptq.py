"""The embedded PTQ config: `jaxquant.ptq.ptq_config` (the official BitSplit code's values)."""
from jaxquant.ptq import ptq_config


def get_config():
    return ptq_config()

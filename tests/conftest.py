import os

# Tests run on CPU, single-threaded XLA intra-op work is enough for the tiny models here.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

"""Data parallelism: the step on a batch sharded over 4 (fake CPU) devices equals the
single-device step on the same global batch. Runs in a subprocess: XLA_FLAGS must be set
before JAX starts."""

import os
import pathlib
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec
    from jaxquant.layers import QuantSpec
    from jaxquant.models import CifarResNet
    from jaxquant.training import (
        MultiPrecisionTrainer, OptimizerConfig, data_parallel_mesh, make_optimizer
    )
    from jaxquant.data import make_preprocess
    assert jax.device_count() == 4, jax.devices()
    bits = (2, 32)  # a quantized and the FP sub-network, distilled from FP: each compile is costly
    mesh = data_parallel_mesh()
    data, rep = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
    x = jax.random.uniform(jax.random.key(0), (32, 8, 8, 1))
    y = jnp.arange(32) % 10
    key = jax.random.key(3)
    # A ResNet (average pooling): max-pooling quantized activations has ties, and BatchNorm's
    # cross-device reduction can break a tie differently (models.common.max_pool_2x2), so a
    # max-pool model agrees only up to that. Here the quantized step agrees to rounding; its
    # 32-bit sub-network is the FP path (an all-FP model adds nothing but a second compile).
    trainer = MultiPrecisionTrainer(
        CifarResNet(depth=8, bits=bits, spec=QuantSpec()),
        bits,
        make_optimizer(OptimizerConfig(quantizer_optimizer="sgd"), 100, 10),
        distillation="largest",
        preprocess=make_preprocess((0.3,), (0.4,), "crop", 1),
    )
    state = trainer.init(jax.random.key(1), x)
    single, m_single = jax.jit(trainer.train_step)(
        jax.device_put(state, jax.devices()[0]), x, y, key
    )
    step = jax.jit(trainer.train_step, out_shardings=(rep, rep))
    xs = jax.device_put(x, data)
    assert len(xs.sharding.device_set) == 4
    sharded, m_sharded = step(jax.device_put(state, rep), xs, jax.device_put(y, data), key)
    np.testing.assert_allclose(
        m_single["loss_per_precision"], m_sharded["loss_per_precision"], rtol=1e-5
    )
    a = np.concatenate([np.ravel(v) for v in jax.tree.leaves((single.params, single.batch_stats))])
    b = np.concatenate(
        [np.ravel(v) for v in jax.tree.leaves((sharded.params, sharded.batch_stats))]
    )
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    print("SHARDED_EQUALS_SINGLE")
""")


def test_four_device_sharded_step_equals_single_device_step():
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()
    env = dict(
        os.environ,
        XLA_FLAGS=flags,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]),
    )
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SHARDED_EQUALS_SINGLE" in result.stdout

"""How large Bin Regularization's gradient is next to the cross-entropy's, per quantized layer,
for a trained run: the norm of ``lambda * dBR/dkernel`` and ``lambda * dBR/dstep`` against
``dCE/dkernel`` and ``dCE/dstep`` on one training batch, in weight and in code units.

  python experiments/binreg_gradient_scale.py --workdir runs/binreg_cifar10/binreg_2 [--lam 0.5]

The numbers quoted in docs/methods/binreg.md come from this script on a 3-epoch,
2-bit digits run (``jaxquant train --config.method=binreg --config.bits=2 --config.epochs=3
--config.widths="(16, 32)" --config.binreg.schedule=joint``).
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant import regularizers
from jaxquant.methods import binreg
from jaxquant.runs import load_run
from jaxquant.training import multi_precision_loss


def gradient_scale(workdir, lam: float = 0.5, batch_size: int = 64) -> list[dict]:
    """One row per (units, layer): the gradient norms of CE and of ``lam * BR`` (summed over
    the run's precisions) on the kernel and the step, from the first ``batch_size`` training
    images."""
    _, dataset, trainer, state, _ = load_run(workdir)
    images = jnp.asarray(dataset.train_images[:batch_size])
    labels = jnp.asarray(dataset.train_labels[:batch_size])
    x = trainer.preprocess(images, False, None) if trainer.preprocess else images
    layers = binreg.model_layers(trainer.model, images[:1].astype(jnp.float32))

    def cross_entropy(params):
        logits, _ = trainer._forward_all(params, state.batch_stats, x)
        return multi_precision_loss(
            logits, labels, trainer.bits, trainer.distillation, trainer.loss_weights
        )[0]

    ce = jax.jit(jax.grad(cross_entropy))(state.params)
    rows = []
    for units in regularizers.UNITS:

        def bin_regularization(params):
            return lam * sum(
                regularizers.bin_regularization(params, p, layers=layers, units=units)
                for p in range(trainer.num_precisions)
            )

        br = jax.jit(jax.grad(bin_regularization))(state.params)
        for path in layers:
            g_ce, g_br = regularizers.get_path(ce, path), regularizers.get_path(br, path)
            rows.append(
                {
                    "units": units,
                    "layer": binreg.layer_name(path),
                    "ce_kernel": float(jnp.linalg.norm(g_ce["kernel"])),
                    "br_kernel": float(jnp.linalg.norm(g_br["kernel"])),
                    "ce_step": float(jnp.linalg.norm(g_ce.get("weight_step", jnp.zeros(1)))),
                    "br_step": float(jnp.linalg.norm(g_br.get("weight_step", jnp.zeros(1)))),
                }
            )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--lam", type=float, default=0.5)
    args = parser.parse_args(argv)
    print(
        "| units | layer | abs(dCE/dW) | abs(lambda dBR/dW) | ratio "
        "| abs(dCE/ds) | abs(lambda dBR/ds) | ratio |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in gradient_scale(args.workdir, args.lam):
        ratio = lambda a, b: b / a if a else np.inf  # noqa: E731
        print(
            f"| {r['units']} | {r['layer']} | {r['ce_kernel']:.3g} | {r['br_kernel']:.3g} | "
            f"{ratio(r['ce_kernel'], r['br_kernel']):.3g} | {r['ce_step']:.3g} | "
            f"{r['br_step']:.3g} | "
            f"{ratio(r['ce_step'], r['br_step']):.3g} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

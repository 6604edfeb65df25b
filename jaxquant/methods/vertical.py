"""Vertical Layering (Wu et al., TPAMI 2023): once-QAT whose every bit-width is nested in one
B-bit weight code. **This is our reading** (the paper's code and full text are not public).

One FP latent weight and one learned source step ``s_B`` per layer. ``cascade='floor'``
(default): B-bit offset-binary codes on a mid-rise grid, ``w_B = s_B (u - (2^B-1)/2)``, so
dropping the LSB (``u >> 1``, ``s -> 2s``) is round-to-nearest and the k-bit model is literally
the top k bit planes (`jaxquant.nesting`). Alternatives behind the flag: ``round_clip``
(``q_{b-1} = clip(round(q_b/2))``, sequentially) and ``round_clip_direct`` (Double Rounding's
``clip(round(q_B / 2^(B-k)))``). An untrained bit-width k borrows the BatchNorm of the nearest
trained j above it (else below) and the activation step ``s_k = s_j (2^j - 1) / (2^k - 1)``.
Details: docs/methods/vertical.md
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxquant import nesting
from jaxquant import quantizers as q
from jaxquant.config import with_bits
from jaxquant.errors import BitWidthError, ConfigError
from jaxquant.layers import QuantSpec
from jaxquant.methods.base import Method, register, section
from jaxquant.params import get_path, replace_path
from jaxquant.params import quantized_layer_paths as quantized_layers
from jaxquant.training.recalibration import recalibrate_batch_norm  # noqa: F401

NAME = "vertical"
DEFAULT_DISTILLATION = "none"


SECTION = {
    "source_bits": 8,  # the source bit-width B every precision nests in
    "cascade": "floor",  # floor (bit planes) | round_clip | round_clip_direct
}


def quant_spec(config) -> QuantSpec:
    """Vertical weights from a ``config.vertical.source_bits`` source by its ``cascade``; LSQ
    activations."""
    vl = section(config, METHOD)
    weight = q.Vertical(
        source_bits=int(vl.source_bits),
        cascade=str(vl.cascade),
        per_channel=bool(config.per_channel),
    )
    return QuantSpec(weight, q.LSQ.for_activations())


def evaluation_bits(
    trained_bits: Sequence[int], source_bits: int, lowest: int = 2
) -> tuple[int, ...]:
    """Every bit-width a VL model can run at: ``lowest..B``, plus FP when it was trained."""
    integer = tuple(range(lowest, source_bits + 1))
    return integer + ((q.FP_BITS,) if q.FP_BITS in trained_bits else ())


# ----------------------------------------------------------------------------------------------
# Per-precision state: which leaves carry the precision axis, and moving rows between bit sets.


def per_precision_leaves(
    build: Callable[[tuple[int, ...]], nn.Module], bits: Sequence[int], sample: jax.Array
) -> set[str]:
    """Key paths (``jax.tree_util.keystr``) of the variables that carry a leading precision axis:
    those whose leading dimension grows when the model is built for one more bit-width."""
    bits = tuple(bits)

    def shapes(b):
        variables = jax.eval_shape(lambda: build(b).init(jax.random.key(0), sample, 0, train=True))
        return {
            jax.tree_util.keystr(p): leaf.shape
            for p, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]
        }

    base, grown = shapes(bits), shapes(bits + (bits[0],))
    return {
        k
        for k, shape in base.items()
        if grown[k] != shape and shape and grown[k][0] == shape[0] + 1 and grown[k][1:] == shape[1:]
    }


def source_precision(trained_bits: Sequence[int], k: int) -> int:
    """Index into ``trained_bits`` whose BN and activation step serve bit-width k: k itself when
    trained; else the nearest trained integer bit-width above k, else the nearest below."""
    trained_bits = tuple(trained_bits)
    if k in trained_bits:
        return trained_bits.index(k)
    if k >= q.FP_BITS:
        raise BitWidthError(f"full precision was not trained (bits {trained_bits}); add 32 to bits")
    integer = [b for b in trained_bits if b < q.FP_BITS]
    above = [b for b in integer if b > k]
    below = [b for b in integer if b < k]
    if not integer:
        raise BitWidthError(f"no integer bit-width was trained (bits {trained_bits})")
    return trained_bits.index(min(above) if above else max(below))


def select_precisions(
    variables,
    per_precision: Iterable[str],
    trained_bits: Sequence[int],
    target_bits: Sequence[int],
    signed_activations: bool = False,
):
    """Variables of a model built for ``target_bits`` from one trained for ``trained_bits``.

    Rows of trained bit-widths are copied exactly; an untrained k takes the rows of
    `source_precision` with ``act_step`` rescaled by ``Qp_j / Qp_k`` (the same clipping range).
    """
    trained_bits, target_bits = tuple(trained_bits), tuple(target_bits)
    per_precision = set(per_precision)
    index = np.asarray([source_precision(trained_bits, k) for k in target_bits])
    _, qp_target = q.quant_range(np.asarray(target_bits), signed_activations)
    _, qp_source = q.quant_range(np.asarray([trained_bits[i] for i in index]), signed_activations)
    same = np.asarray([k in trained_bits for k in target_bits])
    ratio = np.where(
        same, 1.0, np.asarray(qp_source) / np.maximum(np.asarray(qp_target), 1.0)
    ).astype(np.float32)

    def select(path, leaf):
        key = jax.tree_util.keystr(path)
        if key not in per_precision:
            return leaf
        rows = jnp.asarray(leaf)[index]
        if getattr(path[-1], "key", None) == "act_step":
            rows = jnp.where(jnp.asarray(same), rows, rows * jnp.asarray(ratio))
        return rows

    return jax.tree_util.tree_map_with_path(select, variables)


# ----------------------------------------------------------------------------------------------
# Any-bit-width evaluation of a run (trained on a subset of the bit-widths or not).


def expanded_variables(config, num_classes: int, variables, target_bits, image_shape):
    """Variables of the model built for ``target_bits`` (see `select_precisions`:
    an untrained bit-width borrows BatchNorm and a rescaled activation step)."""
    from jaxquant.methods import build_model

    spec = quant_spec(config)
    sample = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    per_precision = per_precision_leaves(
        lambda b: build_model(with_bits(config, b), num_classes, spec), tuple(config.bits), sample
    )
    return select_precisions(
        variables, per_precision, tuple(config.bits), tuple(target_bits), spec.signed_activations
    ), per_precision


def variables_for_bits(
    config,
    dataset,
    state,
    target_bits,
    recalibrate_batches: int = 0,
    log: Callable[[str], None] = print,
):
    """``(variables, per_precision)`` of a vertical run's model built for ``target_bits``: trained
    rows copied, untrained bit-widths given borrowed BatchNorm and a rescaled activation step,
    whose BatchNorm statistics are then re-estimated from ``recalibrate_batches`` training
    batches when asked (`recalibrate_batch_norm`)."""
    from jaxquant.methods import build_model

    target_bits = tuple(target_bits)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    variables, per_precision = expanded_variables(
        config, dataset.num_classes, variables, target_bits, dataset.image_shape
    )
    untrained = [i for i, b in enumerate(target_bits) if b not in config.bits]
    if recalibrate_batches and untrained:
        from jaxquant.data import batch_indices, make_preprocess

        spec = quant_spec(config)
        model = build_model(with_bits(config, target_bits), dataset.num_classes, spec)
        n = dataset.train_size
        batches = (
            dataset.train_examples(
                batch_indices(config.seed + 1, i, n, config.batch_size), config.seed + 1, i
            )[0]
            for i in range(recalibrate_batches)
        )
        variables = recalibrate_batch_norm(
            model, variables, batches, untrained, make_preprocess(dataset.mean, dataset.std)
        )
        log(
            f"re-estimated BatchNorm of untrained bit-widths {[target_bits[i] for i in untrained]} "
            f"from {recalibrate_batches} batches"
        )
    return variables, per_precision


def evaluate_every_bit_width(
    config,
    dataset,
    trainer,
    state,
    recalibrate_batches: int = 0,
    log: Callable[[str], None] = print,
) -> dict[int, float]:
    """Test accuracy of a vertical run at every bit-width 2..B (and FP when trained), including
    bit-widths it was not trained on (see `variables_for_bits`)."""
    from jaxquant.methods import build_model
    from jaxquant.training import TrainState, evaluate_dataset

    spec = quant_spec(config)
    bits = evaluation_bits(tuple(config.bits), spec.source_bits)
    variables, _ = variables_for_bits(config, dataset, state, bits, recalibrate_batches, log)
    model = build_model(with_bits(config, bits), dataset.num_classes, spec)
    every = dataclasses.replace(trainer, model=model, bits=bits, loss_weights=None)
    state = TrainState(
        step=state.step,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=None,
    )
    return evaluate_dataset(every, state, dataset, config.eval_batch_size)


# ----------------------------------------------------------------------------------------------
# Quantized layers and their k-bit weights.


def frozen_weight_spec(spec: QuantSpec) -> QuantSpec:
    """The spec of a model whose quantized kernels are given already quantized (no weight
    quantizer), activations quantized as in ``spec``."""
    return QuantSpec(q.FullPrecision(), spec.activation)


def vertical_weights_at(params, k: int, spec: QuantSpec):
    """Params whose quantized kernels hold their k-bit vertical weights, ``weight_step`` dropped:
    the parameters of the ``frozen_weight_spec`` model at k bits."""
    if not isinstance(spec.weight, q.Vertical):
        raise ConfigError(
            f"vertical_weights_at needs a vertical model, got weight quantizer {spec.weight!r}"
        )
    for path in quantized_layers(params):
        layer = get_path(params, path)
        kernel = spec.weight.quantize(layer["kernel"], {"step": layer["weight_step"]}, k)
        params = replace_path(params, path, kernel=kernel, weight_step=None)
    return params


def msb_sliced_weights(
    params, k: int, source_bits: int = 8, centred: bool = False, rounded: bool = False
):
    """Params of a dedicated LSQ model (one precision, signed mid-tread codes ``q_B``) whose
    kernels keep only the top k bits: ``q_k = q_B >> (B-k)`` (arithmetic shift, i.e. floor),
    ``w_k = q_k 2^(B-k) s``; ``centred`` adds half a k-bit step (the mid-rise reading of the
    same bits); ``rounded`` rounds instead of flooring, ``q_k = clip(round_half_up(q_B /
    2^(B-k)))`` (keep k bits and add the next one, MatQuant's slicing; Double Rounding's direct
    nesting). The motivation experiment of Vertical Layering: slicing a model trained for B
    bits collapses at low k."""
    if centred and rounded:
        raise ConfigError("msb_sliced_weights: choose centred or rounded, not both")
    for path in quantized_layers(params):
        layer = get_path(params, path)
        step = (
            jnp.reshape(layer["weight_step"][0], (-1,))
            if layer["weight_step"].ndim > 1
            else layer["weight_step"][0]
        )
        codes = q.lsq_codes(layer["kernel"], step, source_bits, signed=True)
        if rounded:
            sliced = nesting.round_clip_direct(codes, source_bits, k, "half_up").astype(jnp.float32)
        else:
            sliced = jnp.right_shift(codes, source_bits - k).astype(jnp.float32) + (
                0.5 if centred else 0.0
            )
        params = replace_path(
            params, path, kernel=sliced * (step * 2.0 ** (source_bits - k)), weight_step=None
        )
    return params


METHOD = register(
    Method(
        name=NAME,
        quant_spec=quant_spec,
        section=SECTION,
        legacy_keys={key: key for key in SECTION},
        evaluate=evaluate_every_bit_width,
    )
)

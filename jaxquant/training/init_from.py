"""Fine-tuning: start a run from a trained run's weights (``--config.init_from=RUN_DIR``).

The protocol of Bin Regularization and MBQuant: each low-bit model starts from the trained
full-precision model. `load_source` reads a run's latest checkpoint (or one checkpoint folder)
without building its model; `initialize_from` puts its weights and BatchNorm statistics into a
freshly initialised state, matched by parameter path:

- a leaf of the same shape is copied;
- a per-precision leaf (BatchNorm ``scale``/``bias``/``mean``/``var`` with a leading precision
  axis, `PER_PRECISION_LEAVES`) takes, for each bit-width of the new run, the source's row of the
  same bit-width, else its full-precision row, else its widest; a source leaf without that axis
  goes into every row (full precision into every precision's row);
- quantizer parameters (``weight_*``/``act_*``: LSQ steps, intervals) are never copied: they are
  initialised again from the loaded weights and one batch, by the quantizers' own data-dependent
  init (``model.apply`` with only those parameters missing), as a run from scratch initialises
  them from its random weights;
- BatchNorm statistics are then re-estimated over a few training batches at every precision
  (``bn_batches``; none keeps the source's).

A path of the new model that the source lacks, or a shape that no rule above maps, is a one-line
`CheckpointError` naming the first such path. The optimizer state starts fresh.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxquant.errors import CheckpointError
from jaxquant.layers import is_quantizer_param
from jaxquant.layers.conv import lowering
from jaxquant.training.recalibration import recalibrate_batch_norm

PER_PRECISION_LEAVES = ("scale", "bias", "mean", "var")
FP_BITS = 32


@dataclasses.dataclass(frozen=True)
class Source:
    """A trained run's weights: ``params`` and ``batch_stats`` (flat ``{path: array}``), the
    bit-widths it was trained at (None when unknown: its leaves are taken as shared), and where
    they came from."""

    params: dict
    batch_stats: dict
    bits: tuple[int, ...] | None
    description: str


def _checkpoint_folder(path: pathlib.Path) -> tuple[pathlib.Path, int | None]:
    """``(checkpoints folder, step or None for the latest)`` of a run directory, its
    ``checkpoints`` folder, or one step's folder inside it."""
    if (path / "checkpoints").is_dir():
        return path / "checkpoints", None
    if path.name.isdigit() and path.parent.is_dir():
        return path.parent, int(path.name)
    return path, None


def load_source(path: str | pathlib.Path) -> Source:
    """The weights of a run directory's latest checkpoint, or of a checkpoint step folder
    (``RUN_DIR/checkpoints/STEP``); its bit-widths from the run's ``config.json`` if present."""
    import orbax.checkpoint as ocp

    from jaxquant.checkpoint import _orbax_failures_held_back

    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"init_from: {path} does not exist; pass a `jaxquant train` workdir or one of its "
            "checkpoints/STEP folders"
        )
    folder, step = _checkpoint_folder(path)
    try:
        with _orbax_failures_held_back():
            manager = ocp.CheckpointManager(folder.resolve())
            step = manager.latest_step() if step is None else step
            if step is None:
                raise CheckpointError(f"init_from: {path} holds no checkpoint; train it first")
            restored = manager.restore(step, args=ocp.args.StandardRestore())
            manager.close()
    except CheckpointError:
        raise
    except Exception as e:  # orbax raises many types for a folder that is not a checkpoint
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(
            f"init_from: cannot read a checkpoint in {path} ({type(e).__name__}: {first_line})"
        ) from e
    if not isinstance(restored, dict) or "params" not in restored:
        raise CheckpointError(f"init_from: {path} is not a jaxquant training checkpoint")
    bits = None
    config_json = folder.parent / "config.json"
    if config_json.is_file():
        bits = tuple(int(b) for b in json.loads(config_json.read_text()).get("bits", ())) or None
    flat = lambda tree: traverse_util.flatten_dict(jax.device_get(tree or {}))  # noqa: E731
    return Source(
        params=flat(restored["params"]),
        batch_stats=flat(restored.get("batch_stats")),
        bits=bits,
        description=f"{folder.parent if step is None else folder} at step {step}",
    )


def _row(source_bits: tuple[int, ...], bits: int) -> int:
    """The source row a new run's bit-width ``bits`` takes: the same bit-width, else full
    precision, else the widest."""
    if bits in source_bits:
        return source_bits.index(bits)
    if FP_BITS in source_bits:
        return source_bits.index(FP_BITS)
    return int(np.argmax(source_bits))


def _map_leaf(path: tuple, target, source, source_bits, bits) -> np.ndarray:
    """``source`` fitted to ``target``'s shape by the rules of this module, or a
    `CheckpointError` naming ``path``."""
    name = "/".join(map(str, path))
    target_shape, source = tuple(np.shape(target)), np.asarray(source)
    per_precision = path[-1] in PER_PRECISION_LEAVES and len(target_shape) >= 2
    if per_precision and target_shape[0] == len(bits):
        rest = target_shape[1:]
        if source.shape == rest:  # a shared source leaf: into every row
            return np.broadcast_to(source, target_shape).astype(target.dtype)
        if source_bits is not None and source.shape == (len(source_bits), *rest):
            rows = [_row(source_bits, int(b)) for b in bits]
            return source[np.asarray(rows)].astype(target.dtype)
        if source.ndim == len(target_shape) and source.shape[1:] == rest and source.shape[0] == 1:
            return np.broadcast_to(source, target_shape).astype(target.dtype)
    if source.shape == target_shape:
        return source.astype(target.dtype)
    raise CheckpointError(
        f"init_from: {name} has shape {source.shape} in the source but {target_shape} in this "
        "model; fine-tune from a run of the same model (and width)"
    )


def _fit_collection(target: dict, source: dict, source_bits, bits, what: str) -> dict:
    flat_target = traverse_util.flatten_dict(target)
    out = {}
    for path, leaf in flat_target.items():
        if what == "params" and is_quantizer_param(str(path[-1])):
            continue  # re-initialised from the loaded weights (module docstring)
        if path not in source:
            raise CheckpointError(
                f"init_from: the source has no {what} {'/'.join(map(str, path))}; fine-tune "
                "from a run of the same model"
            )
        out[path] = jnp.asarray(_map_leaf(path, leaf, source[path], source_bits, bits))
    return traverse_util.unflatten_dict(out)


def initialize_from(trainer, state, source: Source, sample_images, key, bn_batches=()):
    """``state`` with ``source``'s weights and BatchNorm statistics, its quantizer parameters
    initialised from them and ``sample_images`` (at the widest bit-width, as `trainer.init`
    does), and a fresh optimizer state. With ``bn_batches`` (raw training images), every
    precision's BatchNorm statistics are then re-estimated over them: the source's describe its
    own activations, not the quantized ones (from an FP ResNet-20 on CIFAR-10 at 2 bits, 50
    batches of 128 took the first evaluation from 13% to 48%, `experiments/README.md`)."""
    bits = tuple(int(b) for b in trainer.bits)
    params = _fit_collection(state.params, source.params, source.bits, bits, "params")
    batch_stats = _fit_collection(
        state.batch_stats, source.batch_stats, source.bits, bits, "batch_stats"
    )
    x = trainer._inputs(jnp.asarray(sample_images), False, key, jnp.float32)

    def reinitialise(params, batch_stats, x, key):
        with lowering(trainer.lowering):
            _, variables = trainer.model.apply(
                {"params": params, "batch_stats": batch_stats},
                x,
                int(np.argmax(bits)),
                train=True,
                mutable=["params", "batch_stats"],
                rngs={"params": key, "dropout": key},
            )
        return variables["params"]

    params = jax.jit(reinitialise)(params, batch_stats, x, key)
    shapes = lambda tree: jax.tree_util.tree_map(jnp.shape, tree)  # noqa: E731
    if shapes(params) != shapes(state.params):
        raise CheckpointError("init_from: the re-initialised model differs from a fresh one")
    if len(bn_batches) and batch_stats:
        with lowering(trainer.lowering):
            batch_stats = recalibrate_batch_norm(
                trainer.model,
                {"params": params, "batch_stats": batch_stats},
                [jnp.asarray(b) for b in bn_batches],
                range(trainer.num_precisions),
                lambda images, train, key: trainer._inputs(images, False, None),
            )["batch_stats"]
    return state.replace(
        params=params, batch_stats=batch_stats, opt_state=trainer.optimizer.init(params)
    )

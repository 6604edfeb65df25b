"""A training run's directory read back: its ``config.json`` (with defaults for keys added
since) and its latest checkpoint, as the trainer that wrote it, and what its models take as input
(`run_input_contract`)."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxquant.checkpoint import Checkpointer
from jaxquant.errors import CheckpointError


def config_from_json(path: pathlib.Path) -> ml_collections.ConfigDict:
    """A run's ``config.json`` as a ConfigDict: the tuples JSON turned into lists are tuples
    again, and keys added to jaxquant after the run was written take their defaults."""
    if not path.is_file():
        raise CheckpointError(
            f"{path.parent} has no config.json; is it a `jaxquant train` workdir?"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); restore it or retrain") from e
    from jaxquant.config import upgrade_legacy_keys
    from jaxquant.configs.base import base_config

    # A run written before the method sections has flat keys: they win over the defaults.
    return upgrade_legacy_keys(
        ml_collections.ConfigDict(_with_defaults(raw, base_config())), warn=False
    )


def _with_defaults(raw: dict, defaults: ml_collections.ConfigDict) -> dict:
    out = dict(raw)
    for key, default in defaults.items():
        if isinstance(default, ml_collections.ConfigDict):
            out[key] = _with_defaults(raw.get(key, {}), default)
        elif key not in raw:
            out[key] = default
        elif isinstance(default, tuple) and isinstance(raw[key], list):
            out[key] = tuple(raw[key])
    return out


def load_run(workdir: str | pathlib.Path, dataset=None):
    """``(config, dataset, trainer, state, step)`` of the latest checkpoint of a training run."""
    from jaxquant.data import load_config_dataset
    from jaxquant.methods import build_trainer

    workdir = pathlib.Path(workdir)
    config = config_from_json(workdir / "config.json")
    dataset = dataset or load_config_dataset(config)
    trainer = build_trainer(config, dataset, max(dataset.train_size // config.batch_size, 1))
    # Shapes only: one example stands in for the batch (init traces the model, nothing is trained).
    template = trainer.init(jax.random.key(0), jnp.asarray(dataset.train_examples(np.arange(1))[0]))
    checkpointer = Checkpointer(workdir)
    try:
        state = checkpointer.restore(template)
        step = checkpointer.latest_step()
    finally:
        checkpointer.close()
    return config, dataset, trainer, state, step


def run_input_contract(workdir, dataset=None):
    """The `jaxquant.data.InputContract` of a training run's models: the images of the dataset
    its config names (``workdir`` may be the run's directory or its config), at the dataset's
    image shape (ImageNet: the run's ``image_size``), with its normalisation; ``dataset`` (a
    loaded `jaxquant.data` dataset) gives its own shape and statistics instead."""
    from jaxquant.data.contract import InputContract, dataset_contract

    if dataset is not None:
        return InputContract.for_dataset(dataset)
    config = (
        workdir
        if isinstance(workdir, ml_collections.ConfigDict)
        else config_from_json(pathlib.Path(workdir) / "config.json")
    )
    return dataset_contract(config.dataset, image_size=config.image_size)

"""Every config in experiments/configs loads, validates and builds its model."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxquant.config import load_config
from jaxquant.data import NORMALIZATION, NUM_CLASSES, ArrayDataset
from jaxquant.methods import build_trainer

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs").glob("*.py"))
SHAPES = {"digits": (8, 8, 1), "mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3),
          "cifar100": (32, 32, 3)}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_experiment_config_builds(path):
    config = load_config(path)
    shape = SHAPES[config.dataset]
    images = np.zeros((4,) + shape, np.uint8)
    labels = np.zeros(4, np.int32)
    mean, std = NORMALIZATION[config.dataset]
    dataset = ArrayDataset(config.dataset, images, labels, images, labels, NUM_CLASSES[config.dataset], mean, std)
    trainer = build_trainer(config, dataset, steps_per_epoch=10)
    variables = jax.eval_shape(lambda: trainer.init(jax.random.key(0), jnp.asarray(images)))
    assert jax.tree.leaves(variables.params)
    assert trainer.bits == tuple(config.bits)

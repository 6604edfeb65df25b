"""Every config in experiments/configs loads and validates: a training config builds its model,
a PTQ config (`jaxquant ptq`) passes `ptq.validate_config`."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxquant.config import load_config
from jaxquant.data import NORMALIZATION, NUM_CLASSES, ArrayDataset
from jaxquant.methods import build_trainer

CONFIGS = sorted(
    (pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs").glob("*.py")
)
PTQ_CONFIGS = [p for p in CONFIGS if "settings" in load_config(p)]
# `jaxquant compare` configs (a base run config and entries): tests/test_compare.py plans them.
COMPARE_CONFIGS = [p for p in CONFIGS if "entries" in load_config(p)]
TRAINING_CONFIGS = [p for p in CONFIGS if p not in PTQ_CONFIGS + COMPARE_CONFIGS]
SHAPES = {
    "digits": (8, 8, 1),
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
    "cifar100": (32, 32, 3),
    "imagenet2012": (224, 224, 3),
}


@pytest.mark.parametrize("path", PTQ_CONFIGS, ids=lambda p: p.stem)
def test_ptq_config_is_valid(path):
    from jaxquant import ptq

    config = load_config(path)
    assert ptq.validate_config(config) and set(config.methods) <= set(ptq.METHODS)


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: p.stem)
def test_experiment_config_builds(path):
    config = load_config(path)
    shape = SHAPES[config.dataset]
    images = np.zeros((4,) + shape, np.uint8)
    labels = np.zeros(4, np.int32)
    mean, std = NORMALIZATION[config.dataset]
    dataset = ArrayDataset(
        config.dataset, images, labels, images, labels, NUM_CLASSES[config.dataset], mean, std
    )
    trainer = build_trainer(config, dataset, steps_per_epoch=10)
    variables = jax.eval_shape(lambda: trainer.init(jax.random.key(0), jnp.asarray(images)))
    assert jax.tree.leaves(variables.params)
    assert trainer.bits == tuple(config.bits)


def test_cifar100_vertical_config_runs_on_mock_cifar100(tmp_path):
    """The CIFAR-100 config with tfds's mock data (no CIFAR-100 here): loads through the same
    `load_dataset` as a run, a 100-way classifier, and a traced (not compiled) training step."""
    import tensorflow_datasets as tfds

    from jaxquant.data import load_dataset

    config = load_config(CONFIGS[0].parent / "cifar100_vertical_resnet20.py")
    assert config.dataset == "cifar100" and config.method == "vertical"
    with tfds.testing.mock_data(num_examples=8):
        dataset = load_dataset(
            config.dataset, str(tmp_path / "data"), cache_dir=str(tmp_path / "cache")
        )
    assert dataset.image_shape == (32, 32, 3) and dataset.num_classes == 100
    assert dataset.train_images.dtype == np.uint8 and dataset.train_labels.max() < 100
    trainer = build_trainer(config, dataset, steps_per_epoch=2)
    images, labels = jnp.asarray(dataset.train_images[:4]), jnp.asarray(dataset.train_labels[:4])
    state = jax.eval_shape(lambda: trainer.init(jax.random.key(0), images))
    new_state, _ = jax.eval_shape(trainer.train_step, state, images, labels, jax.random.key(1))
    assert jax.tree.structure(new_state.params) == jax.tree.structure(state.params)
    logits = jax.eval_shape(trainer.logits, state.params, state.batch_stats, images)
    assert logits.shape == (len(config.bits), 4, 100)


def test_width_takes_fractions_for_mobilenet_and_whole_numbers_for_cifar_resnets():
    from jaxquant.config import apply_overrides
    from jaxquant.errors import ConfigError
    from jaxquant.layers import FULL_PRECISION
    from jaxquant.methods import build_model

    config = apply_overrides(
        load_config(CONFIGS[0].parent / "imagenet_binreg_mobilenetv2.py"), {"width": "0.75"}
    )
    assert config.width == 0.75
    x = jnp.zeros((1, 32, 32, 3))
    params = jax.eval_shape(build_model(config, 10, FULL_PRECISION).init, jax.random.key(0), x, 0)[
        "params"
    ]
    assert params["stem"]["kernel"].shape[-1] == 24  # make_divisible(32 * 0.75)
    config = apply_overrides(
        load_config(CONFIGS[0].parent / "cifar10_anyprecision_resnet20.py"), {}
    )
    assert config.width == 5
    params = jax.eval_shape(build_model(config, 10, FULL_PRECISION).init, jax.random.key(0), x, 0)[
        "params"
    ]
    assert (
        max(leaf.shape[-1] for leaf in jax.tree.leaves(params) if leaf.ndim == 4) == 320
    )  # 16 * 5 * 4
    with pytest.raises(ConfigError, match="whole width"):
        build_model(apply_overrides(config, {"width": "1.5"}), 10, FULL_PRECISION)

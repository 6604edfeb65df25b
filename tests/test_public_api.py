"""The package's public surface: every name in ``jaxquant.__all__`` resolves, ``dir`` lists them
(a notebook's tab completion), and ``import jaxquant`` alone does not import JAX."""

from __future__ import annotations

import subprocess
import sys

import pytest

import jaxquant


def test_every_public_name_resolves_and_dir_lists_it():
    listed = dir(jaxquant)
    for name in jaxquant.__all__:
        assert name in listed, name
        assert getattr(jaxquant, name) is not None, name
    assert jaxquant.MultiPrecisionTrainer is jaxquant.training.MultiPrecisionTrainer
    assert jaxquant.load_run is jaxquant.runs.load_run
    assert jaxquant.quantizers.interval_unit is not None  # submodules are attributes


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Trainer'"):
        jaxquant.Trainer  # noqa: B018


def test_import_jaxquant_does_not_import_jax():
    code = "import sys, jaxquant; print('jax' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_readme_python_example_runs():
    """The README's "Use it from Python" block, run as written on a batch of 8 random images."""
    import pathlib
    import re

    import jax.numpy as jnp
    import numpy as np

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"## Use it from Python\n\n```python\n(.*?)```", readme, re.S).group(1)
    images = jnp.asarray(np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype(np.float32))
    namespace = {"images": images, "labels": jnp.arange(8) % 10}
    exec(code, namespace)  # noqa: S102
    assert namespace["logits"].shape == (4, 8, 10)
    assert np.isfinite(float(namespace["metrics"]["loss"]))


def test_readme_your_own_model_example_runs():
    """The README's "Your own model" block, run as written on 8 random digits-sized images."""
    import pathlib
    import re

    import jax.numpy as jnp
    import numpy as np

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"## Your own model\n.*?```python\n(.*?)```", readme, re.S).group(1)
    images = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8, 8, 1)).astype(np.float32))
    namespace = {"images": images, "labels": jnp.arange(8) % 10}
    exec(code, namespace)  # noqa: S102
    assert namespace["metrics"]["loss_per_precision"].shape == (4,)
    assert np.isfinite(float(namespace["metrics"]["loss"]))
    params = namespace["state"].params
    assert "weight_step" not in params["Conv_0"] and params["Dense_1"]["weight_step"].shape == (1,)


def test_the_trainer_loads_without_ml_collections_or_tfds():
    """The accelerator benchmark's device image has neither: the trainer, the methods and the
    models import them only where a config or a dataset is read."""
    code = (
        "import sys, jaxquant.methods, jaxquant.training, jaxquant.models, jaxquant.layers; "
        "print('ml_collections' in sys.modules, 'tensorflow_datasets' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"

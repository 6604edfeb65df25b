import pytest

from jaxquant import config as config_lib
from jaxquant.errors import ConfigError


def test_default_config_loads_and_overrides_keep_types():
    config = config_lib.load_config(None)
    config_lib.apply_overrides(
        config,
        {
            "bits": "(2, 8)",
            "epochs": "3",
            "optimizer.learning_rate": "1",
            "dataset": "mnist",
            "widths": "16",
            "preactivation": "True",
        },
    )
    assert config.bits == (2, 8) and config.epochs == 3 and config.dataset == "mnist"
    assert config.optimizer.learning_rate == 1.0 and isinstance(
        config.optimizer.learning_rate, float
    )
    assert config.widths == (16,) and config.preactivation is True


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("nope", "1", "unknown config key 'nope'"),
        ("optimizer.nope", "1", "unknown config key 'optimizer.nope'"),
        ("epochs.x", "1", "unknown config key 'epochs.x'"),
        ("epochs", "2.5", "expects an int"),
        ("preactivation", "1", "is a bool"),
    ],
)
def test_bad_overrides_name_the_problem(key, value, match):
    with pytest.raises(ConfigError, match=match):
        config_lib.override(config_lib.load_config(None), key, value)


def test_config_files_can_import_their_siblings(tmp_path):
    (tmp_path / "base_cfg.py").write_text(
        "def get_config():\n    from jaxquant.configs.base import base_config\n"
        "    c = base_config(); c.epochs = 7; return c\n"
    )
    (tmp_path / "child.py").write_text(
        "from base_cfg import get_config as parent\n"
        "def get_config():\n    c = parent(); c.seed = 5; return c\n"
    )
    config = config_lib.load_config(tmp_path / "child.py")
    assert (config.epochs, config.seed) == (7, 5)
    (tmp_path / "broken.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="no get_config"):
        config_lib.load_config(tmp_path / "broken.py")


def test_dtype_resolves_and_bf16_refuses_bits_above_8():
    import jax.numpy as jnp

    from jaxquant.methods import resolve_dtype

    config = config_lib.load_config(None)
    assert resolve_dtype(config) == jnp.float32
    config_lib.override(config, "dtype", "bfloat16")
    assert resolve_dtype(config) == jnp.bfloat16  # bits (2, 4, 8, 32)
    config_lib.override(config, "bits", "(2, 12, 32)")
    with pytest.raises(ConfigError, match=r"only up to 8 bits, but bits has \[12\]"):
        resolve_dtype(config)
    config_lib.override(config, "dtype", "float16")
    with pytest.raises(ConfigError, match="unknown dtype 'float16'"):
        resolve_dtype(config)

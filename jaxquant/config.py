"""ml_collections configs: load a ``get_config()`` file and apply ``--config.key=value``
overrides."""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: the trainer and benchmarks load without ml_collections
    import ml_collections

from jaxquant.errors import ConfigError

DEFAULT_CONFIG = pathlib.Path(__file__).parent / "configs" / "default.py"


def load_config(path: str | pathlib.Path | None = None) -> ml_collections.ConfigDict:
    """The ``get_config()`` of a config file (default: the embedded ``digits`` Any-Precision
    run)."""
    path = pathlib.Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(
            f"config file {path} does not exist; pass --config path/to/config.py "
            "(see experiments/configs/)"
        )
    spec = importlib.util.spec_from_file_location(f"jaxquant_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent.resolve()))  # a config may import its sibling configs
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise ConfigError(f"config file {path} failed to load ({type(e).__name__}: {e})") from e
    finally:
        sys.path.remove(str(path.parent.resolve()))
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} has no get_config() function")
    return upgrade_legacy_keys(module.get_config())


def legacy_keys() -> dict[str, str]:
    """``{old flat key: 'method.key'}``: the keys older configs set at the top level that now
    live in a method's section (`jaxquant.methods.Method.legacy_keys`)."""
    from jaxquant.methods import METHODS

    return {old: f"{m.name}.{new}" for m in METHODS.values() for old, new in m.legacy_keys.items()}


def _deprecated(old: str, new: str) -> None:
    print(
        f"jaxquant: config.{old} is deprecated and will be removed in the next release; "
        f"use config.{new}",
        file=sys.stderr,
    )


def upgrade_legacy_keys(
    config: ml_collections.ConfigDict, warn: bool = True
) -> ml_collections.ConfigDict:
    """Move the flat keys of an older config into their method's section, in place (a one-line
    deprecation message each unless ``warn`` is False, as for a stored run); return the config."""
    for old, new in legacy_keys().items():
        if old not in config:
            continue
        name, key = new.split(".")
        value = config[old]
        del config[old]
        if name not in config:
            import ml_collections

            from jaxquant.methods import get_method

            config[name] = ml_collections.ConfigDict(dict(get_method(name).section))
        if isinstance(config[name][key], tuple) and isinstance(value, list):
            value = tuple(value)
        config[name][key] = value
        if warn:
            _deprecated(old, new)
    return config


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as --config.dataset=mnist


def _all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    import ml_collections

    keys = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            keys += _all_keys(value, f"{prefix}{key}.")
        else:
            keys.append(prefix + key)
    return keys


def override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Set ``config.<key>`` (dotted) from command-line text, keeping the field's type. A flat key
    of an older config is set in its method's section, with a deprecation message."""
    import ml_collections

    renamed = legacy_keys().get(key) if "." not in key and key not in config else None
    if renamed:
        _deprecated(key, renamed)
        key = renamed
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            node = None
            break
        node = node[part]
    if node is None or not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(_all_keys(config))}")
    old = node[leaf]
    value = _parse_value(text)
    if isinstance(old, tuple) and not isinstance(value, tuple):
        value = (value,)
    if isinstance(old, str) and not isinstance(value, str):
        value = text
    if isinstance(old, bool) and isinstance(value, int) and not isinstance(value, bool):
        raise ConfigError(f"config.{key} is a bool; pass True or False, not {text!r}")
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if old is not None and not isinstance(value, type(old)):
        raise ConfigError(
            f"config.{key} expects a {type(old).__name__} (now {old!r}); got {text!r}"
        )
    node[leaf] = value


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: dict[str, str]
) -> ml_collections.ConfigDict:
    """Apply ``{dotted key: text}`` overrides in order and return the config."""
    for key, text in overrides.items():
        override(config, key, text)
    return config


def to_dict(config: ml_collections.ConfigDict) -> dict:
    """A JSON-friendly copy (tuples become lists)."""
    return config.to_dict()


def with_bits(config, bits) -> ml_collections.ConfigDict:
    """A copy of ``config`` for another tuple of bit-widths."""
    import ml_collections

    config = ml_collections.ConfigDict(config.to_dict())
    config.bits = tuple(bits)
    return config


POSITIVE_KEYS = ("epochs", "batch_size", "eval_batch_size", "log_every_steps",
                 "checkpoint_every_steps", "keep_checkpoints")  # fmt: skip


def check_run_config(config) -> None:
    """A `ConfigError` naming the first of `POSITIVE_KEYS` that is not a positive integer."""
    for key in POSITIVE_KEYS:
        value = config.get(key, 1) if hasattr(config, "get") else getattr(config, key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"config.{key} is {value!r}; use a positive integer")

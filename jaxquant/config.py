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
            f"config.{key} expects {_a(type(old).__name__)} (now {old!r}); got {text!r}"
        )
    node[leaf] = value


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


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


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_POSITIVE_INT = (lambda v: _integer(v) and v >= 1, "a positive integer")
_NONNEGATIVE_INT = (lambda v: _integer(v) and v >= 0, "an integer >= 0")
_POSITIVE = (lambda v: _number(v) and v > 0, "a number > 0")
_NONNEGATIVE = (lambda v: _number(v) and v >= 0, "a number >= 0")

# (dotted key, test, what it must be): every numeric run setting (method sections check theirs).
RANGES = (
    ("epochs", *_POSITIVE_INT),
    ("batch_size", *_POSITIVE_INT),
    ("eval_batch_size", *_POSITIVE_INT),
    ("log_every_steps", *_POSITIVE_INT),
    ("checkpoint_every_steps", *_POSITIVE_INT),
    ("keep_checkpoints", *_POSITIVE_INT),
    ("eval_every_epochs", *_NONNEGATIVE_INT[:1], "0 (never) or a positive integer"),
    ("seed", *_NONNEGATIVE_INT),
    ("init_from_bn_batches", *_NONNEGATIVE_INT),
    ("crop_padding", *_NONNEGATIVE_INT),
    ("image_size", *_POSITIVE_INT),
    ("data_workers", *_POSITIVE_INT),
    ("width", *_POSITIVE),
    ("widths", lambda v: bool(v) and all(_integer(w) and w >= 1 for w in v),
     "positive integers, e.g. (32, 64, 64)"),
    ("first_last_bits", *_NONNEGATIVE_INT[:1], "0 (full precision) or a bit-width"),
    ("loss_weights", lambda v: all(_number(w) and w >= 0 for w in v), "numbers >= 0"),
    ("optimizer.learning_rate", *_POSITIVE),
    ("optimizer.quantizer_learning_rate", *_POSITIVE),
    ("optimizer.momentum", lambda v: _number(v) and 0 <= v < 1, "in [0, 1)"),
    ("optimizer.weight_decay", *_NONNEGATIVE),
    ("optimizer.warmup_epochs", *_NONNEGATIVE),
    ("optimizer.step_factor", *_POSITIVE),
    ("optimizer.step_epochs", lambda v: all(_number(e) and e >= 0 for e in v), "epochs >= 0"),
    ("optimizer.weight_decay_by_bits",
     lambda v: all(len(p) == 2 and _integer(p[0]) and _number(p[1]) and p[1] >= 0 for p in v),
     "pairs (bits, decay >= 0), e.g. ((2, 2.5e-5), (4, 1e-4))"),
)  # fmt: skip


def _choices() -> dict[str, tuple[str, ...]]:
    """``{dotted key: allowed values}`` of the run settings that name a choice."""
    from jaxquant.data.preprocess import AUGMENTATIONS
    from jaxquant.layers.conv import CONV_BATCHINGS, WEIGHT_GRADIENTS
    from jaxquant.training.losses import DISTILLATION_MODES
    from jaxquant.training.step import PRECISION_MODES

    return {
        "augment": AUGMENTATIONS,
        "dtype": ("float32", "bfloat16"),
        "conv_batching": CONV_BATCHINGS,
        "conv_weight_gradient": WEIGHT_GRADIENTS,
        "distillation": ("auto", *DISTILLATION_MODES),
        "precision_mode": ("auto", *PRECISION_MODES),
        "optimizer.optimizer": ("sgd", "adam"),
        "optimizer.quantizer_optimizer": ("adam", "sgd"),
        "optimizer.schedule": ("cosine", "constant", "step"),
        "optimizer.quantizer_schedule": ("cosine", "constant", "step"),
    }


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        if part not in node:
            return None
        node = node[part]
    return node


def check_run_config(config) -> None:
    """A one-line `ConfigError` for the first run setting out of its range (`RANGES`) or not among
    its choices; checked before anything is loaded or written."""
    for key, test, requirement in RANGES:
        value = _get(config, key)
        if value is not None and not test(value):
            raise ConfigError(f"config.{key} is {value!r}; use {requirement}")
    for key, allowed in _choices().items():
        value = _get(config, key)
        if value is not None and value not in allowed:
            raise ConfigError(f"config.{key} is {value!r}; choose one of {', '.join(allowed)}")


def check_init_from(config) -> None:
    """A one-line `ConfigError` when ``config.init_from`` names a path that does not exist."""
    init_from = _get(config, "init_from")
    if init_from and not pathlib.Path(init_from).expanduser().exists():
        raise ConfigError(
            f"config.init_from: {init_from} does not exist; pass a `jaxquant train` workdir or "
            "one of its checkpoints/STEP folders"
        )

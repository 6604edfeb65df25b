"""`Method`: a training method as one typed value, and the registry of methods by name.

A method is its quantizers (``quant_spec``), its own config section with defaults, and the
hooks the shared trainer calls; every hook has a default, so a method that only picks its
quantizers is three lines. Each method defines its `Method` in its own file and registers it;
`jaxquant.methods.build_trainer` and the CLI read only these fields, never a method's name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from jaxquant.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Method:
    """A training method.

    name: its value of ``config.method``.
    quant_spec: ``config -> QuantSpec``, the weight and activation quantizers of its layers.
    section: its config keys and defaults, at ``config.<name>.<key>`` (``{}``: none).
    legacy_keys: flat keys of older configs, ``{old key: key in section}`` (deprecated).
    distillation: the default of ``config.distillation='auto'``.
    precision_mode: the default of ``precision_mode='auto'`` (None: per backend).
    validate_bits: ``(config, spec) -> bits``; None: both quantizers check ``config.bits``.
    build_model: ``(config, num_classes, spec) -> model``; None: the model zoo's
      ``config.model`` with ``spec``.
    init_from_batches: ``config -> trainer hook or None`` (data-dependent init, e.g. MBQuant's
      intervals from one batch per bit-width).
    bin_regularization: BR's default lambda for this method (``binreg_lambda=-1``); None: BR
      does not apply (its weights are not bins of one grid).
    evaluate: ``(config, dataset, trainer, state, recalibrate_batches) -> {bits: accuracy}``
      for ``jaxquant train/eval``; None: the trained bit-widths on the test set.
    """

    name: str
    quant_spec: Callable[[Any], Any]
    section: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    legacy_keys: Mapping[str, str] = dataclasses.field(default_factory=dict)
    distillation: str = "none"
    precision_mode: str | None = None
    validate_bits: Callable | None = None
    build_model: Callable | None = None
    init_from_batches: Callable | None = None
    bin_regularization: float | None = 0.0
    evaluate: Callable | None = None

    def __post_init__(self):
        if not self.name.isidentifier():
            raise ConfigError(
                "a method name must be an identifier (it names a config section), "
                f"got {self.name!r}"
            )
        unknown = set(self.legacy_keys.values()) - set(self.section)
        if unknown:
            raise ConfigError(
                f"method {self.name}: legacy keys map to {sorted(unknown)}, not in its section"
            )


METHODS: dict[str, Method] = {}
"""Registered methods by name (`register`)."""


def register(method: Method) -> Method:
    """Add ``method`` to the registry (replacing one of the same name); return it."""
    if not isinstance(method, Method):
        raise ConfigError(f"register takes a Method, got {type(method).__name__}")
    METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove the method ``name`` from the registry; no error if it is absent."""
    METHODS.pop(name, None)


def get_method(name: str) -> Method:
    """The registered method ``name`` (`ConfigError` listing the known ones if none)."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]


def section(config, method: Method):
    """``config.<method.name>``, the method's section (its defaults where the config lacks it)."""
    if method.name in config:
        return config[method.name]
    import ml_collections

    return ml_collections.ConfigDict(dict(method.section))

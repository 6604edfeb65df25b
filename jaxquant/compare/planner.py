"""The plan of a compare: every entry of a compare config resolved into its runs' configs
(`Entry`, `Run`), all checked before anything runs; nothing here trains or writes."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import ml_collections

from jaxquant.errors import ConfigError, JaxquantError

KINDS = ("train", "ptq")
ENTRY_KEYS = {
    "train": {"name", "label", "kind", "overrides", "per_bits"},
    "ptq": {"name", "label", "kind", "overrides", "source", "method", "act_bits"},
}
COMPARE_KEYS = {"base", "bits", "entries", "ptq", "title"}  # title: the plots' subject
FP_BITS = 32


@dataclasses.dataclass
class Run:
    """One ``jaxquant train`` or ``jaxquant ptq`` call of an entry."""

    name: str  # the folder name under the compare's workdir
    workdir: pathlib.Path
    config: ml_collections.ConfigDict  # train: the run config; ptq: the PTQ config
    bits: int | None = None  # a per-bit-width run's bit-width


@dataclasses.dataclass
class Entry:
    """One row of the table: its runs (one, or one per bit-width) and, for PTQ, its source."""

    name: str
    label: str
    kind: str
    runs: list[Run]
    per_bits: bool = False
    source: str = ""
    method: str = ""
    act_bits: int = 0


def load(path: str | pathlib.Path, overrides: dict[str, str] | None = None):
    """The compare config of ``path`` with ``--config.KEY=VALUE`` overrides applied."""
    from jaxquant import config as config_lib

    config = config_lib.load_config(path)
    unknown = sorted(set(config.keys()) - COMPARE_KEYS)
    if unknown or "base" not in config or "entries" not in config:
        raise ConfigError(
            f"{path} is not a compare config: it needs base, bits and entries"
            + (f" (unknown keys {unknown})" if unknown else "")
            + "; see experiments/configs/compare_digits.py"
        )
    return config_lib.apply_overrides(config, overrides or {})


def config_json(config) -> Any:
    return json.loads(json.dumps(config.to_dict()))


def _copy(config) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(config.to_dict())


def _apply(config, overrides, where: str) -> None:
    """Set ``{dotted key: Python value}`` through the CLI's typed override (same checks)."""
    from jaxquant import config as config_lib

    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: overrides must be a dict {{key: value}}, got {overrides!r}")
    for key, value in overrides.items():
        try:
            config_lib.override(config, str(key), repr(value))
        except JaxquantError as e:
            raise ConfigError(f"{where}: {e}") from None


def _check_run(config, where: str) -> None:
    """The checks ``jaxquant train`` makes before it loads anything (settings, method, bits)."""
    from jaxquant import config as config_lib
    from jaxquant.methods import get_method

    try:
        config_lib.check_run_config(config)
        method = get_method(config.method)
        spec = method.quant_spec(config)
        if method.validate_bits:
            method.validate_bits(config, spec)
        else:
            spec.validate(config.bits)
    except JaxquantError as e:
        raise ConfigError(f"{where}: {e}") from None


def requested_bits(config) -> tuple[int, ...]:
    """The compare's ``bits``: integers, each a bit-width 2..16 or 32 (FP)."""
    bits = config.get("bits", ())
    bits = bits if isinstance(bits, (tuple, list)) else (bits,)
    if not bits or not all(isinstance(b, int) and (2 <= b <= 16 or b == FP_BITS) for b in bits):
        raise ConfigError(
            f"compare config: bits must be bit-widths 2..16 or 32, e.g. (2, 4, 8); got {bits!r}"
        )
    return tuple(sorted(set(int(b) for b in bits)))


def plan(config, workdir: str | pathlib.Path) -> list[Entry]:
    """Every entry as its runs, each config built and checked (one-line `ConfigError`s naming the
    entry); nothing is written."""
    from jaxquant.configs.ptq import ptq_config
    from jaxquant.ptq.config import METHODS as PTQ_METHODS
    from jaxquant.ptq.config import validate_config

    workdir = pathlib.Path(workdir)
    bits = requested_bits(config)
    entries_raw = config.entries
    if not isinstance(entries_raw, (tuple, list)) or not entries_raw:
        raise ConfigError("compare config: entries must be a non-empty tuple of dicts")
    ptq_base = ptq_config()
    if config.get("ptq") is not None:
        _apply(ptq_base, _flat(config.ptq.to_dict()), "compare config ptq")
    entries: list[Entry] = []
    names: set[str] = set()
    for i, raw in enumerate(entries_raw):
        if not isinstance(raw, dict):
            raise ConfigError(f"compare entry {i}: must be a dict, got {type(raw).__name__}")
        name = raw.get("name")
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"compare entry {i}: name must be an identifier, got {name!r}")
        where = f"compare entry {name!r}"
        if name in names:
            raise ConfigError(f"{where}: two entries have this name")
        names.add(name)
        kind = raw.get("kind")
        if kind not in KINDS:
            raise ConfigError(f"{where}: kind must be one of {KINDS}, got {kind!r}")
        unknown = sorted(set(raw) - ENTRY_KEYS[kind])
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {unknown} for kind {kind!r}; "
                f"known: {sorted(ENTRY_KEYS[kind])}"
            )
        label = str(raw.get("label") or name)
        overrides = raw.get("overrides", {})
        if kind == "train":
            per_bits = raw.get("per_bits", False)
            if not isinstance(per_bits, bool):
                raise ConfigError(f"{where}: per_bits must be True or False, got {per_bits!r}")
            base = _copy(config.base)
            _apply(base, overrides, where)
            runs = []
            if per_bits:
                for b in bits:
                    run_config = _copy(base)
                    run_config.bits = (b,)
                    _check_run(run_config, f"{where} at {b} bits")
                    runs.append(Run(f"{name}_{b}", workdir / f"{name}_{b}", run_config, b))
            else:
                if "bits" not in overrides:
                    base.bits = bits
                _check_run(base, where)
                runs.append(Run(name, workdir / name, base))
            entries.append(Entry(name, label, kind, runs, per_bits=per_bits))
            continue
        source = raw.get("source")
        sources = {e.name: e for e in entries if e.kind == "train"}
        if source not in sources:
            raise ConfigError(
                f"{where}: source must name a train entry listed before it "
                f"({sorted(sources) or 'none yet'}), got {source!r}"
            )
        src = sources[source]
        if src.per_bits or FP_BITS not in tuple(src.runs[0].config.bits):
            raise ConfigError(
                f"{where}: source {source!r} must be one run with 32 among its bits "
                "(the FP model PTQ quantizes), e.g. overrides={'bits': (32,)}"
            )
        method = raw.get("method")
        if method not in PTQ_METHODS:
            raise ConfigError(f"{where}: method must be one of {PTQ_METHODS}, got {method!r}")
        act_bits = raw.get("act_bits", 0)
        if not isinstance(act_bits, int) or isinstance(act_bits, bool):
            raise ConfigError(f"{where}: act_bits must be an integer (0: the weight bits)")
        ptq = _copy(ptq_base)
        _apply(ptq, overrides, where)
        weight_bits = [b for b in bits if b < FP_BITS]
        if not weight_bits:
            raise ConfigError(f"{where}: bits has no integer bit-width to quantize to")
        ptq.settings = tuple(f"W{b}A{act_bits or b}" for b in weight_bits)
        ptq.methods = (method,)
        try:
            validate_config(ptq)
        except JaxquantError as e:
            raise ConfigError(f"{where}: {e}") from None
        run = Run(name, workdir / name, ptq)
        entries.append(
            Entry(name, label, kind, [run], source=source, method=method, act_bits=act_bits)
        )
    return entries


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out

"""The entries of a full `jaxquant compare`: every method of the library on one base run config.

A compare config sets its base, bits and PTQ budget and takes its entries from here, adding only
what its own budget changes per method::

    c.entries = every_method(mbquant={"widths": (4, 8, 8)})
"""

from jaxquant.errors import ConfigError

# name: (row label, per_bits, the overrides that make the base run that method)
TRAIN_ENTRIES = {
    "lsq": ("LSQ (one model per bit-width)", True, {"method": "lsq"}),
    "lsq_br": ("LSQ + BR (one model per bit-width)", True, {"method": "binreg"}),
    "anyprecision": ("Any-Precision (one model)", False, {"method": "anyprecision"}),
    "vertical": ("Vertical Layering (one file)", False, {"method": "vertical"}),
    "mbquant": ("MBQuant (one model)", False, {"method": "mbquant"}),
    "fp": ("FP", False, {"method": "lsq", "bits": (32,)}),
}
# name: (row label, PTQ method); each quantizes the "fp" entry's model
PTQ_ENTRIES = {
    "bitsplit": ("BitSplit PTQ of FP", "bitsplit"),
    "rtn": ("round-to-nearest PTQ of FP", "rtn"),
}


def every_method(**overrides: dict) -> tuple[dict, ...]:
    """The eight entries (dedicated LSQ and LSQ + BR per bit-width, Any-Precision, Vertical
    Layering, MBQuant, FP, BitSplit and round-to-nearest PTQ of FP), each train entry's overrides
    extended by ``overrides[name]`` (``{dotted run-config key: value}``)."""
    unknown = sorted(set(overrides) - set(TRAIN_ENTRIES))
    if unknown:
        raise ConfigError(
            f"every_method: unknown train entries {unknown}; known {list(TRAIN_ENTRIES)}"
        )
    entries = [
        dict(
            name=name,
            label=label,
            kind="train",
            per_bits=per_bits,
            overrides={**method, **overrides.get(name, {})},
        )
        for name, (label, per_bits, method) in TRAIN_ENTRIES.items()
    ]
    entries += [
        dict(name=name, label=label, kind="ptq", source="fp", method=method)
        for name, (label, method) in PTQ_ENTRIES.items()
    ]
    return tuple(entries)

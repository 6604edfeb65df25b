"""Saving and loading a quantized model."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np

from jaxquant.errors import CheckpointError
from jaxquant.ptq.capture import ActivationQuant
from jaxquant.ptq.fit import QuantizedModel


def save_quantized(
    model: QuantizedModel, path: str | pathlib.Path, extra: dict | None = None
) -> pathlib.Path:
    """Write one msgpack file: the variables, the input quantizers and the integer weight codes
    with their per-channel scales (what a deployment needs), plus metadata."""
    from flax import serialization

    payload = {
        "variables": jax.tree_util.tree_map(np.asarray, model.variables),
        "activations": {
            name: {"step": a.step, "bits": a.bits, "signed": a.signed}
            for name, a in model.activations.items()
        },
        "weights": model.weights,
        "meta": json.dumps(
            {
                "method": model.method,
                "weight_bits": model.weight_bits,
                "act_bits": model.act_bits,
                "seconds": model.seconds,
                **(extra or {}),
            }
        ),
    }
    path = pathlib.Path(path)
    path.write_bytes(serialization.msgpack_serialize(payload))
    return path


def load_quantized(path: str | pathlib.Path) -> tuple[dict, dict[str, ActivationQuant], dict]:
    """``(variables, input quantizers, metadata)`` of a `save_quantized` file (a `jaxquant ptq`
    file's metadata holds its ``input_contract``: `jaxquant.data.InputContract.from_json`)."""
    from flax import serialization

    path = pathlib.Path(path)
    try:
        payload = serialization.msgpack_restore(path.read_bytes())
        activations = {
            name: ActivationQuant(float(a["step"]), int(a["bits"]), bool(a["signed"]))
            for name, a in payload["activations"].items()
        }
        return payload["variables"], activations, json.loads(payload["meta"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{path} is not a readable jaxquant PTQ file ({type(e).__name__}); "
            "rerun `jaxquant ptq` to write it"
        ) from e

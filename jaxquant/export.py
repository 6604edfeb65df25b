"""The vertical-layered artefact: one file from which every bit-width is read as a prefix.

``jaxquant export --workdir W --out model.vl`` writes, for a trained Vertical Layering run::

    b"JQVL" | u32 version | u64 header length | header (JSON) | u32 CRC32 of the header
    | arrays: FP layers, per-precision BatchNorm and activation steps, weight source steps
    | plane 0 (MSB) of every quantized layer | plane 1 of every layer | ... | plane B-1

Planes are packed 8 weights per byte. The basic layer is the first ``basic_bits`` planes, each
later plane one enhance layer; the k-bit model needs the header, the arrays and the first k
planes, which is a prefix of the file, so `load_vertical` reads only that (``bytes_read`` grows
with k) and checks the CRC32 of everything it reads.

The header records the model's input contract (``input_contract``, `jaxquant.data.InputContract`:
the dataset's native images and their scaling and normalisation); the loaded model applies it to
the images it is called on and refuses others with a one-line `InputError`. An artefact written
before that key existed gets the contract of the dataset its header names.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import struct
import zlib
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxquant import nesting
from jaxquant import quantizers as q
from jaxquant.config import with_bits
from jaxquant.data.contract import InputContract, dataset_contract
from jaxquant.errors import BitWidthError, CheckpointError, ConfigError
from jaxquant.layers import QuantSpec
from jaxquant.runs import load_run

MAGIC = b"JQVL"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<4sIQ")  # magic, version, header length


# ----------------------------------------------------------------------------------------------
# Export.


def _crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def _flatten(tree, prefix=()):
    """``[(path tuple, array)]`` of a nested dict of arrays."""
    out = []
    for name in sorted(tree):
        child = tree[name]
        if hasattr(child, "items"):
            out += _flatten(child, prefix + (name,))
        else:
            out.append((prefix + (name,), np.asarray(child)))
    return out


def _unflatten(items):
    tree: dict = {}
    for path, value in items:
        node = tree
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return tree


def export_vertical(
    workdir: str | pathlib.Path,
    out: str | pathlib.Path,
    basic_bits: int = 2,
    recalibrate_batches: int = 0,
    dataset=None,
    log: Callable[[str], None] = print,
) -> dict:
    """Write the artefact of the vertical run in ``workdir`` to ``out``; returns its summary
    (``bits``, ``file_bytes`` and ``bytes_for_bits``: the bytes `load_vertical` reads per k).

    ``recalibrate_batches``: re-estimate the BatchNorm statistics of bit-widths that were not
    trained from that many training batches (`training.recalibration.recalibrate_batch_norm`).
    """
    from jaxquant.methods import get_method, vertical

    config, dataset, trainer, state, step = load_run(workdir, dataset)
    if get_method(config.method) is not vertical.METHOD:
        raise ConfigError(
            f"{workdir} trained method {config.method!r}; only a vertical run has bit planes"
        )
    if config.vertical.cascade != "floor":
        raise ConfigError(
            f"cascade {config.vertical.cascade!r} has no clean bit planes (its residual is in "
            "{-1, 0, 1}); export needs cascade='floor'"
        )
    if config.first_last_bits:
        raise ConfigError("export needs full-precision first and last layers (first_last_bits=0)")
    spec = trainer.model.spec
    source_bits = spec.source_bits
    if not 1 <= basic_bits <= source_bits:
        raise BitWidthError(f"basic_bits must be in 1..{source_bits}, got {basic_bits}")
    bits = tuple(range(basic_bits, source_bits + 1))
    variables, per_precision = vertical.variables_for_bits(
        config, dataset, state, bits, recalibrate_batches, log
    )

    layers = vertical.quantized_layers(variables["params"])
    layer_set = set(layers)
    arrays, blobs, offset = [], [], 0

    def add(data: bytes) -> dict:
        nonlocal offset
        entry = {"offset": offset, "nbytes": len(data), "crc32": _crc(data)}
        blobs.append(data)
        offset += len(data)
        return entry

    for collection in ("params", "batch_stats"):
        for path, value in _flatten(variables[collection]):
            if path[:-1] in layer_set and collection == "params" and path[-1] == "kernel":
                continue  # stored as planes
            value = np.asarray(value, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
            arrays.append(
                {
                    "path": [collection, *path],
                    "shape": list(value.shape),
                    "dtype": str(value.dtype),
                    "per_precision": jax.tree_util.keystr(
                        tuple(jax.tree_util.DictKey(k) for k in (collection, *path))
                    )
                    in per_precision,
                    **add(value.tobytes()),
                }
            )
    arrays_end = offset
    planes = []
    for path in layers:
        layer = vertical.get_path(variables["params"], path)
        codes = q.vertical_codes(
            layer["kernel"], layer["weight_step"], source_bits, source_bits=source_bits
        )
        planes.append(nesting.pack_planes(np.asarray(nesting.bit_planes(codes, source_bits))))
    layer_entries = [
        {
            "path": list(path),
            "shape": list(np.shape(vertical.get_path(variables["params"], path)["kernel"])),
            "planes": [],
        }
        for path in layers
    ]
    plane_ends = []
    for i in range(source_bits):  # plane-major: the k-bit model is a prefix
        for entry, packed in zip(layer_entries, planes):
            entry["planes"].append(add(packed[i].tobytes()))
        plane_ends.append(offset)

    header = {
        "format_version": FORMAT_VERSION,
        "training_step": int(step),
        "config": config.to_dict(),
        "dataset": dataset.name,
        "num_classes": int(dataset.num_classes),
        "image_shape": list(dataset.image_shape),
        "mean": list(map(float, dataset.mean)),
        "std": list(map(float, dataset.std)),
        "input_contract": InputContract.for_dataset(dataset).to_json(),
        "source_bits": source_bits,
        "basic_bits": basic_bits,
        "bits": list(bits),
        "trained_bits": list(config.bits),
        "arrays": arrays,
        "layers": layer_entries,
        "arrays_end": arrays_end,
        "plane_ends": plane_ends,
    }
    header_bytes = json.dumps(header).encode()
    prefix = (
        _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes))
        + header_bytes
        + struct.pack("<I", _crc(header_bytes))
    )
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(prefix)
        for blob in blobs:
            f.write(blob)
    tmp.replace(out)  # an interrupted export never leaves a half-written artefact under `out`
    bytes_for = {k: len(prefix) + plane_ends[k - 1] for k in bits}
    return {
        "path": str(out),
        "bits": bits,
        "file_bytes": out.stat().st_size,
        "bytes_for_bits": bytes_for,
        "layers": len(layers),
    }


# ----------------------------------------------------------------------------------------------
# Load.


def header_contract(header: dict) -> InputContract:
    """The input contract an artefact's header records; for an artefact written before it did,
    the contract of the dataset the header names (its image shape, mean and std)."""
    if "input_contract" in header:
        return InputContract.from_json(header["input_contract"])
    return dataset_contract(
        header.get("dataset"), header.get("image_shape"), header.get("mean"), header.get("std")
    )


@dataclasses.dataclass(repr=False)
class VerticalModel:
    """The k-bit model read from an artefact. ``model(images)`` returns the logits ``(N,
    classes)`` of the images its ``input_contract`` takes (`jaxquant.data.InputContract`; print it
    to read it): the dataset's native images — raw digits values 0..16 (``load_digits().images``,
    integer or float), ``uint8`` 0..255 for MNIST, Fashion-MNIST, CIFAR and ImageNet — or floats
    already in [0, 1], as a batch ``(N, H, W, C)``, a batch ``(N, H, W)`` of one-channel images or
    one image; the model scales and normalises them. Anything else raises a one-line
    `jaxquant.InputError` naming what it got and what it takes."""

    model: object
    variables: dict
    bits: int
    bytes_read: int
    file_bytes: int
    header: dict
    preprocess: Callable
    input_contract: InputContract | None = None

    def __post_init__(self):
        if self.input_contract is None:
            self.input_contract = header_contract(self.header)
        self._apply = jax.jit(
            lambda variables, images: self.model.apply(
                variables, self.preprocess(images, False, None), 0, train=False
            )
        )

    def __call__(self, images) -> jax.Array:
        images = self.input_contract.prepare(images, normalize=False)  # normalised in _apply
        return self._apply(self.variables, jnp.asarray(images))

    def __repr__(self) -> str:
        return (
            f"VerticalModel({self.header.get('dataset', '?')}, bits={self.bits}, "
            f"execution={self.model.spec.execution!r}, bytes_read={self.bytes_read:,} of "
            f"{self.file_bytes:,}; takes {self.input_contract})"
        )


def _read_header(f, path) -> tuple[dict, int]:
    head = f.read(_PREFIX.size)
    if len(head) < _PREFIX.size:
        raise CheckpointError(
            f"{path} is truncated ({len(head)} bytes): not a complete jaxquant artefact; "
            "export it again"
        )
    magic, version, length = _PREFIX.unpack(head)
    if magic != MAGIC:
        raise CheckpointError(
            f"{path} is not a jaxquant vertical-layered file (bad magic); "
            "export one with `jaxquant export`"
        )
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {version}; this jaxquant reads {FORMAT_VERSION}; "
            "re-export it"
        )
    # Check the length against the file before reading: a corrupted length field would otherwise
    # ask read() for up to 2^64 bytes (MemoryError / OverflowError instead of a CheckpointError).
    if length + 4 > os.fstat(f.fileno()).st_size - _PREFIX.size:
        raise CheckpointError(
            f"{path} is truncated inside its header (or its header length is corrupted); "
            "export it again"
        )
    body = f.read(length + 4)  # the whole of it: the check above measured the file
    header_bytes, (crc,) = body[:length], struct.unpack("<I", body[length:])
    if _crc(header_bytes) != crc:
        raise CheckpointError(f"{path} has a corrupted header (CRC mismatch); export it again")
    return json.loads(header_bytes), _PREFIX.size + length + 4


def load_vertical(
    path: str | pathlib.Path, bits: int, execution: str = "fake_quant"
) -> VerticalModel:
    """The ``bits``-bit model of a vertical-layered artefact, reading only the file's prefix that
    holds it (header, arrays, the first ``bits`` planes of every layer).

    ``execution``: ``fake_quant`` (float convs; equals the trained model at ``bits`` exactly),
    ``integer`` (int32 convs of the codes, scales after) or ``bit_serial`` (one int32 conv per
    weight plane). Raises `CheckpointError` for a truncated or corrupted file, `BitWidthError`
    for a bit-width the file does not hold.

    The model takes what the header's input contract says (``model.input_contract``,
    `jaxquant.data.InputContract`): e.g. for digits, raw ``load_digits().images`` (values 0..16,
    shape ``(N, 8, 8)``) or floats in [0, 1]; a wrong shape, dtype or value range raises a
    one-line `jaxquant.InputError`.
    """
    from jaxquant.data import make_preprocess
    from jaxquant.methods import build_model

    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no artefact at {path}; write one with `jaxquant export --workdir W --out {path}`"
        )
    file_bytes = path.stat().st_size
    with open(path, "rb") as f:
        header, data_start = _read_header(f, path)
        if bits not in header["bits"]:
            raise BitWidthError(
                f"{path} holds bit-widths {header['bits'][0]}..{header['bits'][-1]}; got {bits!r}"
            )
        needed = header["plane_ends"][bits - 1]
        data = f.read(needed)
    if len(data) < needed:
        raise CheckpointError(
            f"{path} is truncated: the {bits}-bit model needs {data_start + needed} bytes, "
            f"the file has {file_bytes}; export it again"
        )

    def blob(entry) -> bytes:
        chunk = data[entry["offset"] : entry["offset"] + entry["nbytes"]]
        if _crc(chunk) != entry["crc32"]:
            raise CheckpointError(
                f"{path} is corrupted (CRC mismatch at byte {data_start + entry['offset']}); "
                "export it again"
            )
        return chunk

    source_bits = header["source_bits"]
    row = header["bits"].index(bits)
    items = []
    for entry in header["arrays"]:
        value = np.frombuffer(blob(entry), dtype=entry["dtype"]).reshape(entry["shape"])
        if entry["per_precision"]:
            value = value[row : row + 1]
        items.append((tuple(entry["path"]), value))
    variables = _unflatten(items)
    for layer in header["layers"]:
        packed = np.stack([np.frombuffer(blob(p), np.uint8) for p in layer["planes"][:bits]])
        codes = nesting.from_bit_planes(nesting.unpack_planes(packed, tuple(layer["shape"])))
        node = variables["params"]
        for name in layer["path"]:
            node = node[name]
        # s_k = 2^(B-k) s_B: exact (a power of two), so the weights equal the trained model's.
        node["code_step"] = jnp.asarray(node.pop("weight_step")) * np.float32(
            2.0 ** (source_bits - bits)
        )
        node["codes"] = codes
    config = ml_collections.ConfigDict(header["config"])
    config.widths = tuple(config.widths)
    spec = QuantSpec(
        q.StoredCodes(per_channel=bool(config.per_channel)),
        q.LSQ.for_activations(),
        execution=execution,
    )
    model = build_model(with_bits(config, (bits,)), header["num_classes"], spec)
    preprocess = make_preprocess(header["mean"], header["std"])
    variables = jax.tree_util.tree_map(jnp.asarray, variables)
    return VerticalModel(
        model,
        variables,
        bits,
        data_start + needed,
        file_bytes,
        header,
        preprocess,
        header_contract(header),
    )

"""Paths in a model's parameter tree (`flax.traverse_util` paths: tuples of names): reading,
replacing, and finding the quantized layers."""

from __future__ import annotations

from typing import Any, Mapping

from flax import traverse_util

Path = tuple[str, ...]


def get_path(tree: Mapping[str, Any], path: Path):
    """``tree[path[0]][path[1]]...``."""
    for name in path:
        tree = tree[name]
    return tree


def replace_path(tree: Mapping[str, Any], path: Path, **values) -> dict:
    """A copy of nested dict ``tree`` whose dict at ``path`` has ``values`` set (None deletes)."""
    flat = traverse_util.flatten_dict(dict(tree), keep_empty_nodes=True)
    for key, value in values.items():
        if value is None:
            flat.pop(path + (key,), None)
        else:
            flat[path + (key,)] = value
    return traverse_util.unflatten_dict(flat)


def quantized_layer_paths(params: Mapping[str, Any]) -> list[Path]:
    """Paths of the layers whose kernel is quantized with a learned step (a ``kernel`` beside a
    ``weight_step``: LSQ and Vertical Layering), in the tree's order."""
    flat = traverse_util.flatten_dict(dict(params))
    layers = dict.fromkeys(key[:-1] for key in flat)
    return [p for p in layers if p + ("kernel",) in flat and p + ("weight_step",) in flat]

"""Paths in a model's parameter tree: reading, replacing, and finding the quantized layers."""
from __future__ import annotations

from typing import Any, Mapping

Path = tuple[str, ...]


def get_path(tree: Mapping[str, Any], path: Path):
    """``tree[path[0]][path[1]]...``."""
    for name in path:
        tree = tree[name]
    return tree


def replace_path(tree: Mapping[str, Any], path: Path, **values) -> dict:
    """A copy of nested dict ``tree`` whose dict at ``path`` has ``values`` set (None deletes)."""
    if not path:
        new = dict(tree)
        for key, value in values.items():
            if value is None:
                new.pop(key, None)
            else:
                new[key] = value
        return new
    return {**tree, path[0]: replace_path(tree[path[0]], path[1:], **values)}


def quantized_layer_paths(params: Mapping[str, Any]) -> list[Path]:
    """Paths of the layers whose kernel is quantized with a learned step (a ``kernel`` beside a
    ``weight_step``: LSQ and Vertical Layering), in the tree's order."""
    found = []

    def walk(tree, path):
        if "kernel" in tree and "weight_step" in tree:
            found.append(path)
        for name, child in tree.items():
            if isinstance(child, Mapping):
                walk(child, path + (name,))

    walk(params, ())
    return found

"""Names of pytree leaves: one spelling of a key path for partition rules, optimiser masks and
messages; dotted keys of nested config dicts."""

from __future__ import annotations

from typing import Any


def path_string(path: tuple, sep: str = "/") -> str:
    """'backbone/blocks_0/attn/qkv/kernel' for a pytree key path (dict keys, attribute names and
    sequence indices alike)."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return sep.join(parts)


def dotted(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'optim.lr': value} of a nested dict (a config's JSON): the leaves under dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat

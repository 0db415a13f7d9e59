"""Names of pytree leaves: one spelling of a key path for partition rules, optimiser masks and
messages."""

from __future__ import annotations


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

"""Partition rules: how every leaf of the train state is laid out on the mesh.

A rule is `(regex, layout)`; the first rule whose regex `re.search`es a leaf's path wins. Paths
join the state's keys with '/', e.g. `params/backbone/blocks_0/attn/qkv/kernel`,
`extra/teacher/head/mlp_0/kernel` or `opt_state/1/0/mu/backbone/pos_embed`, so one rule such as
`r"backbone/.*kernel"` covers the student, its EMA teacher and its Adam moments alike. A layout is

- `"fsdp"`: the FSDP tactic (as in big_vision): split the largest dimension that the `fsdp` axis
  divides over that axis; leaves smaller than `min_size` elements, scalars, and leaves with no
  divisible dimension stay replicated;
- `"replicate"`: every device holds the whole leaf;
- a tuple with one entry per dimension, each a mesh axis name or None, e.g. `(None, "fsdp")`.

Parameters are never split over `data`: that axis only splits the batch (ZeRO-3 style FSDP
splits them over `fsdp` and XLA all-gathers them where a layer needs them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pathfm.errors import ConfigError
from pathfm.parallel import FSDP_AXIS, MESH_AXES
from pathfm.pytree import path_string

DEFAULT_RULES = ((r".*", "fsdp"),)
Rule = tuple[str, Any]


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int) -> PartitionSpec:
    """Split the largest dimension divisible by `fsdp_size` (the first among equals)."""
    if fsdp_size == 1 or len(shape) == 0 or math.prod(shape) < min_size:
        return PartitionSpec()
    candidates = [i for i, n in enumerate(shape) if n % fsdp_size == 0]
    if not candidates:
        return PartitionSpec()
    axis = max(candidates, key=lambda i: (shape[i], -i))
    return PartitionSpec(*(FSDP_AXIS if i == axis else None for i in range(len(shape))))


def check_rules(rules: Sequence[Rule]) -> tuple[Rule, ...]:
    """The rules as a tuple of (compiled-checkable regex, layout); ConfigError names a bad one."""
    checked = []
    for i, rule in enumerate(rules):
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2):
            raise ConfigError(f"config.mesh.rules[{i}]: need (regex, layout), got {rule!r}")
        pattern, layout = rule
        try:
            re.compile(pattern)
        except (re.error, TypeError) as e:
            raise ConfigError(f"config.mesh.rules[{i}]: bad regex {pattern!r}: {e}") from None
        if isinstance(layout, (tuple, list)):
            bad = [a for a in layout if a is not None and a not in MESH_AXES]
            if bad:
                raise ConfigError(
                    f"config.mesh.rules[{i}]: unknown mesh axis {bad[0]!r} in {layout!r}; "
                    f"use {MESH_AXES} or None"
                )
            layout = tuple(layout)
        elif layout not in ("fsdp", "replicate"):
            raise ConfigError(
                f"config.mesh.rules[{i}]: layout {layout!r} is not 'fsdp', 'replicate' or a "
                "tuple of mesh axis names"
            )
        checked.append((pattern, layout))
    return tuple(checked)


def leaf_spec(path: str, shape: Sequence[int], rules, mesh: Mesh, min_size: int) -> PartitionSpec:
    """The PartitionSpec of one leaf by the first matching rule (replicated if none matches)."""
    for pattern, layout in rules:
        if not re.search(pattern, path):
            continue
        if layout == "replicate":
            return PartitionSpec()
        if layout == "fsdp":
            return fsdp_spec(shape, mesh.shape[FSDP_AXIS], min_size)
        if len(layout) != len(shape):
            raise ConfigError(
                f"partition rule {pattern!r} gives {layout} to {path} of shape {tuple(shape)}: "
                "one entry per dimension is needed"
            )
        for dim, axis in zip(shape, layout, strict=True):
            if axis is not None and dim % mesh.shape[axis]:
                raise ConfigError(
                    f"partition rule {pattern!r}: {path} of shape {tuple(shape)} cannot be split "
                    f"{mesh.shape[axis]} ways over {axis!r}"
                )
        return PartitionSpec(*layout)
    return PartitionSpec()


def tree_shardings(tree: Any, mesh: Mesh, rules=DEFAULT_RULES, min_size: int = 0) -> Any:
    """A NamedSharding for every leaf of `tree` (arrays or ShapeDtypeStructs) by the rules."""
    rules = check_rules(rules)
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: NamedSharding(
            mesh, leaf_spec(path_string(path), leaf.shape, rules, mesh, min_size)
        ),
        tree,
    )


def bytes_per_device(tree: Any, shardings: Any) -> int:
    """Bytes one device holds of `tree` laid out by `shardings`."""
    sizes = jax.tree.map(
        lambda leaf, sh: math.prod(sh.shard_shape(leaf.shape)) * leaf.dtype.itemsize,
        tree,
        shardings,
    )
    return int(sum(jax.tree.leaves(sizes)))

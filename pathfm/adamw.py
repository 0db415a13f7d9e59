"""AdamW as the reference DINO code runs it, built from optax pieces (pre-training and the MIL
head alike; `pathfm.train.optimizer` builds the pre-training one from a config).

    per-tensor clipping -> Adam moments -> + wd(step) * param (masked) -> * -lr(step) -> freeze mask

Freezing (DINO's `freeze_last_layer`) is a masked update, not a zeroed gradient: in PyTorch a
parameter whose `.grad` is None gets no Adam step at all, so its moments, its weight decay and its
own Adam step count stay untouched. Here the frozen parameters get their own `scale_by_adam`
instance whose state does not move while frozen (so bias correction starts at 1 when it thaws),
and their final update is exactly zero.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pathfm.pytree import path_string
from pathfm.schedules import Schedule

PathPredicate = Callable[[str], bool]


def tree_mask(params: Any, predicate: Callable[[str, jax.Array], bool]) -> Any:
    """A bool pytree: predicate(path, leaf) for every leaf."""
    return jax.tree_util.tree_map_with_path(lambda p, x: predicate(path_string(p), x), params)


def dino_decay_mask(params: Any) -> Any:
    """True where weight decay applies: not biases and not 1-D parameters (DINO's param groups)."""
    return tree_mask(params, lambda path, x: not path.endswith("bias") and x.ndim > 1)


_EMBEDDING_NAMES = ("patch_embed", "pos_embed", "cls_token", "reg_token", "mask_token")
_BLOCK = re.compile(r"(?:^|/)blocks_(\d+)/")


def layer_id(path: str, depth: int) -> int:
    """DINOv2's `get_vit_lr_decay_rate` layer id: 0 for the backbone's embeddings and tokens,
    i + 1 for block i, depth + 1 for everything else (final norm, heads)."""
    if path.startswith(("backbone/", "encoder/")):
        if any(f"/{name}" in f"/{path}" for name in _EMBEDDING_NAMES):
            return 0
        if match := _BLOCK.search(path):
            return int(match.group(1)) + 1
    return depth + 1


def lr_multipliers(
    params: Any, depth: int, layer_decay: float = 1.0, patch_embed_mult: float = 1.0
) -> Any:
    """Per-parameter lr factors: layer_decay ** (depth + 1 - layer_id), and x patch_embed_mult on
    the patch embedding (DINOv2's param groups; 1.0 and 1.0 leave every factor at 1)."""

    def factor(path: str, leaf) -> float:
        f = layer_decay ** (depth + 1 - layer_id(path, depth))
        return f * patch_embed_mult if "patch_embed/" in path else f

    return tree_mask(params, factor)


def regex_predicate(pattern: str) -> PathPredicate:
    """Matches parameter paths against a regex (re.search)."""
    compiled = re.compile(pattern)
    return lambda path: compiled.search(path) is not None


class CountState(NamedTuple):
    count: jax.Array


def clip_by_tensor_norm(max_norm: float) -> optax.GradientTransformation:
    """DINO's `clip_gradients`: each tensor g *= min(1, max_norm / (||g|| + 1e-6))."""

    def update(updates, state, params=None):
        del params

        def clip(g):
            coef = max_norm / (jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32)))) + 1e-6)
            return (g * jnp.minimum(coef, 1.0)).astype(g.dtype)

        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def add_scheduled_weight_decay(schedule: Schedule, mask: Any) -> optax.GradientTransformation:
    """updates + wd(step) * params where `mask` is True (decoupled decay, scaled later by lr)."""

    def init(params):
        return CountState(jnp.zeros([], jnp.int32))

    def update(updates, state, params):
        wd = schedule(state.count)
        new = jax.tree.map(lambda u, p, m: u + wd * p if m else u, updates, params, mask)
        return new, CountState(state.count + 1)

    return optax.GradientTransformation(init, update)


def scale_by_neg_schedule(
    schedule: Schedule, multipliers: Any | None = None
) -> optax.GradientTransformation:
    """updates * -lr(step), times a per-parameter factor when `multipliers` is given (as a
    PyTorch param group's lr: the decoupled weight decay is scaled by it too)."""

    def init(params):
        return CountState(jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        lr = schedule(state.count)
        if multipliers is None:
            new = jax.tree.map(lambda u: -lr * u, updates)
        else:
            new = jax.tree.map(lambda u, m: -lr * m * u, updates, multipliers)
        return new, CountState(state.count + 1)

    return optax.GradientTransformation(init, update)


class FrozenState(NamedTuple):
    count: jax.Array
    inner: Any


def hold_while_frozen(inner: optax.GradientTransformation, steps: int):
    """Runs `inner` only from step `steps` on; before that its state is untouched, updates zero."""

    def init(params):
        return FrozenState(jnp.zeros([], jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        new_updates, new_inner = inner.update(updates, state.inner, params)
        frozen = state.count < steps
        out = jax.tree.map(lambda u: jnp.where(frozen, jnp.zeros_like(u), u), new_updates)
        kept = jax.tree.map(lambda old, new: jnp.where(frozen, old, new), state.inner, new_inner)
        return out, FrozenState(state.count + 1, kept)

    return optax.GradientTransformation(init, update)


def zero_while_frozen(mask: Any, steps: int) -> optax.GradientTransformation:
    """Final updates of masked leaves are exactly zero for the first `steps` steps."""

    def init(params):
        return CountState(jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        frozen = state.count < steps
        new = jax.tree.map(
            lambda u, m: jnp.where(frozen, jnp.zeros_like(u), u) if m else u, updates, mask
        )
        return new, CountState(state.count + 1)

    return optax.GradientTransformation(init, update)


def adamw(
    params: Any,
    lr: Schedule,
    weight_decay: Schedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    clip_grad: float = 0.0,
    decay_mask: Any | None = None,
    frozen: PathPredicate | None = None,
    frozen_steps: int = 0,
    lr_mults: Any | None = None,
) -> optax.GradientTransformation:
    """The reference AdamW: clipping, Adam, scheduled decoupled weight decay, lr, freezing.

    `params` only provides the tree structure for the masks. `frozen` selects parameters that get
    no update at all for the first `frozen_steps` steps. `lr_mults` holds per-parameter lr
    factors (layer-wise decay, patch-embedding multiplier).
    """
    decay_mask = dino_decay_mask(params) if decay_mask is None else decay_mask
    adam = lambda: optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
    parts = [clip_by_tensor_norm(clip_grad)] if clip_grad > 0 else []
    if frozen is not None and frozen_steps > 0:
        labels = tree_mask(params, lambda path, x: "frozen" if frozen(path) else "free")
        frozen_mask = jax.tree.map(lambda label: label == "frozen", labels)
        if not any(jax.tree.leaves(frozen_mask)):
            raise ValueError("the freeze rule matches no parameter")
        parts.append(
            optax.multi_transform(
                {"free": adam(), "frozen": hold_while_frozen(adam(), frozen_steps)}, labels
            )
        )
    else:
        frozen_mask = None
        parts.append(adam())
    parts += [
        add_scheduled_weight_decay(weight_decay, decay_mask),
        scale_by_neg_schedule(lr, lr_mults),
    ]
    if frozen_mask is not None:
        parts.append(zero_while_frozen(frozen_mask, frozen_steps))
    return optax.chain(*parts)

"""AdamW as the reference DINO / DINOv2 code runs it, built from optax pieces (pre-training and
the MIL head alike; `pathfm.train.optimizer` builds the pre-training one from a config).

    clipping -> Adam moments -> + wd(step) * param (masked) -> * -lr(step) -> freeze mask

Clipping (`clip_rule`):
- "per_tensor": DINO v1 (facebookresearch/dino `utils.clip_gradients`), each tensor by its own norm.
- "per_module": DINOv2 (facebookresearch/dinov2 `dinov2/train/train.py` `do_train`:
  `v.clip_grad_norm_(clip_grad)` for each student module), each top-level subtree of the params
  tree (backbone, dino_head, ibot_head) by its total norm, as `torch.nn.utils.clip_grad_norm_`.

Freezing the head's last layer (`freeze_rule`):
- "drop": DINO v1 (`utils.cancel_gradients_last_layer`): `.grad` is None, so PyTorch's AdamW skips
  the parameter: its moments, its weight decay and its own Adam step count stay untouched. Here the
  frozen parameters get their own `scale_by_adam` instance whose state does not move while frozen
  (bias correction starts at 1 when it thaws), and their final update is exactly zero.
- "zero_lr": DINOv2 (`build_schedulers`: `last_layer_lr_schedule` is 0 for the first
  `freeze_last_layer_epochs`; `apply_optim_scheduler` gives last-layer groups that lr): AdamW
  still steps, so the moments and the step count advance, but lr = 0 zeroes the update and the
  decoupled weight decay (p *= 1 - lr * wd). Here one Adam covers every leaf and the final
  update of frozen leaves is exactly zero while frozen.
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
CLIP_RULES = ("per_tensor", "per_module")
FREEZE_RULES = ("drop", "zero_lr")


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


def module_labels(params: Any) -> Any:
    """A str pytree: the top-level key of every leaf (DINOv2's student modules: 'backbone',
    'dino_head', 'ibot_head')."""
    return tree_mask(params, lambda path, x: path.split("/", 1)[0])


def clip_by_group_norm(max_norm: float, groups: Any) -> optax.GradientTransformation:
    """`torch.nn.utils.clip_grad_norm_` on each group of leaves: g *= min(1, max_norm /
    (||group||_2 + 1e-6)), the norm taken over all of the group's tensors together.

    `groups`: a pytree of hashable labels with the updates' structure (e.g. `module_labels`)."""

    def update(updates, state, params=None):
        del params
        squares: dict[Any, jax.Array] = {}
        for g, label in zip(jax.tree.leaves(updates), jax.tree.leaves(groups), strict=True):
            sq = jnp.sum(jnp.square(g.astype(jnp.float32)))
            squares[label] = squares[label] + sq if label in squares else sq
        coef = {k: jnp.minimum(max_norm / (jnp.sqrt(v) + 1e-6), 1.0) for k, v in squares.items()}
        new = jax.tree.map(lambda g, label: (g * coef[label]).astype(g.dtype), updates, groups)
        return new, state

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
    clip_rule: str = "per_tensor",
    decay_mask: Any | None = None,
    frozen: PathPredicate | None = None,
    frozen_steps: int = 0,
    freeze_rule: str = "drop",
    lr_mults: Any | None = None,
) -> optax.GradientTransformation:
    """The reference AdamW: clipping, Adam, scheduled decoupled weight decay, lr, freezing.

    `params` only provides the tree structure for the masks. `clip_rule` (CLIP_RULES) says how
    gradients are clipped to `clip_grad` (0: not at all). `frozen` selects parameters that get
    no update for the first `frozen_steps` steps, held as `freeze_rule` (FREEZE_RULES) says (see
    the module docstring). `lr_mults` holds per-parameter lr factors (layer-wise decay,
    patch-embedding multiplier).
    """
    if clip_rule not in CLIP_RULES:
        raise ValueError(f"clip_rule {clip_rule!r} is not one of {CLIP_RULES}")
    if freeze_rule not in FREEZE_RULES:
        raise ValueError(f"freeze_rule {freeze_rule!r} is not one of {FREEZE_RULES}")
    decay_mask = dino_decay_mask(params) if decay_mask is None else decay_mask
    adam = lambda: optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
    if clip_grad <= 0:
        parts = []
    elif clip_rule == "per_module":
        parts = [clip_by_group_norm(clip_grad, module_labels(params))]
    else:
        parts = [clip_by_tensor_norm(clip_grad)]
    frozen_mask = None
    if frozen is not None and frozen_steps > 0:
        labels = tree_mask(params, lambda path, x: "frozen" if frozen(path) else "free")
        frozen_mask = jax.tree.map(lambda label: label == "frozen", labels)
        if not any(jax.tree.leaves(frozen_mask)):
            raise ValueError("the freeze rule matches no parameter")
    if frozen_mask is not None and freeze_rule == "drop":
        parts.append(
            optax.multi_transform(
                {"free": adam(), "frozen": hold_while_frozen(adam(), frozen_steps)}, labels
            )
        )
    else:  # nothing frozen, or "zero_lr": every leaf's moments and count advance
        parts.append(adam())
    parts += [
        add_scheduled_weight_decay(weight_decay, decay_mask),
        scale_by_neg_schedule(lr, lr_mults),
    ]
    if frozen_mask is not None:
        parts.append(zero_while_frozen(frozen_mask, frozen_steps))
    return optax.chain(*parts)

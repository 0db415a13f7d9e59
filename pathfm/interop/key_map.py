"""The one mapping between a pathfm `VisionTransformer` parameter tree and a timm
`VisionTransformer` state dict, used by export (`to_timm`) and import (`from_timm`) alike.

Leaf by leaf (`entries`): Conv kernels [p, p, 3, D] <-> [D, 3, p, p], Dense kernels [in, out] <->
Linear weights [out, in], LayerNorm scale <-> weight, everything else as is. Position embeddings:
timm's layout is pathfm's except for pathfm's DINOv2 layout (registers with no_embed_class=False,
whose pos_embed keeps a CLS row), which maps onto timm no_embed_class=True as timm's own DINOv2
conversion does: cls_token + pos_embed[:, :1], pos_embed[:, 1:]. That fold has no inverse, so an
import into the DINOv2 layout puts the sum into cls_token and zeros into the CLS row (the same
function, not the same parameters). NumPy only: no torch.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np
from flax import traverse_util

from pathfm.models.pos_interp import resample_pos_embed
from pathfm.models.vit import ViTConfig

log = logging.getLogger(__name__)

CONV_TO_TORCH = (3, 2, 0, 1)  # [p, p, in, out] -> [out, in, p, p]
DENSE_TO_TORCH = (1, 0)  # [in, out] -> [out, in]
NOT_IN_TIMM = (("mask_token",),)  # pathfm leaves timm has no place for (DINOv2's iBOT token)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One parameter: its path in the Flax tree, its timm key, the axes permutation to timm."""

    path: tuple[str, ...]
    key: str
    perm: tuple[int, ...] | None = None

    def to_timm(self, value: np.ndarray) -> np.ndarray:
        return value if self.perm is None else np.transpose(value, self.perm)

    def from_timm(self, value: np.ndarray) -> np.ndarray:
        return value if self.perm is None else np.transpose(value, np.argsort(self.perm))


def _linear(path: tuple[str, ...], key: str, bias: bool = True) -> list[Entry]:
    weight = Entry((*path, "kernel"), f"{key}.weight", DENSE_TO_TORCH)
    return [weight, Entry((*path, "bias"), f"{key}.bias")] if bias else [weight]


def _norm(path: tuple[str, ...], key: str) -> list[Entry]:
    return [Entry((*path, "scale"), f"{key}.weight"), Entry((*path, "bias"), f"{key}.bias")]


def _block(cfg: ViTConfig, i: int) -> list[Entry]:
    block, key = f"blocks_{i}", f"blocks.{i}"
    scale = lambda n: (
        [Entry((block, f"ls{n}", "gamma"), f"{key}.ls{n}.gamma")] if cfg.layer_scale_init else []
    )
    return [
        *_norm((block, "norm1"), f"{key}.norm1"),
        *_linear((block, "attn", "qkv"), f"{key}.attn.qkv", cfg.qkv_bias),
        *_linear((block, "attn", "proj"), f"{key}.attn.proj"),
        *scale(1),
        *_norm((block, "norm2"), f"{key}.norm2"),
        *_linear((block, "mlp", "fc1"), f"{key}.mlp.fc1"),
        *_linear((block, "mlp", "fc2"), f"{key}.mlp.fc2"),
        *scale(2),
    ]


def entries(cfg: ViTConfig) -> list[Entry]:
    """Every parameter of `cfg`'s ViT in timm's state-dict order."""
    registers = [Entry(("reg_token",), "reg_token")] if cfg.num_registers else []
    return [
        Entry(("cls_token",), "cls_token"),
        *registers,
        Entry(("pos_embed",), "pos_embed"),
        Entry(("patch_embed", "proj", "kernel"), "patch_embed.proj.weight", CONV_TO_TORCH),
        Entry(("patch_embed", "proj", "bias"), "patch_embed.proj.bias"),
        *(e for i in range(cfg.depth) for e in _block(cfg, i)),
        *_norm(("norm",), "norm"),
    ]


def timm_prefix_rows(cfg: ViTConfig) -> int:
    """Rows before the patch rows in timm's pos_embed: 1 (CLS) for a plain ViT; 0 with
    no_embed_class or registers (timm no_embed_class=True)."""
    return 0 if cfg.no_embed_class or cfg.num_registers else 1


def _pathfm_prefix_rows(cfg: ViTConfig) -> int:
    return 0 if cfg.no_embed_class else 1


def to_timm(params: Any, cfg: ViTConfig) -> dict[str, np.ndarray]:
    """timm state dict (NumPy, possibly non-contiguous views) of a `VisionTransformer` tree."""
    flat = {path: np.asarray(v) for path, v in traverse_util.flatten_dict(params).items()}
    table = entries(cfg)
    unknown = sorted(set(flat) - {e.path for e in table} - set(NOT_IN_TIMM))
    missing = [e.path for e in table if e.path not in flat]
    if unknown or missing:
        raise ValueError(
            f"the parameters do not match the ViT config: unknown {unknown[:3]}, "
            f"missing {missing[:3]}"
        )
    state = {e.key: e.to_timm(flat[e.path]) for e in table}
    if _pathfm_prefix_rows(cfg) != timm_prefix_rows(cfg):  # DINOv2 layout: fold the CLS row in
        pos = state["pos_embed"]
        state["cls_token"] = state["cls_token"] + pos[:, :1]
        state["pos_embed"] = pos[:, 1:]
    return state


def stored_prefix_rows(rows: int, registers: int) -> int | None:
    """Rows before the patches in a stored pos_embed of `rows` rows: the first of 0, 1 (CLS) and
    1 + registers that leaves a square patch grid; None if none does."""
    for prefix in dict.fromkeys((0, 1, 1 + registers)):
        side = math.isqrt(max(rows - prefix, 0))
        if rows > prefix and side * side == rows - prefix:
            return prefix
    return None


def _pos_to_pathfm(state: dict[str, np.ndarray], cfg: ViTConfig) -> tuple[np.ndarray, np.ndarray]:
    """(cls_token, pos_embed) of a stored state dict in pathfm's layout and grid for `cfg`.

    The stored pos_embed may have a CLS row or not (timm no_embed_class), and any square grid
    (resampled as `cfg.pos_interp` says); rows for registers must be zero (pathfm gives
    registers no position embedding)."""
    cls, pos = state["cls_token"], state["pos_embed"]
    registers = state["reg_token"].shape[1] if "reg_token" in state else 0
    prefix = stored_prefix_rows(pos.shape[1], registers)
    if prefix is None:
        raise ValueError(f"pos_embed {pos.shape} has no square patch grid")
    if prefix > 1:
        if np.any(pos[:, 1:prefix]):
            raise ValueError(
                "pos_embed holds position embeddings for the register tokens (timm "
                "no_embed_class=False with reg_tokens); pathfm's registers have none"
            )
        pos, prefix = np.concatenate([pos[:, :1], pos[:, prefix:]], axis=1), 1
    grid = cfg.grid_size
    if pos.shape[1] - prefix != grid * grid:
        old = math.isqrt(pos.shape[1] - prefix)
        log.info(
            "resampling pos_embed from a %dx%d to a %dx%d patch grid (%s)",
            *(old, old, grid, grid, cfg.pos_interp),
        )
        pos = np.asarray(resample_pos_embed(pos, (grid, grid), prefix, cfg.pos_interp))
    target = _pathfm_prefix_rows(cfg)
    if prefix == 1 and target == 0:
        cls, pos = cls + pos[:, :1], pos[:, 1:]
    elif prefix == 0 and target == 1:
        pos = np.concatenate([np.zeros_like(pos[:, :1]), pos], axis=1)
    return cls, pos


def from_timm(state: dict[str, np.ndarray], cfg: ViTConfig, template: Any) -> Any:
    """The `VisionTransformer` tree of a timm state dict (checked with `first_difference`).

    Every leaf the state dict sets is a NumPy array with `template`'s dtype; the others (the iBOT
    mask_token, unless the state dict holds it too, as DINOv2's own checkpoints do) are
    `template`'s leaves as they are (arrays, possibly sharded, or ShapeDtypeStructs)."""
    flat = traverse_util.flatten_dict(template)
    cls, pos = _pos_to_pathfm(state, cfg)
    state = {**state, "cls_token": cls, "pos_embed": pos}
    for e in entries(cfg):
        flat[e.path] = np.asarray(e.from_timm(state[e.key]), flat[e.path].dtype)
    for path in NOT_IN_TIMM:
        key, shape = ".".join(path), getattr(flat.get(path), "shape", None)
        if shape is not None and key in state and state[key].size == math.prod(shape):
            flat[path] = np.asarray(state[key], flat[path].dtype).reshape(shape)
    return traverse_util.unflatten_dict(flat)


def expected_shapes(cfg: ViTConfig, template: Any) -> dict[str, tuple[int, ...]]:
    """The shape of every timm key of `cfg`'s ViT (`template`: arrays or ShapeDtypeStructs)."""
    hollow = lambda a: np.broadcast_to(np.zeros((), np.float32), a.shape)  # no memory
    flat = traverse_util.flatten_dict(template)
    skeleton = traverse_util.unflatten_dict({k: hollow(v) for k, v in flat.items()})
    return {k: tuple(v.shape) for k, v in to_timm(skeleton, cfg).items()}


def first_difference(
    shapes: dict[str, tuple[int, ...]], cfg: ViTConfig, template: Any, ignored=()
) -> str | None:
    """Why a stored state dict (key -> shape) does not fit `cfg`, naming the first key (in timm
    order) that is missing or has another shape, then the first unexpected key; None if it fits.
    pos_embed may have any square grid, with or without a CLS row. Keys starting with one of
    `ignored` (classifier heads, decoders) are allowed extras."""
    for key, want in expected_shapes(cfg, template).items():
        if key not in shapes:
            return f"key {key!r} is missing (the model needs shape {want})"
        have = tuple(shapes[key])
        if key == "pos_embed":
            registers = shapes["reg_token"][1] if "reg_token" in shapes else 0
            fits = len(have) == 3 and have[0] == 1 and have[2] == want[2]
            if fits and stored_prefix_rows(have[1], registers) is not None:
                continue
        if have != want:
            return f"key {key!r} has shape {have}, the model needs {want}"
    known = {e.key for e in entries(cfg)} | {".".join(p) for p in NOT_IN_TIMM}
    extra = [k for k in shapes if k not in known and not k.startswith(tuple(ignored))]
    if extra:
        return f"key {extra[0]!r} is not part of the model ({len(extra)} keys are not)"
    return None

"""The interface every self-supervised method implements, so the loop never branches on method.

A method splits its state into `params` (trained by the optimiser: the student) and `extra`
(everything else that evolves: EMA teacher, centers). All functions are pure and jittable.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from pathfm.models.vit import ViTConfig, vit_config

Params = Any
Batch = dict[str, jax.Array]


class Method(Protocol):
    """What the training loop, checkpointing, monitoring and export need from a method."""

    name: str
    batch_keys: tuple[str, ...]  # the arrays a batch must hold, each [B, ...]
    backbones: tuple[str, ...]  # the backbones `which` may name; the first is the default
    lr_warmup: str  # the reference's lr warm-up: "dino" (linspace to the peak) or "mae" (i / W)
    # The reference's gradient clipping (`pathfm.adamw.CLIP_RULES`): "per_tensor" (each tensor by
    # its norm, DINO v1) or "per_module" (each top-level params subtree by its total norm, DINOv2).
    clip_rule: str
    # How `frozen_rule`'s parameters are held (`pathfm.adamw.FREEZE_RULES`): "drop" (no gradient:
    # no Adam step at all, DINO v1) or "zero_lr" (lr 0: Adam moments and count advance, DINOv2).
    freeze_rule: str

    def init(self, rng: jax.Array) -> tuple[Params, Params]:
        """Fresh (params, extra)."""

    def loss(
        self, params: Params, extra: Params, batch: Batch, rng: jax.Array, step: jax.Array
    ) -> tuple[jax.Array, dict[str, Any]]:
        """(scalar loss, aux) where aux['metrics'] holds scalars to log."""

    def update_extra(self, extra: Params, params: Params, aux: dict, step: jax.Array) -> Params:
        """The non-trained state after the optimiser step (EMA teacher, centers)."""

    def embed(self, params: Params, extra: Params, images: jax.Array) -> jax.Array:
        """Frozen-feature embedding [B, D] of uint8 images [B, H, W, 3] (for monitors)."""

    def tokens(
        self, params: Params, extra: Params, images: jax.Array, which: str
    ) -> tuple[jax.Array, jax.Array]:
        """(CLS [B, D], patch tokens [B, N, D]) of uint8 images from the backbone `which`
        ('teacher' or 'student'; MAE: 'encoder'), after the final LayerNorm (evaluation)."""

    def frozen_rule(self) -> tuple[str | None, int]:
        """(regex over parameter paths, steps) of parameters that get no update at first."""

    def backbone(self, params: Params, extra: Params, which: str) -> Backbone:
        """The backbone `which` as `VisionTransformer` parameters plus its architecture (export)."""

    def with_backbone(
        self, params: Params, extra: Params, backbone: Params
    ) -> tuple[Params, Params]:
        """(params, extra) whose student backbone, and what starts as its copy (the EMA
        teacher), is `backbone` (a `VisionTransformer` tree, as `backbone()` gives): importing
        weights. Heads and everything else are left as they are."""


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A method's ViT backbone: parameters as `pathfm.models.vit.VisionTransformer` holds them
    (MAE's encoder with its fixed sin-cos table as `pos_embed`) and the architecture."""

    params: Params
    config: ViTConfig


def check_backbone(method: Method, which: str) -> None:
    """ValueError unless `which` names one of `method`'s backbones."""
    if which not in method.backbones:
        names = " and a ".join(repr(b) for b in method.backbones)
        raise ValueError(f"{method.name} has a {names} backbone, not {which!r}")


def ema_backbone(params: Params, extra: Params, which: str) -> Params:
    """The 'teacher' (EMA copy in `extra`) or 'student' backbone subtree of a self-distillation
    method (DINO, DINOv2)."""
    return (extra["teacher"] if which == "teacher" else params)["backbone"]


def with_ema_backbone(params: Params, extra: Params, backbone: Params) -> tuple[Params, Params]:
    """Student and EMA teacher both start from `backbone`, as the teacher starts as the
    student's copy."""
    teacher = {**extra["teacher"], "backbone": backbone}
    return {**params, "backbone": backbone}, {**extra, "teacher": teacher}


def backbone_config(model, drop_path_rate: float) -> ViTConfig:
    """The ViTConfig of `config.model` (a size name plus optional explicit dimensions)."""
    overrides = {k: model[k] for k in ("embed_dim", "depth", "num_heads") if model.get(k, 0)}
    optional = ("layer_scale_init", "num_registers", "no_embed_class", "ffn", "drop_path_uniform")
    for key in (*optional, "attention", "remat", "pos_interp"):
        if key in model:
            overrides[key] = model[key]
    return vit_config(
        model.size,
        model.patch_size,
        img_size=model.img_size,
        mlp_ratio=model.mlp_ratio,
        drop_path_rate=drop_path_rate,
        dtype=model.dtype,
        **overrides,
    )


def normalize_images(images: jax.Array, mean, std, dtype=jnp.float32) -> jax.Array:
    """uint8 [..., 3] -> (x/255 - mean) / std in `dtype`, computed in float32."""
    x = images.astype(jnp.float32) / 255.0
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return x.astype(dtype)


def sample_major(crops: jax.Array) -> jax.Array:
    """[B, V, ...] -> [B*V, ...] (the V crops of sample 0 first): the batch stays the major
    part of the merged axis, so a batch-sharded array stays where it is. (Crop-major [V*B, ...]
    would make the batch the minor part, a layout no sharding describes: XLA would gather the
    whole batch onto every device and every device would compute all of it.)"""
    return crops.reshape(crops.shape[0] * crops.shape[1], *crops.shape[2:])


def view_major(x: jax.Array, views: int) -> jax.Array:
    """[B*V, ...] in `sample_major` order -> [V, B, ...], batch-sharded as the input was."""
    return jnp.swapaxes(x.reshape(-1, views, *x.shape[1:]), 0, 1)


def ema(teacher: Params, student: Params, momentum: jax.Array) -> Params:
    """teacher = m * teacher + (1 - m) * student, leaf by leaf."""
    return jax.tree.map(lambda t, s: t * momentum + (1.0 - momentum) * s, teacher, student)

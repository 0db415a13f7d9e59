"""DINO (v1): self-distillation with an EMA teacher, multi-crop, centering and sharpening.

Follows facebookresearch/dino main_dino.py (Caron et al. 2021, section 3). Batches hold uint8 crops
`global_crops` [B, 2, G, G, 3] and `local_crops` [B, n_local, L, L, 3]; normalisation happens here,
on the accelerator. With `crops.geometry_on_device` they hold uint8 `patches` [B, P, P, 3] and each
view's `crop_boxes` [B, V, 4] and `crop_orient` [B, V, 3] instead, and the crops are cut here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from pathfm.data.augment import multicrop_config
from pathfm.data.device_augment import normalize, photometric_multicrop
from pathfm.data.device_crops import cut_multicrop
from pathfm.models.heads import DINOHead
from pathfm.models.vit import VisionTransformer
from pathfm.schedules import cosine_schedule, epoch_linear_warmup
from pathfm.ssl.base import (
    Batch,
    Params,
    backbone_config,
    ema,
    normalize_images,
    sample_major,
    view_major,
)
from pathfm.ssl.dino_loss import dino_loss, update_center
from pathfm.ssl.ema_teacher import EmaTeacherMethod


def build_backbone(model: ml_collections.ConfigDict, drop_path_rate: float) -> VisionTransformer:
    """The ViT described by `config.model` (size name plus optional explicit dimensions)."""
    return VisionTransformer(backbone_config(model, drop_path_rate))


def build_head(config: ml_collections.ConfigDict) -> DINOHead:
    """The DINO projection head described by `config.dino` (also DINOv2's DINO and iBOT heads)."""
    d = config.dino
    return DINOHead(
        d.out_dim,
        d.hidden_dim,
        d.bottleneck_dim,
        d.nlayers,
        d.norm_last_layer,
        dtype=config.model.dtype,
    )


CUT_KEYS = ("patches", "crop_boxes", "crop_orient")  # crops cut on the device


class Dino(EmaTeacherMethod):
    """DINO as a `pathfm.ssl.base.Method`."""

    name = "dino"
    batch_keys = ("global_crops", "local_crops")  # or CUT_KEYS (`crops.geometry_on_device`)
    frozen_pattern = r"^head/last_layer/"
    clip_rule = "per_tensor"  # main_dino.py train_one_epoch: utils.clip_gradients
    freeze_rule = "drop"  # utils.cancel_gradients_last_layer: grad None, no AdamW step

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        d = config.dino
        self.student = build_backbone(config.model, config.model.drop_path_rate)
        self.teacher = build_backbone(config.model, 0.0)  # the teacher has no drop-path
        self.head = build_head(config)
        total = config.epochs * config.steps_per_epoch
        self.teacher_temp = epoch_linear_warmup(
            d.warmup_teacher_temp,
            d.teacher_temp,
            d.warmup_teacher_temp_epochs,
            config.steps_per_epoch,
        )
        self.momentum = cosine_schedule(d.momentum_teacher, 1.0, total)
        self.mean, self.std = tuple(config.data.mean), tuple(config.data.std)
        self.photometric = None  # colour augmentation on the accelerator, when configured
        if config.crops.photometric_on_device:
            self.photometric = multicrop_config(config).photometric
        self.cut_on_device = config.crops.geometry_on_device  # the crops, too
        if self.cut_on_device:
            self.batch_keys = CUT_KEYS

    def init(self, rng: jax.Array) -> tuple[Params, Params]:
        size = self.config.model.img_size
        images = jnp.zeros((1, size, size, 3), jnp.float32)
        backbone = self.student.init({"params": rng}, images)["params"]
        embed_dim = self.student.config.embed_dim
        head = self.head.init(jax.random.fold_in(rng, 1), jnp.zeros((1, embed_dim)))["params"]
        params = {"backbone": backbone, "head": head}
        center = jnp.zeros((1, self.config.dino.out_dim), jnp.float32)
        return params, {"teacher": jax.tree.map(jnp.copy, params), "center": center}

    def _forward(self, backbone_module, params, images, rng=None):
        """CLS embeddings [N, D] of uint8 images, or of float images in [0, 1] (augmented)."""
        dtype = jnp.dtype(self.config.model.dtype)
        if images.dtype == jnp.uint8:
            x = normalize_images(images, self.mean, self.std, dtype)
        else:
            x = normalize(images, self.mean, self.std, dtype)
        train = rng is not None
        rngs = {"dropout": rng} if train else {}
        cls, _ = backbone_module.apply({"params": params["backbone"]}, x, train=train, rngs=rngs)
        return cls

    def loss(self, params: Params, extra: Params, batch: Batch, rng, step):
        d = self.config.dino
        if self.cut_on_device:
            cr = self.config.crops
            views, local_views = cut_multicrop(
                batch["patches"], batch["crop_boxes"], batch["crop_orient"],
                cr.global_size, cr.local_size,
            )  # fmt: skip
        else:
            views, local_views = batch["global_crops"], batch["local_crops"]
        if self.photometric is not None:  # once, so teacher and student see the same views
            views, local_views = photometric_multicrop(
                views, local_views, jax.random.fold_in(rng, 2), self.photometric
            )
        # Sample-major through the backbone, view-major [V, B, ...] after it: never merge views
        # into the batch-sharded axis (see `sample_major`), so each device computes its own shard.
        global_crops = sample_major(views)  # [B*2, G, G, 3]
        local_crops = sample_major(local_views)  # [B*n, L, L, 3]
        teacher_cls = self._forward(self.teacher, extra["teacher"], global_crops)
        teacher_out = jax.lax.stop_gradient(
            self.head.apply({"params": extra["teacher"]["head"]}, view_major(teacher_cls, 2))
        )  # [2, B, K]
        student = lambda crops, i: self._forward(
            self.student, params, crops, jax.random.fold_in(rng, i)
        )
        student_cls = [view_major(student(global_crops, 0), 2)]
        if local_crops.shape[0]:
            student_cls.append(view_major(student(local_crops, 1), local_views.shape[1]))
        student_out = self.head.apply({"params": params["head"]}, jnp.concatenate(student_cls))
        temp = self.teacher_temp(step)
        loss = dino_loss(student_out, teacher_out, extra["center"], temp, d.student_temp)
        metrics = {"teacher_temp": temp, "momentum": self.momentum(step)}
        return loss, {"metrics": metrics, "teacher_out": teacher_out}

    def update_extra(self, extra: Params, params: Params, aux: dict, step) -> Params:
        teacher = ema(extra["teacher"], params, self.momentum(step))
        center = update_center(
            extra["center"], aux["teacher_out"], self.config.dino.center_momentum
        )
        return {"teacher": teacher, "center": center}

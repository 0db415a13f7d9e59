"""DINOv2: DINO on the CLS token + iBOT on masked patch tokens + KoLeo (Oquab et al. 2023, sec. 4).

Follows facebookresearch/dinov2 ssl_meta_arch.py. Batches hold uint8 `global_crops`
[B, 2, G, G, 3], `local_crops` [B, n, L, L, 3] and bool `masks` [B, 2, N] (block masks for half of
the global crops, made on the host). The student sees the masked global crops and the local crops;
the teacher the unmasked global crops. Teacher targets: Sinkhorn-Knopp or centering.

The iBOT head (student and teacher) runs on the masked patch tokens only, gathered per device
into a buffer of DINOv2's `upperbound` rows (`pathfm.ssl.ibot_buffer`, as `forward_backward`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from pathfm.models.vit import VisionTransformer
from pathfm.schedules import cosine_schedule
from pathfm.ssl.base import (
    Batch,
    Params,
    backbone_config,
    ema,
    normalize_images,
    sample_major,
    view_major,
)
from pathfm.ssl.dino import build_head
from pathfm.ssl.dino_loss import update_center
from pathfm.ssl.dinov2_loss import dino_cross_entropy_sum, ibot_loss
from pathfm.ssl.ema_teacher import EmaTeacherMethod
from pathfm.ssl.ibot_buffer import buffer_size, gather_tokens, masked_buffer
from pathfm.ssl.koleo import koleo_loss
from pathfm.ssl.sinkhorn import sinkhorn_knopp, softmax_center_teacher


def per_device_koleo(cls: jax.Array, groups: int) -> jax.Array:
    """KoLeo [B, D] computed within each of `groups` equal slices (DINOv2 runs it on each GPU's
    batch), averaged over slices as DDP averages the per-GPU losses."""
    return jnp.mean(jax.vmap(koleo_loss)(cls.reshape(groups, -1, cls.shape[-1])))


class DinoV2(EmaTeacherMethod):
    """DINOv2 as a `pathfm.ssl.base.Method`. Its backbones carry the iBOT `mask_token` (not part
    of timm's layout; export drops it).

    `koleo_groups` is G (default: every device), the per-device groups of the batch: KoLeo runs
    within each, and each gathers its masked patch tokens into its own iBOT buffer of U rows.
    `ibot_buffer` sets U (`pathfm.ssl.ibot_buffer.buffer_size`): "upperbound" (default), DINOv2's
    collate `upperbound` for the 2B/G global crops of a group, provably enough for masks drawn
    per device as the pipeline draws them (`AddBlockMasks.groups` = local devices, so the hosts'
    process_count x local_device_count groups are the G groups here); "all" (every patch token:
    enough for any masks, at the dense heads' cost) or a number. A group holding more masked
    tokens than U (masks made otherwise) is never truncated: the loss is NaN, so the train step
    drops the update (`config.on_nonfinite`), and the metric `ibot_overflow` counts the tokens
    that did not fit.
    """

    name = "dinov2"
    batch_keys = ("global_crops", "local_crops", "masks")
    frozen_pattern = r"^(dino_head|ibot_head)/last_layer/"
    # dinov2/train/train.py do_train: `clip_grad_norm_` on each of model.student's modules
    # (backbone, dino_head, ibot_head: the params tree's top-level keys).
    clip_rule = "per_module"
    # build_schedulers / apply_optim_scheduler: last-layer lr 0 while frozen; AdamW still steps.
    freeze_rule = "zero_lr"

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        koleo_groups: int | None = None,
        ibot_buffer: int | str = "upperbound",
    ):
        self.config = config
        buffer_size(1, 1, 0.5, (0.1, 0.5), ibot_buffer)  # ValueError for an unknown choice
        self.ibot_buffer = ibot_buffer
        d, v = config.dino, config.dinov2
        with_mask = lambda rate: dataclasses.replace(
            backbone_config(config.model, rate), use_mask_token=True
        )
        self.student = VisionTransformer(with_mask(config.model.drop_path_rate))
        self.teacher = VisionTransformer(with_mask(0.0))
        self.head = build_head(config)  # stateless: applied to the DINO and the iBOT parameters
        total = config.epochs * config.steps_per_epoch
        warmup = int(d.warmup_teacher_temp_epochs * config.steps_per_epoch)
        # Per iteration (DINOv2), unlike DINO v1's per-epoch teacher temperature.
        self.teacher_temp = cosine_schedule(
            d.teacher_temp, d.teacher_temp, total, warmup, start_warmup=d.warmup_teacher_temp
        )
        self.momentum = cosine_schedule(d.momentum_teacher, 1.0, total)
        self.mean, self.std = tuple(config.data.mean), tuple(config.data.std)
        self.koleo_groups = koleo_groups or jax.device_count()
        self.heads = ("dino_head", "ibot_head") if v.ibot_separate_head else ("dino_head",)

    def init(self, rng: jax.Array) -> tuple[Params, Params]:
        size, dim = self.config.crops.global_size, self.student.config.embed_dim
        images = jnp.zeros((1, size, size, 3), jnp.float32)
        params = {"backbone": self.student.init({"params": rng}, images)["params"]}
        for i, name in enumerate(self.heads):
            key = jax.random.fold_in(rng, i + 1)
            params[name] = self.head.init(key, jnp.zeros((1, dim)))["params"]
        k = self.config.dino.out_dim
        extra = {
            "teacher": jax.tree.map(jnp.copy, params),
            "center": jnp.zeros((1, k), jnp.float32),
            "patch_center": jnp.zeros((1, k), jnp.float32),
        }
        return params, extra

    def _backbone(self, module, params, images, rng=None, masks=None):
        x = normalize_images(images, self.mean, self.std, jnp.dtype(self.config.model.dtype))
        rngs = {"dropout": rng} if rng is not None else {}
        return module.apply(
            {"params": params["backbone"]}, x, train=rng is not None, masks=masks, rngs=rngs
        )

    def _dino_head(self, params, cls):
        """DINO head logits [2B, K] of backbone CLS tokens [2B, D]."""
        return self.head.apply({"params": params["dino_head"]}, cls)

    def _ibot_head(self, params, tokens):
        """iBOT head logits [..., K] of patch tokens [..., D] (the shared DINO head unless
        `ibot_separate_head`)."""
        return self.head.apply({"params": params[self.heads[-1]]}, tokens)

    def _cls_targets(self, extra, logits, temp):
        """Teacher probabilities [2B, K] of the CLS logits [2B, K]."""
        if self.config.dinov2.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(logits, temp)
        return softmax_center_teacher(logits, extra["center"], temp)

    def _patch_targets(self, extra, logits, valid, temp):
        """Teacher probabilities [..., K] of patch logits [..., K]; Sinkhorn-Knopp over the
        `valid` [...] rows only (B = their count over all devices, as DINOv2's
        `n_masked_patches_tensor`)."""
        if self.config.dinov2.centering == "sinkhorn_knopp":
            k = logits.shape[-1]
            q = sinkhorn_knopp(logits.reshape(-1, k), temp, valid=valid.reshape(-1))
            return q.reshape(logits.shape)
        center = extra["patch_center"].reshape((1,) * (logits.ndim - 1) + (-1,))
        return softmax_center_teacher(logits, center, temp)

    def _ibot(self, params, teacher, t_tokens, s_tokens, masks, extra, temp):
        """The iBOT term on the masked tokens of patch tokens [2B, N, D] (teacher, student) and
        masks [2B, N], sample-major: (loss, aux) with aux 'teacher_patch' [G, U, K] (buffer
        logits), 'masks' [G, U] (its valid rows) and 'overflow' (tokens beyond U; loss NaN)."""
        v = self.config.dinov2
        rows = masks.shape[0] // self.koleo_groups
        size = buffer_size(
            rows, masks.shape[1], v.mask_probability, tuple(v.mask_ratio), self.ibot_buffer
        )
        buffer = masked_buffer(masks, self.koleo_groups, size)
        t_logits = self._ibot_head(teacher, gather_tokens(t_tokens, buffer))  # [G, U, K]
        q = jax.lax.stop_gradient(self._patch_targets(extra, t_logits, buffer.valid, temp))
        s_logits = self._ibot_head(params, gather_tokens(s_tokens, buffer))  # [G, U, K]
        k = s_logits.shape[-1]
        loss = ibot_loss(
            s_logits.reshape(-1, k),
            q.reshape(-1, k),
            masks,
            self.config.dino.student_temp,
            masks_weight=buffer.weights.reshape(-1),
        )
        loss = jnp.where(buffer.overflow > 0, jnp.nan, loss)  # never a truncated loss
        return loss, {"teacher_patch": t_logits, "masks": buffer.valid, "overflow": buffer.overflow}

    def loss(self, params: Params, extra: Params, batch: Batch, rng, step):
        d, v = self.config.dino, self.config.dinov2
        # Sample-major through the backbone ([B*2] rows, the two crops of a sample together),
        # view-major [V, B, ...] where views pair up: never merge views into the batch-sharded
        # axis (see `sample_major`), so each device computes its own shard. The CLS targets and
        # centers do not depend on the row order; iBOT and KoLeo split the rows into G
        # batch-major groups, one per device shard (`pathfm.ssl.ibot_buffer.group_tokens`).
        global_crops = sample_major(batch["global_crops"])  # [B*2, G, G, 3]
        local_crops = sample_major(batch["local_crops"])  # [B*n, L, L, 3]
        masks = sample_major(batch["masks"])  # [B*2, N]
        n_global = 2

        teacher = jax.lax.stop_gradient(extra["teacher"])
        t_cls, t_aux = self._backbone(self.teacher, teacher, global_crops)
        t_cls_logits = self._dino_head(teacher, t_cls)
        temp = self.teacher_temp(step)
        q_cls = jax.lax.stop_gradient(self._cls_targets(extra, t_cls_logits, temp))
        q_views = view_major(q_cls, n_global)  # [2, B, K]

        s_cls, s_aux = self._backbone(
            self.student, params, global_crops, jax.random.fold_in(rng, 0), masks
        )
        s_views = view_major(self._dino_head(params, s_cls), n_global)  # [2, B, K]
        # Each student view meets the other teacher view: (s1, t2) + (s2, t1), batch means.
        dino = sum(
            dino_cross_entropy_sum(s_views[i][None], q_views[1 - i][None], d.student_temp)
            for i in range(n_global)
        )
        n_local = batch["local_crops"].shape[1]
        if n_local:
            l_cls, _ = self._backbone(self.student, params, local_crops, jax.random.fold_in(rng, 1))
            l_logits = self._dino_head(params, l_cls)
            dino += dino_cross_entropy_sum(view_major(l_logits, n_local), q_views, d.student_temp)
        dino = dino / (n_global + n_global * n_local)
        ibot, patch = self._ibot(
            params, teacher, t_aux["patch_tokens"], s_aux["patch_tokens"], masks, extra, temp
        )
        koleo = sum(per_device_koleo(c, self.koleo_groups) for c in view_major(s_cls, n_global))
        loss = v.dino_weight * dino + v.koleo_weight * koleo + v.ibot_weight * ibot
        metrics = {
            "dino_loss": dino,
            "ibot_loss": ibot,
            "koleo_loss": koleo,
            "teacher_temp": temp,
            "momentum": self.momentum(step),
            "ibot_overflow": patch["overflow"],
        }
        aux = {
            "metrics": metrics,
            "teacher_cls": t_cls_logits,
            "teacher_patch": patch["teacher_patch"],
            "masks": patch["masks"],
        }
        return loss, aux

    def update_extra(self, extra: Params, params: Params, aux: dict, step) -> Params:
        m = self.config.dino.center_momentum
        # The masked teacher tokens' mean: buffer logits [G, U, K] over valid rows [G, U].
        masks = aux["masks"][..., None].astype(jnp.float32)  # [G, U, 1]
        masked_mean = jnp.sum(aux["teacher_patch"] * masks, axis=(0, 1)) / jnp.maximum(
            jnp.sum(masks), 1.0
        )
        return {
            "teacher": ema(extra["teacher"], params, self.momentum(step)),
            "center": update_center(extra["center"], aux["teacher_cls"], m),
            "patch_center": extra["patch_center"] * m + masked_mean[None] * (1.0 - m),
        }

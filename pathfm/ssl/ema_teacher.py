"""What DINO and DINOv2 share: an EMA teacher, kept in `extra["teacher"]`, of the student's
backbone and heads (facebookresearch/dino `main_dino.py`, the momentum update after each step).

The teacher is the evaluation backbone (`embed`, `tokens`); either backbone can be read out or
replaced (export, `model.init_from`); the heads' last layer is frozen for
`dino.freeze_last_layer` epochs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pathfm.ssl.base import (
    Backbone,
    Params,
    check_backbone,
    ema_backbone,
    normalize_images,
    with_ema_backbone,
)


class EmaTeacherMethod:
    """The shared half of an EMA-teacher method. Subclasses set `teacher` (the teacher's
    VisionTransformer), `mean`, `std`, `config`, `frozen_pattern` (a regex over parameter
    paths: the heads' last layers) and their reference's `clip_rule` and `freeze_rule`."""

    backbones = ("teacher", "student")
    lr_warmup = "dino"  # np.linspace(0, base, W): DINO's utils.cosine_scheduler (DINOv2's too)
    frozen_pattern: str
    clip_rule: str
    freeze_rule: str

    def embed(self, params: Params, extra: Params, images: jax.Array) -> jax.Array:
        """The teacher's CLS embeddings [N, D] of uint8 images [N, H, W, 3]."""
        return self.tokens(params, extra, images)[0]

    def tokens(self, params: Params, extra: Params, images: jax.Array, which: str = "teacher"):
        """(CLS [N, D], patch tokens [N, h*w, D]) of the teacher or the student backbone."""
        backbone = self.backbone(params, extra, which).params
        x = normalize_images(images, self.mean, self.std, jnp.dtype(self.config.model.dtype))
        cls, aux = self.teacher.apply({"params": backbone}, x)
        return cls, aux["patch_tokens"]

    def backbone(self, params: Params, extra: Params, which: str = "teacher") -> Backbone:
        check_backbone(self, which)
        return Backbone(ema_backbone(params, extra, which), self.teacher.config)

    def with_backbone(self, params: Params, extra: Params, backbone: Params):
        return with_ema_backbone(params, extra, backbone)

    def frozen_rule(self) -> tuple[str | None, int]:
        steps = int(self.config.dino.freeze_last_layer * self.config.steps_per_epoch)
        return self.frozen_pattern, steps

"""The pre-training optimiser of a config: `pathfm.adamw` with DINO's schedules, DINOv2's
layer-wise lr decay and patch-embedding lr factor, and the method's frozen parameters. What
differs between the references, the method declares (`lr_warmup`, `clip_rule`, `freeze_rule`);
nothing here branches on the method."""

from __future__ import annotations

from typing import Any

import optax

from pathfm.adamw import adamw, lr_multipliers, regex_predicate
from pathfm.schedules import cosine_schedule, mae_cosine_schedule
from pathfm.ssl.base import backbone_config


def build_optimizer(config, method, params: Any) -> tuple[optax.GradientTransformation, dict]:
    """AdamW with DINO's schedules: lr = optim.lr * batch/256, warm-up then cosine; wd cosine.

    Returns (optimizer, {'lr': schedule, 'wd': schedule}) with schedules as functions of step.
    """
    o, spe = config.optim, config.steps_per_epoch
    total = config.epochs * spe
    if o.lr_scaling == "sqrt1024":  # DINOv2
        peak = o.lr * (config.batch_size / 1024.0) ** 0.5
    else:  # DINO, MAE
        peak = o.lr * config.batch_size / 256.0
    lr_schedule = mae_cosine_schedule if method.lr_warmup == "mae" else cosine_schedule
    lr = lr_schedule(peak, o.min_lr, total, int(o.warmup_epochs * spe))
    wd = cosine_schedule(o.weight_decay, o.weight_decay_end, total)
    pattern, frozen_steps = method.frozen_rule()
    lr_mults = None
    if o.layer_decay != 1.0 or o.patch_embed_lr_mult != 1.0:
        depth = backbone_config(config.model, 0.0).depth
        lr_mults = lr_multipliers(params, depth, o.layer_decay, o.patch_embed_lr_mult)
    optimizer = adamw(
        params,
        lr,
        wd,
        b1=o.b1,
        b2=o.b2,
        eps=o.eps,
        clip_grad=o.clip_grad,
        clip_rule=method.clip_rule,
        frozen=regex_predicate(pattern) if pattern else None,
        frozen_steps=frozen_steps,
        freeze_rule=method.freeze_rule,
        lr_mults=lr_mults,
    )
    return optimizer, {"lr": lr, "wd": wd}

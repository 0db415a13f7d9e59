"""MAE's reconstruction loss (facebookresearch/mae `models_mae.py` `forward_loss`), pure JAX."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pathfm.models.mae_ops import patchify


def mae_loss(
    images: jax.Array,
    pred: jax.Array,
    mask: jax.Array,
    patch_size: int,
    norm_pix_loss: bool = True,
) -> jax.Array:
    """MAE's `forward_loss`: per-patch pixel MSE averaged over MASKED patches only (float32).

    images [N, H, W, 3]; pred [N, L, p*p*3]; mask [N, L] (1 = removed). With `norm_pix_loss` the
    target is (x - mean) / sqrt(var + 1e-6) per patch, var unbiased (ddof=1) as torch's `var`.
    """
    target = patchify(images.astype(jnp.float32), patch_size)
    if norm_pix_loss:
        mean = target.mean(axis=-1, keepdims=True)
        var = target.var(axis=-1, keepdims=True, ddof=1)
        target = (target - mean) / jnp.sqrt(var + 1.0e-6)
    per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)  # [N, L]
    mask = mask.astype(jnp.float32)
    return jnp.sum(per_patch * mask) / jnp.sum(mask)

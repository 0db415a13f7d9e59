"""DINOv2 teacher targets: Sinkhorn-Knopp or softmax centering (facebookresearch/dinov2
dinov2/loss/dino_clstoken_loss.py DINOLoss.sinkhorn_knopp_teacher / softmax_center_teacher).

Shapes: teacher logits [B, K] (rows = samples or masked patch tokens, columns = prototypes); the
targets have the same shape and every valid row sums to 1. All arithmetic is float32 and the
targets carry no gradient. Inside `jax.shard_map` pass `axis_name` so that every sum, the max and
B run over all devices as DINOv2's all-reduces do; under plain `jax.jit` on a batch-sharded global
array leave it None (the sums are then global already).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pathfm.ssl.dino_loss import update_center

__all__ = ["sinkhorn_knopp", "softmax_center_teacher", "update_center"]


def _all_sum(x: jax.Array, axis_name: str | None) -> jax.Array:
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def sinkhorn_knopp(
    teacher_logits: jax.Array,
    teacher_temp: float | jax.Array,
    n_iterations: int = 3,
    axis_name: str | None = None,
    n_valid: int | jax.Array | None = None,
    valid: jax.Array | None = None,
) -> jax.Array:
    """DINOv2 `sinkhorn_knopp_teacher`: [B, K] logits -> [B, K] targets, rows summing to 1.

    Q = exp(t/T).T; Q /= sum(Q); n_iterations x (rows /= row sums, /= K; columns /= column sums,
    /= B); Q *= B; transpose. B is the global number of valid rows. `n_valid` (the first n_valid
    local rows are real, DINOv2's `[:n_masked_patches]` buffer convention) or `valid` (bool [B])
    drop padded rows from every sum and from B, as DINOv2's iBOT Sinkhorn does with
    B = all-reduced n_masked_patches; padded rows come back as zeros.
    The official code overflows in float32 once t/T > 88.7 (NaN everywhere); this does not.
    """
    t = jax.lax.stop_gradient(teacher_logits).astype(jnp.float32)
    n_local, n_protos = t.shape
    keep = jnp.ones((n_local,), bool) if valid is None else valid.astype(bool)
    if n_valid is not None:
        keep = keep & (jnp.arange(n_local) < n_valid)
    keep = keep[:, None]  # [B, 1]

    # Per-prototype max over the valid rows of all devices: exact, since the first prototype
    # normalisation cancels any per-prototype factor (stronger than one global max; DINOv2's
    # sinkhorn_knopp_teacher subtracts none); it keeps every prototype's largest entry at
    # exp(0) = 1 instead of over/underflowing.
    t_max = jnp.max(jnp.where(keep, t, -jnp.inf), axis=0, keepdims=True)  # [1, K]
    if axis_name is not None:
        t_max = jax.lax.pmax(t_max, axis_name)
    t_max = jnp.where(jnp.isfinite(t_max), t_max, 0.0)  # all rows padded: no valid entry anyway
    q = jnp.where(keep, jnp.exp((t - t_max) / teacher_temp), 0.0)  # [B, K] = Q.T of the paper

    b_global = _all_sum(jnp.sum(keep, dtype=jnp.float32), axis_name)
    q = q / _all_sum(jnp.sum(q), axis_name)
    for _ in range(n_iterations):
        # Paper rows (prototypes, our columns): total weight per prototype 1/K, over all devices.
        q = q / _all_sum(jnp.sum(q, axis=0, keepdims=True), axis_name)
        q = q / n_protos
        # Paper columns (samples, our rows): total weight per sample 1/B, local sums only.
        q = q / jnp.where(keep, jnp.sum(q, axis=1, keepdims=True), 1.0)
        q = q / b_global
    return jnp.where(keep, q * b_global, 0.0)


def softmax_center_teacher(
    teacher_logits: jax.Array, center: jax.Array, teacher_temp: float | jax.Array
) -> jax.Array:
    """DINOv2 `softmax_center_teacher`: softmax((t - center) / T) over the last axis, float32.

    teacher_logits: [..., K] (CLS [B, K] or patch tokens [B, N, K]); center broadcasts ([1, K] or
    [1, 1, K]). Update the center with `update_center` (EMA momentum 0.9 of the raw logits' mean).
    """
    t = jax.lax.stop_gradient(teacher_logits).astype(jnp.float32)
    return jax.nn.softmax((t - center) / teacher_temp, axis=-1)

"""The DINO (v1) self-distillation loss and teacher centering (Caron et al. 2021, section 3.1;
facebookresearch/dino main_dino.py DINOLoss).

Crop order everywhere is crop-major:
[global1 batch, global2 batch, local1 batch, ..., localN batch].
All arithmetic is float32. Means over the batch are global-view means: under `jax.jit` with a
batch-sharded input they run over the whole global batch (all devices), as DINO's all-reduce does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dino_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    center: jax.Array,
    teacher_temp: float | jax.Array,
    student_temp: float = 0.1,
    n_global: int = 2,
) -> jax.Array:
    """Cross-entropy between centred, sharpened teacher probs and student log-probs.

    student_logits: [n_crops * B, K] or [n_crops, B, K]; teacher_logits: [n_global * B, K] or
    [n_global, B, K] (global crops only); center: [1, K]. Sums over pairs (teacher view i,
    student view v != i) of the batch mean of -sum_k q log p, divided by the number of pairs
    (2 * n_crops - 2 with two global crops). Pass batch-sharded logits as [V, B, K]: merging
    the views into a batch-sharded axis would gather them onto every device.
    """
    k = student_logits.shape[-1]
    teacher_logits = teacher_logits.reshape(n_global, -1, k)  # [T, B, K]
    student_logits = student_logits.reshape(-1, teacher_logits.shape[1], k)  # [V, B, K]
    n_crops = student_logits.shape[0]
    student_logp = jax.nn.log_softmax(student_logits.astype(jnp.float32) / student_temp, axis=-1)
    teacher = (teacher_logits.astype(jnp.float32) - center) / teacher_temp
    teacher_probs = jax.lax.stop_gradient(jax.nn.softmax(teacher, axis=-1))

    # cross[i, v] = mean_b(-sum_k q_i log p_v): every teacher view against every student view.
    cross = -jnp.einsum("tbk,vbk->tv", teacher_probs, student_logp) / student_logp.shape[1]
    same_view = jnp.eye(n_global, n_crops, dtype=bool)
    n_pairs = n_global * n_crops - n_global
    return jnp.sum(jnp.where(same_view, 0.0, cross)) / n_pairs


def update_center(center: jax.Array, teacher_logits: jax.Array, momentum: float = 0.9) -> jax.Array:
    """EMA of the center [1, K] towards the batch mean of the raw teacher logits [n_global*B, K]
    (or [n_global, B, K])."""
    axes = tuple(range(teacher_logits.ndim - 1))
    batch_center = jnp.mean(teacher_logits.astype(jnp.float32), axis=axes).reshape(1, -1)
    return center * momentum + batch_center * (1.0 - momentum)

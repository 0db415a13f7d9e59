"""DINOv2 CLS-token (DINO) and masked-patch (iBOT) cross-entropies (Oquab et al. 2023, section 4;
facebookresearch/dinov2 dinov2/loss/dino_clstoken_loss.py DINOLoss, ibot_patch_loss.py).

Teacher targets come from `pathfm.ssl.sinkhorn` (Sinkhorn-Knopp or softmax centering) and carry no
gradient. All arithmetic is float32.

How DINOv2 (`ssl_meta_arch.py`) builds the CLS pairs with `dino_cross_entropy_sum`, n_g = 2:
- teacher global targets [2B, K] are chunked per crop and swapped, [t(g2), t(g1)], so that student
  crop g1 meets teacher crop g2 and vice versa (never the same view);
- global term: `dino_cross_entropy_sum(s_global[None], swapped[None]) * 2` with s_global [2B, K]
  (one [2B] "crop" averaged over 2B, times loss_scales = 2 = the two pairs);
- local term: `dino_cross_entropy_sum(s_local [n_local, B, K], t_global [2, B, K])` (all pairs);
- both are divided outside by n_terms = n_g * (n_g - 1) + n_g * n_local.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _token_cross_entropy(student: jax.Array, teacher_probs: jax.Array, temp: float) -> jax.Array:
    """sum_k t * log_softmax(s / temp) over the last axis (the negative cross-entropy)."""
    logp = jax.nn.log_softmax(student.astype(jnp.float32) / temp, axis=-1)
    return jnp.sum(jax.lax.stop_gradient(teacher_probs).astype(jnp.float32) * logp, axis=-1)


def dino_cross_entropy_sum(
    student_crops: jax.Array, teacher_probs: jax.Array, student_temp: float = 0.1
) -> jax.Array:
    """DINOv2 `DINOLoss.forward`: sum over (s, t) pairs of mean_b(-sum_k t log softmax(s/T)).

    student_crops: [S, B, K] logits; teacher_probs: [T, B, K] targets. Every student crop meets
    every teacher crop; the caller picks the pairs (see module docstring) and divides by n_terms.
    """
    logp = jax.nn.log_softmax(student_crops.astype(jnp.float32) / student_temp, axis=-1)
    t = jax.lax.stop_gradient(teacher_probs).astype(jnp.float32)
    return -jnp.einsum("tbk,sbk->", t, logp) / student_crops.shape[1]


def ibot_mask_weights(masks: jax.Array) -> jax.Array:
    """DINOv2 collate `masks_weight` in dense form: [2B, N] mask / (masked count of its image)."""
    m = masks.astype(jnp.float32)
    return m / jnp.maximum(jnp.sum(m, axis=-1, keepdims=True), 1.0)


def ibot_loss(
    student_masked: jax.Array,
    teacher_probs_masked: jax.Array,
    masks: jax.Array,
    student_temp: float = 0.1,
    masks_weight: jax.Array | None = None,
) -> jax.Array:
    """DINOv2 `iBOTPatchLoss.forward_masked`: -sum_i w_i sum_k t log softmax(s/T) / 2B.

    student_masked, teacher_probs_masked: [M, K], the masked tokens of masks [2B, N] in row-major
    order; w_i = 1 / (masked tokens of its image), so each image averages over its masked tokens
    and unmasked images count 0 in the mean over 2B. masks_weight [M] (DINOv2's collate output,
    zero on padded rows) makes it jit-able; without it the weights are gathered from a concrete
    mask on the host. `DinoV2.loss` passes the per-device buffers of `pathfm.ssl.ibot_buffer`.
    """
    if masks_weight is None:
        dense = np.asarray(ibot_mask_weights(jnp.asarray(masks)))
        masks_weight = jnp.asarray(dense[np.asarray(masks, bool)])
    per_token = _token_cross_entropy(student_masked, teacher_probs_masked, student_temp)
    return -jnp.sum(per_token * masks_weight) / masks.shape[0]


def ibot_loss_dense(
    student_tokens: jax.Array,
    teacher_probs: jax.Array,
    masks: jax.Array,
    student_temp: float = 0.1,
) -> jax.Array:
    """`ibot_loss` on all patch tokens, static shapes: [2B, N, K] logits/targets, masks [2B, N].

    Unmasked positions are ignored (even non-finite values; zero gradient there); equal to the
    gathered version, which training uses (the heads on every token cost ~10% of a ViT-L/14
    step; this stays as its reference in tests). Build teacher_probs with
    `sinkhorn_knopp(t.reshape(-1, K), T, valid=masks.reshape(-1))` so that B = the number of
    masked tokens, as in DINOv2.
    """
    keep = masks.astype(bool)[..., None]  # zero junk before use: no NaN in values or gradients
    student = jnp.where(keep, student_tokens.astype(jnp.float32), 0.0)
    teacher = jnp.where(keep, jax.lax.stop_gradient(teacher_probs).astype(jnp.float32), 0.0)
    per_token = _token_cross_entropy(student, teacher, student_temp)
    return -jnp.sum(per_token * ibot_mask_weights(masks)) / masks.shape[0]

"""The KoLeo (Kozachenko-Leonenko) uniformity regulariser of DINOv2 (Sablayrolles et al. 2019;
facebookresearch/dinov2 dinov2/loss/koleo_loss.py KoLeoLoss).

DINOv2 applies it to the backbone CLS token (before the head) of each global crop separately, on
the per-device batch: inside `jax.shard_map` call it on the local block; under plain `jax.jit` on a
batch-sharded array reshape to [n_devices, B_local, D] and vmap it to stay faithful.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def koleo_loss(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    """DINOv2 `KoLeoLoss.forward`: -mean_i log(||x_i - x_nn(i) + eps|| + eps) on normalized x.

    x: [B, D] (any float dtype; computed in float32). x = x / max(||x||, eps) (F.normalize); the
    nearest neighbour is the argmax of x x^T with the diagonal excluded (DINOv2 fills it with -1,
    the minimum of a cosine, so for B >= 2 this is the same neighbour up to exact ties); the
    distance is torch's PairwiseDistance, ||a - b + eps||_2. Duplicate rows give the finite value
    -log(eps * sqrt(D) + eps) for each duplicate. B == 1 has no neighbour: defined as 0.0 (DINOv2
    would pair the row with itself and return the constant -log(eps * (sqrt(D) + 1)), which has
    zero gradient, so only the logged value differs).
    """
    n = x.shape[0]
    if n < 2:
        return jnp.zeros((), jnp.float32)
    x = x.astype(jnp.float32)
    # F.normalize: x * r with r = 1 / max(||x||, eps) (finite gradient for a zero row).
    r = jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))  # [B, 1]
    dots = jax.lax.stop_gradient((x * r) @ (x * r).T)
    nn = jnp.argmax(jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, dots), axis=1)
    # x r - x_nn r_nn, rearranged so that a duplicate row gives exactly 0 under jit too: written
    # directly, XLA may fuse one product into an FMA and not the other, leaving an ulp of noise
    # that moves log(d + eps) (d ~ eps) by O(1).
    diff = (x - x[nn]) * r + x[nn] * (r - r[nn])
    distances = jnp.linalg.norm(diff + eps, axis=-1)
    return -jnp.mean(jnp.log(distances + eps))

"""Projection heads for self-distillation (DINO / DINOv2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from pathfm.models.vit import TORCH_DEFAULT_INIT, trunc_normal_02


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps), as torch.nn.functional.normalize."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, eps)


class WeightNormLinear(nn.Module):
    """Linear without bias, weight = g * v / ||v|| per output unit (torch weight_norm, dim=0).

    `weight_v` is [in, out]; the norm runs over `in`. With `trainable_gain=False` g is fixed to 1
    (DINO's `norm_last_layer=True`) and no `weight_g` parameter exists.
    """

    features: int
    trainable_gain: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [..., in] -> [..., features]
        v = self.param("weight_v", TORCH_DEFAULT_INIT, (x.shape[-1], self.features))
        w = v / jnp.sqrt(jnp.sum(jnp.square(v), axis=0, keepdims=True))
        if self.trainable_gain:
            w = w * self.param("weight_g", nn.initializers.ones, (1, self.features))
        return jnp.dot(x.astype(jnp.float32), w)


class DINOHead(nn.Module):
    """MLP (in -> hidden -> hidden -> bottleneck, GELU) -> L2 normalise -> weight-normed prototypes.

    x: [B, D] -> logits [B, out_dim] in float32. Hidden layers may run in bf16 (`dtype`); the
    normalisation and the last layer are float32.
    """

    out_dim: int
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    nlayers: int = 3
    norm_last_layer: bool = True
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = lambda n, name: nn.Dense(
            n, dtype=jnp.dtype(self.dtype), kernel_init=trunc_normal_02, name=name
        )
        dims = [self.hidden_dim] * (self.nlayers - 1) + [self.bottleneck_dim]
        for i, dim in enumerate(dims):
            x = dense(dim, f"mlp_{i}")(x)
            if i < len(dims) - 1:
                x = nn.gelu(x, approximate=False)
        x = l2_normalize(x.astype(jnp.float32))
        return WeightNormLinear(self.out_dim, not self.norm_last_layer, name="last_layer")(x)

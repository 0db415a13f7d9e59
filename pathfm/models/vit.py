"""Vision Transformer in Flax Linen whose weights map 1:1 onto timm's `VisionTransformer`.

Parameter tree (timm key in brackets):
  patch_embed/proj/{kernel [p,p,3,D], bias}        [patch_embed.proj.weight [D,3,p,p], .bias]
  cls_token [1,1,D]                                  [cls_token]
  pos_embed [1,1+N,D] (CLS row first)                [pos_embed]
  blocks_{i}/norm1, attn/qkv, attn/proj, norm2, mlp/fc1, mlp/fc2   [blocks.{i}.*]
  norm/{scale, bias}                                 [norm.weight, norm.bias]
Dense kernels are [in, out] (timm's Linear weights transposed). The qkv output is laid out
(3, heads, head_dim) as in timm. LayerNorm eps 1e-6, exact (erf) GELU.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

# (embed_dim, depth, num_heads) of the standard sizes; g is DINOv2's ViT-g (1536 wide, 40 deep).
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "giant": (1536, 40, 24),
}
SIZE_ALIASES = {"T": "tiny", "S": "small", "B": "base", "L": "large", "g": "giant"}

trunc_normal_02 = nn.initializers.truncated_normal(stddev=0.02)
LN_EPS = 1e-6
# PyTorch's default Linear/Conv weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
TORCH_DEFAULT_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Architecture of a ViT backbone."""

    patch_size: int = 16
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    img_size: int = 224  # size the learned position embedding is created for
    qkv_bias: bool = True
    drop_path_rate: float = 0.0
    dtype: str = "float32"  # matmul/activation dtype; parameters stay float32

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size


def vit_config(size: str, patch_size: int, **overrides) -> ViTConfig:
    """A ViTConfig for a named size ('S', 'small', 'B', ...) and patch size."""
    name = SIZE_ALIASES.get(size, size)
    if name not in VIT_SIZES:
        known = ", ".join(list(VIT_SIZES) + list(SIZE_ALIASES))
        raise ValueError(f"unknown ViT size {size!r}; use one of {known}")
    embed_dim, depth, num_heads = VIT_SIZES[name]
    base = dict(patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads)
    base.update(overrides)
    return ViTConfig(**base)


def resample_pos_embed(pos_embed: jax.Array, new_grid: tuple[int, int]) -> jax.Array:
    """Bicubically resample patch position embeddings [1, 1+h*w, D] (CLS first) to a new grid.

    Uses antialiased Keys-cubic (a=-0.5) resampling, the kernel of timm's `resample_abs_pos_embed`
    (bicubic, antialias=True); the CLS row is kept as is.
    """
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    old = round(np.sqrt(patch_pos.shape[1]))
    if (old, old) == tuple(new_grid):
        return pos_embed
    dim = patch_pos.shape[-1]
    grid = patch_pos.reshape(1, old, old, dim).astype(jnp.float32)
    grid = jax.image.resize(grid, (1, *new_grid, dim), method="bicubic", antialias=True)
    return jnp.concatenate([cls_pos, grid.reshape(1, -1, dim).astype(pos_embed.dtype)], axis=1)


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample, scale kept ones by 1/(1-rate)."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(
            self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1)
        )
        return jnp.where(mask, x / keep, jnp.zeros_like(x))


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection; softmax in float32."""

    dim: int
    num_heads: int
    qkv_bias: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # x: [B, N, D]
        batch, tokens, _ = x.shape
        head_dim = self.dim // self.num_heads
        dense = lambda n, name, bias=True: nn.Dense(
            n, use_bias=bias, dtype=self.dtype, kernel_init=trunc_normal_02, name=name
        )
        qkv = dense(3 * self.dim, "qkv", self.qkv_bias)(x)
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, H, hd]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (head_dim**-0.5)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, tokens, self.dim)
        return dense(self.dim, "proj")(out)


class Mlp(nn.Module):
    """fc1 - exact GELU - fc2."""

    hidden_dim: int
    out_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(self.hidden_dim, dtype=self.dtype, kernel_init=trunc_normal_02, name="fc1")(x)
        x = nn.gelu(x, approximate=False)
        return nn.Dense(self.out_dim, dtype=self.dtype, kernel_init=trunc_normal_02, name="fc2")(x)


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), x + DropPath(MLP(LN(x)))."""

    dim: int
    num_heads: int
    mlp_ratio: float
    qkv_bias: bool
    drop_path: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        norm = lambda name: nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, name=name)
        drop = DropPath(self.drop_path)
        y = Attention(self.dim, self.num_heads, self.qkv_bias, self.dtype, name="attn")(
            norm("norm1")(x).astype(self.dtype)
        )
        x = x + drop(y.astype(x.dtype), deterministic)
        hidden = int(self.dim * self.mlp_ratio)
        y = Mlp(hidden, self.dim, self.dtype, name="mlp")(norm("norm2")(x).astype(self.dtype))
        return x + drop(y.astype(x.dtype), deterministic)


class VisionTransformer(nn.Module):
    """ViT backbone: images [B, H, W, 3] -> (CLS embedding [B, D], {'patch_tokens': [B, N, D]}).

    H and W must be multiples of the patch size; other sizes than `img_size` interpolate the
    position embedding. The residual stream is float32; matmuls run in `config.dtype`.
    """

    config: ViTConfig

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        batch, height, width, _ = images.shape
        p = cfg.patch_size
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not a multiple of patch size {p}")
        x = _PatchEmbed(cfg.embed_dim, p, dtype, name="patch_embed")(images)
        grid = (height // p, width // p)
        x = x.reshape(batch, grid[0] * grid[1], cfg.embed_dim).astype(jnp.float32)

        cls_token = self.param("cls_token", trunc_normal_02, (1, 1, cfg.embed_dim))
        num_patches = cfg.grid_size**2
        pos_embed = self.param("pos_embed", trunc_normal_02, (1, 1 + num_patches, cfg.embed_dim))
        x = jnp.concatenate([jnp.broadcast_to(cls_token, (batch, 1, cfg.embed_dim)), x], axis=1)
        x = x + resample_pos_embed(pos_embed, grid)

        rates = np.linspace(0.0, cfg.drop_path_rate, cfg.depth)
        for i in range(cfg.depth):
            x = Block(
                cfg.embed_dim,
                cfg.num_heads,
                cfg.mlp_ratio,
                cfg.qkv_bias,
                float(rates[i]),
                dtype,
                name=f"blocks_{i}",
            )(x, deterministic=not train)
        x = nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, name="norm")(x)
        return x[:, 0], {"patch_tokens": x[:, 1:]}


class _PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> D channels (timm's `patch_embed.proj` Conv2d)."""

    embed_dim: int
    patch_size: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:  # [B, H, W, 3] -> [B, H/p, W/p, D]
        p = self.patch_size
        return nn.Conv(
            self.embed_dim,
            (p, p),
            strides=(p, p),
            padding="VALID",
            dtype=self.dtype,
            kernel_init=TORCH_DEFAULT_INIT,
            name="proj",
        )(images.astype(self.dtype))

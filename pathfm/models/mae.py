"""Masked autoencoder (facebookresearch/mae `models_mae.MaskedAutoencoderViT`) in Flax Linen.

Parameter tree (reference key in brackets; the encoder subtree has pathfm ViT / timm names, so
`params['encoder']` plus a `pos_embed` of the fixed sin-cos values loads into `VisionTransformer`):
  encoder/patch_embed/proj/{kernel [p,p,3,D], bias}   [patch_embed.proj.weight [D,3,p,p], .bias]
  encoder/cls_token [1,1,D]                           [cls_token]
  encoder/blocks_{i}/..., encoder/norm                [blocks.{i}.*, norm.*]
  decoder/decoder_embed, decoder/mask_token [1,1,E]   [decoder_embed.*, mask_token]
  decoder/decoder_blocks_{i}/..., decoder/decoder_norm, decoder/decoder_pred
Both position embeddings are fixed 2D sin-cos constants (the reference's requires_grad=False
`pos_embed` / `decoder_pos_embed`, CLS row zeros), not parameters. Pre-training runs at
`img_size` as the reference does; the encoder at other sizes resamples its `img_size` table (see
MAEEncoder), exactly as the exported timm model does. Use `init_mae_params` for the reference
init (xavier_uniform Linear weights).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from pathfm.models.mae_ops import random_masking, unshuffle
from pathfm.models.pos_interp import resample_pos_embed
from pathfm.models.sincos import sincos_2d_pos_embed
from pathfm.models.vit import LN_EPS, PatchEmbed, ViTConfig, apply_blocks, block_class

xavier_uniform = nn.initializers.xavier_uniform()
normal_02 = nn.initializers.normal(stddev=0.02)


def _fixed_pos_embed(dim: int, grid: tuple[int, int]) -> jax.Array:
    """The reference's sin-cos buffer [1, 1 + h*w, dim] (CLS row zeros) as a float32 constant."""
    return jnp.asarray(sincos_2d_pos_embed(dim, grid, cls_token=True), jnp.float32)[None]


def _mae_patch_embed(dim: int, p: int, channels: int, dtype) -> PatchEmbed:
    """Conv2d `patch_embed.proj` with MAE's init: xavier_uniform on its [D, C*p*p] view and
    torch's default Conv2d bias init (kept by MAE)."""
    bound = 1.0 / np.sqrt(p * p * channels)
    return PatchEmbed(
        dim,
        p,
        dtype,
        kernel_init=nn.initializers.variance_scaling(
            1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=-1
        ),
        bias_init=lambda key, shape, dtype=jnp.float32: jax.random.uniform(
            key, shape, dtype, -bound, bound
        ),
        name="patch_embed",
    )


class MAEEncoder(nn.Module):
    """MAE `forward_encoder`: images [N, H, W, 3] -> (latent [N, 1 + L_keep, D], mask, ids_restore).

    Patch embed, + fixed sin-cos pos embed (built for `img_size`, resampled as `pos_interp` says
    on other grids; the reference only runs at `img_size`) BEFORE masking, random masking (keep
    int(L*(1-ratio))), CLS token (+ its zero pos row), ViT blocks (qkv bias, LN eps 1e-6, exact
    GELU), final norm.
    """

    config: ViTConfig

    @nn.compact
    def __call__(
        self,
        images: jax.Array,
        key: jax.Array | None,
        mask_ratio: float = 0.75,
        *,
        train: bool = False,
        noise: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        batch, height, width, _ = images.shape
        p, dim = cfg.patch_size, cfg.embed_dim
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not a multiple of patch size {p}")
        grid = (height // p, width // p)
        x = _mae_patch_embed(dim, p, images.shape[-1], dtype)(images)
        x = x.reshape(batch, grid[0] * grid[1], dim).astype(jnp.float32)
        pos = _fixed_pos_embed(dim, (cfg.grid_size, cfg.grid_size))
        # Another grid resamples the img_size table as the exported timm model will
        # (dynamic_img_size), not a new sin-cos table: one behaviour on both sides of the export.
        pos = resample_pos_embed(pos, grid, 1, cfg.pos_interp)
        x = x + pos[:, 1:]
        x, mask, ids_restore = random_masking(x, mask_ratio, key, noise=noise)

        cls_token = self.param("cls_token", normal_02, (1, 1, dim)) + pos[:, :1]
        x = jnp.concatenate([jnp.broadcast_to(cls_token, (batch, 1, dim)), x], axis=1)
        x = apply_blocks(x, cfg, train)
        x = nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, name="norm")(x)
        return x, mask, ids_restore


class MAEDecoder(nn.Module):
    """MAE `forward_decoder`: latent [N, 1+L_keep, D], ids_restore [N, L] -> pred [N, L, p*p*C].

    Linear to `embed_dim`, mask tokens appended and unshuffled with ids_restore, + fixed sin-cos
    decoder pos embed, `depth` blocks, norm, Linear to p*p*C; the CLS position is dropped.
    """

    patch_size: int
    embed_dim: int = 512
    depth: int = 8
    num_heads: int = 16
    mlp_ratio: float = 4.0
    channels: int = 3
    qkv_bias: bool = True
    dtype: str = "float32"
    attention: str = "explicit"  # kernel and rematerialisation as the encoder's (ViTConfig)
    remat: str = "none"

    @nn.compact
    def __call__(
        self,
        latent: jax.Array,
        ids_restore: jax.Array,
        grid: tuple[int, int],
        *,
        train: bool = False,
    ) -> jax.Array:
        dtype = jnp.dtype(self.dtype)
        dim = self.embed_dim
        dense = lambda n, name: nn.Dense(n, dtype=dtype, kernel_init=xavier_uniform, name=name)
        x = dense(dim, "decoder_embed")(latent.astype(dtype)).astype(jnp.float32)
        batch, length = ids_restore.shape
        mask_token = self.param("mask_token", normal_02, (1, 1, dim))
        fill = jnp.broadcast_to(mask_token, (batch, length + 1 - x.shape[1], dim))
        x = jnp.concatenate([x[:, :1], unshuffle(x[:, 1:], fill, ids_restore)], axis=1)
        x = x + _fixed_pos_embed(dim, grid)
        block = block_class(self.remat)
        for i in range(self.depth):
            x = block(
                dim,
                self.num_heads,
                self.mlp_ratio,
                self.qkv_bias,
                0.0,
                dtype,
                attention=self.attention,
                name=f"decoder_blocks_{i}",
            )(x, not train)
        x = nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, name="decoder_norm")(x)
        pred = dense(self.patch_size**2 * self.channels, "decoder_pred")(x.astype(dtype))
        return pred[:, 1:].astype(jnp.float32)


class MAE(nn.Module):
    """MaskedAutoencoderViT: (images [N, H, W, 3], key, mask_ratio) -> (pred [N, L, p*p*3], mask).

    `mask_ratio` must be a Python float (static under jit); mask [N, L] is 1 on removed patches.
    Reference decoder defaults: width 512, depth 8, 16 heads, the encoder's mlp_ratio.
    """

    config: ViTConfig
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16

    @nn.compact
    def __call__(
        self,
        images: jax.Array,
        key: jax.Array | None,
        mask_ratio: float = 0.75,
        *,
        train: bool = False,
        noise: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        latent, mask, ids_restore = MAEEncoder(cfg, name="encoder")(
            images, key, mask_ratio, train=train, noise=noise
        )
        grid = (images.shape[1] // cfg.patch_size, images.shape[2] // cfg.patch_size)
        pred = MAEDecoder(
            cfg.patch_size,
            self.decoder_embed_dim,
            self.decoder_depth,
            self.decoder_num_heads,
            cfg.mlp_ratio,
            images.shape[-1],
            cfg.qkv_bias,
            cfg.dtype,
            cfg.attention,
            cfg.remat,
            name="decoder",
        )(latent, ids_restore, grid, train=train)
        return pred, mask


def xavier_block_kernels(params: dict, key: jax.Array) -> dict:
    """Redraw each 2-D `kernel` in (decoder_)blocks_* with xavier_uniform (MAE `_init_weights`).

    pathfm's shared `Block` initialises its Linear weights trunc_normal(0.02) (timm's ViT); MAE
    uses xavier_uniform for every nn.Linear. Biases are already zeros and LayerNorms (1, 0).
    """
    flat = traverse_util.flatten_dict(params)
    out = {}
    for i, (path, value) in enumerate(sorted(flat.items())):
        in_block = any(str(part).startswith(("blocks_", "decoder_blocks_")) for part in path)
        if in_block and path[-1] == "kernel" and value.ndim == 2:
            value = xavier_uniform(jax.random.fold_in(key, i), value.shape, value.dtype)
        out[path] = value
    return traverse_util.unflatten_dict(out)


def init_mae_params(
    model: MAE, key: jax.Array, images: jax.Array, mask_ratio: float = 0.75
) -> dict:
    """Jitted `model.init` + the reference's xavier_uniform block weights; returns `params`."""

    def init(key: jax.Array, images: jax.Array) -> dict:
        k_params, k_mask, k_xavier = jax.random.split(key, 3)
        params = model.init({"params": k_params}, images, k_mask, mask_ratio)["params"]
        return xavier_block_kernels(params, k_xavier)

    return jax.jit(init)(key, images)

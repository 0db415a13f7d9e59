"""Vision Transformer in Flax Linen whose weights map 1:1 onto timm's `VisionTransformer`.

Parameter tree (timm key in brackets):
  patch_embed/proj/{kernel [p,p,3,D], bias}        [patch_embed.proj.weight [D,3,p,p], .bias]
  cls_token [1,1,D]                                  [cls_token]
  reg_token [1,R,D] (only if num_registers > 0)      [reg_token]
  pos_embed [1,1+N,D] (CLS row first), or [1,N,D] with no_embed_class   [pos_embed]
  mask_token [1,D] (only if use_mask_token; DINOv2's `mask_token`, not in timm)
  blocks_{i}/norm1, attn/qkv, attn/proj, norm2, mlp/fc1, mlp/fc2   [blocks.{i}.*]
  blocks_{i}/ls1/gamma, ls2/gamma [D] (only if layer_scale_init > 0)  [blocks.{i}.ls1.gamma, ...]
  norm/{scale, bias}                                 [norm.weight, norm.bias]
Dense kernels are [in, out] (timm's Linear weights transposed). The qkv output is laid out
(3, heads, head_dim) as in timm. LayerNorm eps 1e-6, exact (erf) GELU.

Token order is CLS, registers, patches. Registers never get a position embedding. With
no_embed_class=True (timm `vit_*_reg4_dinov2`) CLS gets none either and the layout is timm's 1:1.
With no_embed_class=False and registers it is DINOv2's own layout (pos_embed keeps a CLS row,
registers are inserted after the position embedding is added), which timm's `_convert_dinov2` maps
exactly onto timm no_embed_class=True: cls_token += pos_embed[:, :1]; pos_embed = pos_embed[:, 1:].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from pathfm.models.pos_interp import POS_INTERP_MODES, resample_pos_embed

# (embed_dim, depth, num_heads) of the standard sizes; g is DINOv2's ViT-g (1536 wide, 40 deep).
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "giant": (1536, 40, 24),
}
SIZE_ALIASES = {"T": "tiny", "S": "small", "B": "base", "L": "large", "g": "giant"}
FFN_TYPES = ("mlp", "swiglu")
# "explicit": einsum-softmax-einsum written out here; "dot_product": `jax.nn.dot_product_attention`
# with the backend's choice of kernel; "cudnn": its fused cuDNN kernel (NVIDIA GPUs, bf16 only).
ATTENTION_TYPES = ("explicit", "dot_product", "cudnn")
# Rematerialisation of each transformer block in the backward pass: "block" saves only the
# block's input and recomputes everything else; "block_dots" also saves the outputs of its
# weight matmuls (qkv, proj, fc1, fc2) and recomputes attention, norms and activations.
REMAT_TYPES = ("none", "block", "block_dots")

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
    layer_scale_init: float = 0.0  # > 0: LayerScale gammas ls1/ls2 start at this (DINOv2: 1e-5)
    num_registers: int = 0  # register tokens after CLS (DINOv2-reg: 4); no position embedding
    no_embed_class: bool = False  # True: pos_embed covers only patches [1, N, D] (timm semantics)
    ffn: str = "mlp"  # "mlp" (fc1-GELU-fc2) or "swiglu" (timm SwiGLUPacked)
    mlp_hidden: int = 0  # FFN inner width; 0: int(D*mlp_ratio), for swiglu DINOv2's 2/3 rule of it
    use_mask_token: bool = False  # create the iBOT `mask_token` [1, D] so `masks=` can be passed
    drop_path_uniform: bool = False  # True: every block drops at drop_path_rate (DINOv2 default)
    attention: str = "explicit"  # one of ATTENTION_TYPES; the same numerics up to rounding
    remat: str = "none"  # one of REMAT_TYPES; the same numerics, less activation memory
    pos_interp: str = "timm"  # POS_INTERP_MODES: how pos_embed reaches other grids (pos_interp.py)

    def __post_init__(self) -> None:
        if self.ffn not in FFN_TYPES:
            raise ValueError(f"unknown ffn {self.ffn!r}; use one of {FFN_TYPES}")
        if self.attention not in ATTENTION_TYPES:
            raise ValueError(f"unknown attention {self.attention!r}; use one of {ATTENTION_TYPES}")
        if self.remat not in REMAT_TYPES:
            raise ValueError(f"unknown remat {self.remat!r}; use one of {REMAT_TYPES}")
        if self.pos_interp not in POS_INTERP_MODES:
            modes = POS_INTERP_MODES
            raise ValueError(f"unknown pos_interp {self.pos_interp!r}; use one of {modes}")
        if self.num_registers < 0 or self.layer_scale_init < 0 or self.mlp_hidden < 0:
            raise ValueError("num_registers, layer_scale_init and mlp_hidden must be >= 0")

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: CLS plus registers."""
        return 1 + self.num_registers


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


def swiglu_hidden_dim(dim: int, mlp_ratio: float = 4.0) -> int:
    """DINOv2's SwiGLU inner width: (int(int(dim*mlp_ratio) * 2/3) + 7) // 8 * 8 (g/14: 4096)."""
    return (int(int(dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8


def ffn_hidden_dim(dim: int, mlp_ratio: float, ffn: str = "mlp", mlp_hidden: int = 0) -> int:
    """Inner FFN width (fc2's input): `mlp_hidden` if set, else the mlp or SwiGLU default."""
    if mlp_hidden:
        return mlp_hidden
    return swiglu_hidden_dim(dim, mlp_ratio) if ffn == "swiglu" else int(dim * mlp_ratio)


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


class LayerScale(nn.Module):
    """Per-channel scale x * gamma, gamma [D] initialised to `init_value` (timm `LayerScale`)."""

    dim: int
    init_value: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [..., D]
        gamma = self.param("gamma", nn.initializers.constant(self.init_value), (self.dim,))
        return x * gamma.astype(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection; softmax in float32.

    `implementation` (ATTENTION_TYPES) picks the kernel, not the parameters or the maths."""

    dim: int
    num_heads: int
    qkv_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    implementation: str = "explicit"

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
        if self.implementation == "explicit":
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (head_dim**-0.5)
            weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
            out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        else:  # logits in float32, softmax in float32, scale head_dim**-0.5: the same maths
            kernel = "cudnn" if self.implementation == "cudnn" else None
            out = jax.nn.dot_product_attention(q, k, v, implementation=kernel).astype(self.dtype)
        return dense(self.dim, "proj")(out.reshape(batch, tokens, self.dim))


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


class SwiGLUPacked(nn.Module):
    """timm `SwiGLUPacked` / DINOv2 `SwiGLUFFN`: x1, x2 = split(fc1(x)); fc2(silu(x1) * x2).

    fc1: D -> 2*hidden_dim (timm fc1 = DINOv2 w12; first half x1 is gated by SiLU), fc2: hidden_dim
    -> out_dim (timm fc2 = DINOv2 w3).
    """

    hidden_dim: int
    out_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [..., D] -> [..., out_dim]
        dense = lambda n, name: nn.Dense(
            n, dtype=self.dtype, kernel_init=trunc_normal_02, name=name
        )
        x1, x2 = jnp.split(dense(2 * self.hidden_dim, "fc1")(x), 2, axis=-1)
        return dense(self.out_dim, "fc2")(nn.silu(x1) * x2)


class Block(nn.Module):
    """Pre-norm block: x + DropPath(LS1(Attn(LN(x)))), x + DropPath(LS2(FFN(LN(x)))).

    LayerScale only when `layer_scale_init` > 0; `ffn` "mlp" or "swiglu" (see `ffn_hidden_dim`).
    """

    dim: int
    num_heads: int
    mlp_ratio: float
    qkv_bias: bool
    drop_path: float
    dtype: jnp.dtype
    layer_scale_init: float = 0.0
    ffn: str = "mlp"
    mlp_hidden: int = 0
    attention: str = "explicit"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:  # [B, N, D]
        norm = lambda name: nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, name=name)
        scale = lambda y, name: (
            LayerScale(self.dim, self.layer_scale_init, name=name)(y)
            if self.layer_scale_init > 0
            else y
        )
        drop = DropPath(self.drop_path)
        attn = Attention(
            self.dim, self.num_heads, self.qkv_bias, self.dtype, self.attention, name="attn"
        )
        y = attn(norm("norm1")(x).astype(self.dtype))
        x = x + drop(scale(y.astype(x.dtype), "ls1"), deterministic)
        if self.ffn not in FFN_TYPES:
            raise ValueError(f"unknown ffn {self.ffn!r}; use one of {FFN_TYPES}")
        hidden = ffn_hidden_dim(self.dim, self.mlp_ratio, self.ffn, self.mlp_hidden)
        ffn_cls = SwiGLUPacked if self.ffn == "swiglu" else Mlp
        y = ffn_cls(hidden, self.dim, self.dtype, name="mlp")(norm("norm2")(x).astype(self.dtype))
        return x + drop(scale(y.astype(x.dtype), "ls2"), deterministic)


def block_class(remat: str = "none") -> type[Block]:
    """`Block`, or `Block` rematerialised in the backward pass as `remat` (REMAT_TYPES) says.

    The lifted transform keeps the module's name, so the parameter tree is the same; call the
    block with `deterministic` positional (it is a static argument of the checkpoint)."""
    if remat == "none":
        return Block
    if remat not in REMAT_TYPES:
        raise ValueError(f"unknown remat {remat!r}; use one of {REMAT_TYPES}")
    policy = {
        "block": jax.checkpoint_policies.nothing_saveable,
        "block_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    }[remat]
    return nn.remat(Block, static_argnums=(2,), policy=policy, prevent_cse=True)


def apply_blocks(x: jax.Array, cfg: ViTConfig, train: bool) -> jax.Array:
    """The transformer blocks `blocks_0..depth-1` of `cfg` on tokens x [B, T, D].

    Call from inside a compact module's `__call__`: the blocks become its submodules. Stochastic
    depth rises linearly over depth to `drop_path_rate` (DINO/timm), or is uniform (DINOv2)."""
    if cfg.drop_path_uniform:
        rates = np.full(cfg.depth, cfg.drop_path_rate)
    else:
        rates = np.linspace(0.0, cfg.drop_path_rate, cfg.depth)
    dtype = jnp.dtype(cfg.dtype)
    block = block_class(cfg.remat)
    for i in range(cfg.depth):
        x = block(
            cfg.embed_dim,
            cfg.num_heads,
            cfg.mlp_ratio,
            cfg.qkv_bias,
            float(rates[i]),
            dtype,
            cfg.layer_scale_init,
            cfg.ffn,
            cfg.mlp_hidden,
            cfg.attention,
            name=f"blocks_{i}",
        )(x, not train)
    return x


class VisionTransformer(nn.Module):
    """ViT backbone: images [B, H, W, 3] -> (CLS embedding [B, D], aux dict).

    aux: {'patch_tokens': [B, N, D]} plus 'register_tokens' [B, R, D] when num_registers > 0; all
    after the final LayerNorm. H and W must be multiples of the patch size; other sizes than
    `img_size` resample the position embedding as `pos_interp` says. `masks` (bool [B, N], True =
    masked, needs `use_mask_token`) replaces those patch embeddings by `mask_token` before the
    position embedding is added (DINOv2 `prepare_tokens_with_masks`). The residual stream is
    float32; matmuls run in `config.dtype`.
    """

    config: ViTConfig

    @nn.compact
    def __call__(
        self, images: jax.Array, *, train: bool = False, masks: jax.Array | None = None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        dim, regs = cfg.embed_dim, cfg.num_registers
        batch, height, width, _ = images.shape
        p = cfg.patch_size
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not a multiple of patch size {p}")
        x = PatchEmbed(dim, p, dtype, name="patch_embed")(images)
        grid = (height // p, width // p)
        x = x.reshape(batch, grid[0] * grid[1], dim).astype(jnp.float32)  # [B, N, D]

        cls_token = self.param("cls_token", trunc_normal_02, (1, 1, dim))
        pos_prefix = 0 if cfg.no_embed_class else 1
        pos_shape = (1, pos_prefix + cfg.grid_size**2, dim)
        pos_embed = self.param("pos_embed", trunc_normal_02, pos_shape)
        if cfg.use_mask_token:
            mask_token = self.param("mask_token", nn.initializers.zeros, (1, dim))
        if masks is not None:
            if not cfg.use_mask_token:
                raise ValueError("masks need a mask token: build the ViT with use_mask_token=True")
            if masks.shape != x.shape[:2]:
                raise ValueError(f"masks must be [B, N] = {x.shape[:2]}, got {masks.shape}")
            x = jnp.where(masks[..., None], mask_token.astype(x.dtype), x)

        pos = resample_pos_embed(pos_embed, grid, pos_prefix, cfg.pos_interp)
        self.sow("intermediates", "pos_embed", pos)  # the table this grid used (tests, debugging)
        cls = jnp.broadcast_to(cls_token, (batch, 1, dim))
        if cfg.no_embed_class:
            x = jnp.concatenate([cls, x + pos], axis=1)
        else:
            x = jnp.concatenate([cls, x], axis=1) + pos
        if regs:
            reg_token = self.param("reg_token", nn.initializers.normal(1e-6), (1, regs, dim))
            reg = jnp.broadcast_to(reg_token, (batch, regs, dim))
            x = jnp.concatenate([x[:, :1], reg, x[:, 1:]], axis=1)  # [B, 1+R+N, D]

        x = apply_blocks(x, cfg, train)
        x = nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, name="norm")(x)
        aux = {"patch_tokens": x[:, 1 + regs :]}
        if regs:
            aux["register_tokens"] = x[:, 1 : 1 + regs]
        return x[:, 0], aux


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> D channels (timm's `patch_embed.proj` Conv2d)."""

    embed_dim: int
    patch_size: int
    dtype: jnp.dtype
    kernel_init: Callable = TORCH_DEFAULT_INIT
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:  # [B, H, W, 3] -> [B, H/p, W/p, D]
        p = self.patch_size
        return nn.Conv(
            self.embed_dim,
            (p, p),
            strides=(p, p),
            padding="VALID",
            dtype=self.dtype,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            name="proj",
        )(images.astype(self.dtype))

"""The timm model name and `timm.create_model` kwargs of a pathfm ViT architecture.

The name is the registered timm architecture closest to the ViT (`vit_small_patch16_224`,
`vit_base_patch8_224`, `vit_large_patch14_reg4_dinov2`, ...); the kwargs always spell out every
dimension, so `timm.create_model(name, **kwargs)` builds exactly the exported ViT whatever the
name's defaults (DINOv2 names default to 518 px and LayerScale, for instance).
"""

from __future__ import annotations

from typing import Any

from pathfm.interop.key_map import timm_prefix_rows
from pathfm.models.vit import VIT_SIZES, ViTConfig, ffn_hidden_dim

# Registered timm VisionTransformer names the choice below may give (checked against timm by
# tests/interop/test_timm_names.py).
TIMM_VIT_NAMES = frozenset(
    {
        "vit_tiny_patch16_224",
        "vit_small_patch16_224",
        "vit_small_patch8_224",
        "vit_small_patch32_224",
        "vit_base_patch16_224",
        "vit_base_patch8_224",
        "vit_base_patch32_224",
        "vit_large_patch16_224",
        "vit_large_patch14_224",
        "vit_large_patch32_224",
        "vit_huge_patch14_224",
        "vit_giant_patch14_224",
        *(f"vit_{s}_patch14_dinov2" for s in ("small", "base", "large", "giant")),
        *(f"vit_{s}_patch14_reg4_dinov2" for s in ("small", "base", "large", "giant")),
    }
)
# Class-valued kwargs cannot go into JSON: they are written as import paths.
SWIGLU_CLASS = "timm.layers.SwiGLUPacked"


def size_family(cfg: ViTConfig) -> str:
    """'tiny' / 'small' / 'base' / 'large' / 'giant': the named size of the dimensions, else
    the one of the nearest width."""
    dims = (cfg.embed_dim, cfg.depth, cfg.num_heads)
    for name, size in VIT_SIZES.items():
        if size == dims:
            return name
    return min(VIT_SIZES, key=lambda n: abs(VIT_SIZES[n][0] - cfg.embed_dim))


def timm_name(cfg: ViTConfig) -> str:
    """The registered timm architecture name for `cfg` (see the module docstring)."""
    family, p = size_family(cfg), cfg.patch_size
    dinov2_style = cfg.num_registers or cfg.layer_scale_init > 0 or cfg.ffn == "swiglu"
    candidates = []
    if p == 14 and dinov2_style:
        fam = "small" if family == "tiny" else family
        if cfg.num_registers == 4:
            candidates.append(f"vit_{fam}_patch14_reg4_dinov2")
        candidates.append(f"vit_{fam}_patch14_dinov2")
    candidates += [f"vit_{family}_patch{p}_224", f"vit_{family}_patch16_224"]
    candidates += [f"vit_{family}_patch14_224", f"vit_small_patch{p}_224"]
    return next((n for n in candidates if n in TIMM_VIT_NAMES), "vit_base_patch16_224")


def _ratio_for(hidden: int, dim: int) -> float:
    """An mlp_ratio with int(dim * ratio) == hidden (timm's Block sizes its FFN so)."""
    ratio = hidden / dim
    return ratio if int(dim * ratio) == hidden else (hidden + 0.5) / dim


def timm_kwargs(cfg: ViTConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """(JSON-ready kwargs, class-valued kwargs as import paths) for `timm.create_model`.

    SwiGLU maps onto timm's `SwiGLUPacked` (fc1 packs both halves: hidden 2 x the inner width,
    hence the mlp_ratio) with SiLU; registers always use no_embed_class=True (see key_map)."""
    hidden = ffn_hidden_dim(cfg.embed_dim, cfg.mlp_ratio, cfg.ffn, cfg.mlp_hidden)
    packed = 2 * hidden if cfg.ffn == "swiglu" else hidden
    ratio = cfg.mlp_ratio if cfg.ffn == "mlp" and not cfg.mlp_hidden else None
    kwargs: dict[str, Any] = {
        "img_size": cfg.img_size,
        "patch_size": cfg.patch_size,
        "embed_dim": cfg.embed_dim,
        "depth": cfg.depth,
        "num_heads": cfg.num_heads,
        "mlp_ratio": ratio if ratio is not None else _ratio_for(packed, cfg.embed_dim),
        "qkv_bias": cfg.qkv_bias,
        "init_values": cfg.layer_scale_init if cfg.layer_scale_init > 0 else None,
        "class_token": True,
        "reg_tokens": cfg.num_registers,
        "no_embed_class": timm_prefix_rows(cfg) == 0,
        "global_pool": "token",
        "dynamic_img_size": True,
    }
    classes: dict[str, str] = {}
    if cfg.ffn == "swiglu":
        kwargs["act_layer"] = "silu"
        classes["mlp_layer"] = SWIGLU_CLASS
    return kwargs, classes

"""Checks of the `model.*` config keys (the backbone's architecture and speed options)."""

from __future__ import annotations

import jax
import ml_collections

from pathfm.errors import require
from pathfm.models.pos_interp import POS_INTERP_MODES
from pathfm.models.vit import ATTENTION_TYPES, FFN_TYPES, REMAT_TYPES, SIZE_ALIASES, VIT_SIZES


def check_model_config(m: ml_collections.ConfigDict) -> None:
    """ConfigError naming the first invalid `model.*` value. cuDNN attention needs an NVIDIA GPU
    and bfloat16 (its fused kernel has no float32 path)."""
    sizes = ", ".join([*VIT_SIZES, *SIZE_ALIASES])
    require(
        m.size in VIT_SIZES or m.size in SIZE_ALIASES,
        "model.size",
        f"unknown size {m.size!r}; use one of {sizes}",
    )
    require(m.dtype in ("float32", "bfloat16"), "model.dtype", "use float32 or bfloat16")
    require(0.0 <= m.drop_path_rate < 1.0, "model.drop_path_rate", "must be in [0, 1)")
    require(m.img_size % m.patch_size == 0, "model.img_size", "must be a multiple of patch_size")
    require(m.ffn in FFN_TYPES, "model.ffn", "use 'mlp' or 'swiglu'")
    require(m.attention in ATTENTION_TYPES, "model.attention", f"use one of {ATTENTION_TYPES}")
    require(m.remat in REMAT_TYPES, "model.remat", f"use one of {REMAT_TYPES}")
    require(
        m.pos_interp in POS_INTERP_MODES,
        "model.pos_interp",
        f"use one of {POS_INTERP_MODES} (docs/interop.md, 'Position embeddings at other sizes')",
    )
    if m.attention == "cudnn":
        require(
            jax.default_backend() == "gpu" and m.dtype == "bfloat16",
            "model.attention",
            f"'cudnn' needs an NVIDIA GPU and model.dtype='bfloat16' (backend "
            f"{jax.default_backend()}, dtype {m.dtype}); use 'dot_product' to let XLA choose",
        )

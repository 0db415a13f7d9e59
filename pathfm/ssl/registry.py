"""Methods by name: the one place the rest of pathfm looks a method up."""

from __future__ import annotations

import ml_collections

from pathfm.errors import require
from pathfm.ssl.base import Method
from pathfm.ssl.dino import Dino
from pathfm.ssl.dinov2 import DinoV2
from pathfm.ssl.mae import Mae

METHODS: dict[str, type] = {"dino": Dino, "dinov2": DinoV2, "mae": Mae}


def build_method(config: ml_collections.ConfigDict) -> Method:
    """The method named by `config.method`, built from the config."""
    if config.method not in METHODS:
        raise KeyError(f"unknown method {config.method!r}; available: {', '.join(METHODS)}")
    return METHODS[config.method](config)


def check_method_config(c: ml_collections.ConfigDict) -> None:
    """ConfigError naming the first invalid `method`, `dino.*`, `mae.*` or `dinov2.*` value."""
    require(c.method in METHODS, "method", f"{c.method!r} is not one of: {', '.join(METHODS)}")
    dn = c.dino
    require(dn.out_dim > 0 and dn.nlayers >= 1, "dino.out_dim", "out_dim > 0 and nlayers >= 1")
    require(
        0 <= dn.warmup_teacher_temp_epochs <= c.epochs,
        "dino.warmup_teacher_temp_epochs",
        "must be in [0, epochs]",
    )
    require(0.0 < c.mae.mask_ratio < 1.0, "mae.mask_ratio", "must be in (0, 1)")
    if c.method == "mae":  # main_pretrain.py builds the model for input_size and crops to it
        require(
            c.crops.global_size == c.model.img_size,
            "crops.global_size",
            f"MAE pre-trains at model.img_size ({c.model.img_size}); set both to the same size",
        )
    require(
        c.dinov2.centering in ("centering", "sinkhorn_knopp"),
        "dinov2.centering",
        "use 'centering' or 'sinkhorn_knopp'",
    )

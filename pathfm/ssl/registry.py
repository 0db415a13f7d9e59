"""Methods by name: the one place the rest of pathfm looks a method up."""

from __future__ import annotations

import ml_collections

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

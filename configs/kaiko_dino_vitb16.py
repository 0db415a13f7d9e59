"""kaiko.ai's DINO ViT-B/16 on TCGA (Aben et al. 2024); recipe in `pathfm.config.kaiko_dino`.

Needs `--config.data.slides=...` (TCGA slides you downloaded); `:quick` runs a few CPU steps.
"""

from pathfm.config import kaiko_dino


def get_config(arg: str | None = None):
    return kaiko_dino("B", 16, arg)

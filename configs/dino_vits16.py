"""DINO ViT-S/16 with the reference recipe (facebookresearch/dino main_dino.py defaults).

Global batch 512 (64 per device on 8 devices), 100 pseudo-epochs of 1250 steps, 65536 prototypes,
2x224 + 8x96 crops, the multi-magnification mix 0.25/0.5/1/2 um/px. Needs
`--config.data.slides=...`. The argument `quick` shrinks it to a few CPU steps on synthetic slides.
"""

from pathfm.config import apply_variant, base_config


def get_config(arg: str | None = None):
    return apply_variant(base_config(), arg)

"""kaiko.ai's DINO ViT-B/16 (Aben et al. 2024, REFERENCE section 1): online patching over TCGA.

DINO's reference recipe (pathfm.config.base_config) with what the paper states: the
multi-magnification mix 0.25/0.5/1/2 um/px (40x/20x/10x/5x), pathology flips and rotations, and
the released models' normalisation mean = std = (0.5, 0.5, 0.5). Hyper-parameters the paper does
not state keep DINO's defaults. Needs `--config.data.slides=...` (TCGA slides you downloaded).
"""

from pathfm.config import apply_variant, base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.model.size, c.model.patch_size = "B", 16
    c.data.update(mpps=(0.25, 0.5, 1.0, 2.0), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    c.crops.update(vflip_p=0.5, rot90=True)
    return apply_variant(c, arg)

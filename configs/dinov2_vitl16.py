"""DINOv2 with facebookresearch/dinov2's default config (dinov2/configs/ssl_default_config.yaml).

ViT-L/16 with LayerScale 1e-5, uniform drop-path 0.3; DINO + 0.1 KoLeo + iBOT (shared head,
65536 prototypes, bottleneck 256, trainable weight-norm gain), "centering"; teacher temperature
0.04 -> 0.07 over 30 epochs, momentum 0.992 -> 1; AdamW base lr 4e-3 x sqrt(batch / 1024),
layer-wise decay 0.9, patch-embedding lr x 0.2, wd 0.04 -> 0.4, clipping 3.0, 10 warm-up of 100
epochs of 1250 iterations; batch 64 per GPU (512 on 8); crops 2 x 224 (scale 0.32-1) + 8 x 96
(scale 0.05-0.32); block masks on half of the global crops with ratios 0.1-0.5.
"""

from pathfm.config import apply_variant, base_config, dinov2_defaults


def get_config(arg: str | None = None):
    c = dinov2_defaults(base_config())
    c.model.update(size="L", patch_size=16, drop_path_rate=0.3)
    c.optim.update(lr=4e-3, layer_decay=0.9)
    return apply_variant(c, arg)

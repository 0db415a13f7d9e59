"""kaiko.ai's DINOv2 ViT-L/14 with 4 registers (Aben et al. 2024; dinov2 configs/train/vitl14.yaml).

DINOv2's ViT-L/14 recipe: batch 32 per GPU, base lr 2e-4 x sqrt(batch / 1024), 500 epochs of 1250
iterations with 80 warm-up, no layer-wise decay, drop-path 0.4 (uniform), Sinkhorn-Knopp, 131072
prototypes with bottleneck 384 and a separate iBOT head, momentum 0.994 -> 1, wd 0.04 -> 0.2,
local crops 98 px; with 4 register tokens and kaiko's multi-magnification mix 0.25/0.5/1/2 um/px
and mean = std = 0.5. Set `batch_size` to 32 x devices.

It trains in DINOv2's own token layout (dinov2/models/vision_transformer.py: `cls_token` and a CLS
row in `pos_embed`, two parameters AdamW steps separately; registers without a position
embedding): `no_embed_class=False`. Export folds the CLS row into `cls_token` for timm's
`vit_large_patch14_reg4_dinov2` (no_embed_class=True), as timm's own DINOv2 conversion does.
"""

from pathfm.config import apply_variant, base_config, dinov2_defaults


def get_config(arg: str | None = None):
    c = dinov2_defaults(base_config())
    c.epochs, c.batch_size = 500, 256
    c.model.update(
        size="L", patch_size=14, drop_path_rate=0.4, num_registers=4, no_embed_class=False
    )
    c.dino.update(out_dim=131072, bottleneck_dim=384, momentum_teacher=0.994)
    c.dinov2.update(centering="sinkhorn_knopp", ibot_separate_head=True)
    c.optim.update(lr=2e-4, layer_decay=1.0, warmup_epochs=80, weight_decay_end=0.2)
    c.crops.local_size = 98
    c.data.update(mpps=(0.25, 0.5, 1.0, 2.0), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    c.crops.update(vflip_p=0.5, rot90=True)
    return apply_variant(c, arg)

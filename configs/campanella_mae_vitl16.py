"""MAE ViT-L/16 as Campanella et al. 2023 (arXiv 2310.07033) pre-trained it (facebookresearch/mae).

Encoder ViT-L/16 (303M parameters), decoder 8 x 512 with 16 heads, mask ratio 0.75, norm-pix
loss; AdamW (0.9, 0.95), weight decay 0.05 (constant, none on biases and 1-D parameters), no
gradient clipping, lr = blr x batch / 256 with blr 1e-4 (MAE's default is 1.5e-4), 5 warm-up
epochs then cosine to 0, 50 pseudo-epochs of 46,000 iterations (the paper's ~2.3M steps). Batch
180 as the paper reports it; lr follows the batch you set. Augmentation: RandomResizedCrop(224,
scale 0.2-1) and flips; patches at 0.5 um/px. Needs `--config.data.slides=...`.
The argument `quick` shrinks it to a few CPU steps on synthetic slides; `tfds` trains from a
pre-extracted tile store instead of slides (set data.tfds_name and data.tfds_dir to your store;
docs/data.md); `quick,tfds` does both.
"""

from pathfm.config import apply_variant, base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.method = "mae"
    c.epochs, c.steps_per_epoch, c.batch_size = 50, 46_000, 180
    c.model.size, c.model.patch_size, c.model.drop_path_rate = "L", 16, 0.0
    # MAE pre-trains at one size only; at others its table is resampled as timm does, so the
    # exported timm model (dynamic_img_size) and pathfm give the same features everywhere.
    c.model.pos_interp = "timm"
    c.optim.update(
        lr=1e-4,
        min_lr=0.0,
        warmup_epochs=5,
        weight_decay=0.05,
        weight_decay_end=0.05,
        b1=0.9,
        b2=0.95,
        clip_grad=0.0,
    )
    c.crops.update(global_size=224, global_scale=(0.2, 1.0), vflip_p=0.0, rot90=False)
    c.data.update(mpps=(0.5,), patch_size=256)
    c.checkpoint.every_steps = 5000
    c.monitor.every_steps = 5000
    return apply_variant(c, arg, allowed=("quick", "tfds"), store="campanella_mae_vitl16")

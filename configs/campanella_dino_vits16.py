"""DINO ViT-S/16 as Campanella et al. 2023 (Mount Sinai, arXiv 2310.07033) pre-trained it.

Batch 90 per GPU (set `batch_size` to 90 x your devices; lr scales with it as in DINO), 50
pseudo-epochs of 30,000 iterations (the paper's ~1.5M steps), 65536 prototypes, teacher
temperature 0.04 (warm-up over 1 epoch from 0.04), weight decay 0.04 -> 0.4, last layer frozen for
1 epoch, 1 warm-up epoch, lr 5e-5 per 256 images, per-tensor clipping at 1.0, float32, DINO's
default multi-crop (2x224 + 8x96), 224 px tiles at 0.5 um/px (20x). Pathology flips/rotations off:
the paper reports the DINO defaults.

Arguments: `quick` (a few CPU steps on synthetic slides) and `tfds` (train from a pre-extracted
tile store, as the paper did, instead of online patching: set data.tfds_name and data.tfds_dir to
your store, e.g. `--config configs/campanella_dino_vits16.py:tfds
--config.data.tfds_dir=/data/stores`), or both: `quick,tfds`.
"""

from pathfm.config import apply_variant, base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.epochs, c.steps_per_epoch, c.batch_size = 50, 30_000, 90
    c.dino.update(
        out_dim=65536,
        teacher_temp=0.04,
        warmup_teacher_temp=0.04,
        warmup_teacher_temp_epochs=1,
        freeze_last_layer=1,
    )
    c.optim.update(lr=5e-5, warmup_epochs=1, weight_decay=0.04, weight_decay_end=0.4, clip_grad=1.0)
    c.model.dtype = "float32"
    c.crops.update(vflip_p=0.0, rot90=False)
    c.data.update(mpps=(0.5,), patch_size=224)
    return apply_variant(c, arg, allowed=("quick", "tfds"), store="campanella_dino_vits16")

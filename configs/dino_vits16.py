"""DINO ViT-S/16 with the reference recipe (facebookresearch/dino defaults, REFERENCE section 2).

Global batch 512 (64 per device on 8 devices), 100 pseudo-epochs of 1250 steps, 65536 prototypes,
2x224 + 8x96 crops, patches read at 0.5 um/px (20x). Needs `--config.data.slides=...`.
The argument `quick` shrinks it to a few CPU steps on synthetic slides.
"""

from pathfm.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    if arg == "quick":
        c.epochs, c.steps_per_epoch, c.batch_size = 2, 2, 8
        c.optim.warmup_epochs = 1
        c.model.img_size, c.crops.global_size, c.crops.local_size, c.crops.n_local = 64, 64, 32, 2
        c.data.patch_size, c.data.synthetic_size = 96, 2048
        c.dino.out_dim, c.dino.hidden_dim, c.dino.bottleneck_dim = 1024, 256, 64
        c.monitor.every_steps, c.monitor.num_patches = 4, 16
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'quick' or nothing")
    return c

"""Quick start: DINO on generated synthetic slides with a tiny ViT, a few minutes on 2 CPU cores.

    python -m pathfm.main --config configs/quickstart.py --workdir runs/quickstart

The optimiser, temperatures, momentum and augmentations are the reference DINO recipe
(pathfm.config.base_config); only sizes shrink: a 4-block 64-wide ViT with 8 px patches on 48 px
global / 24 px local crops, a 1024-prototype head, batch 32, and pseudo-epochs of 30 steps so the
lr warm-up and the freezing of the last layer happen within the run. (Raising the lr or cutting
the prototypes to 256 made this tiny model collapse: RankMe fell from 6.5 to 4-5.)
Point `--config.data.slides` at a folder of your own slides to try it on real data.
"""

from pathfm.config import base_config


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"unknown config argument {arg!r}; this config takes none")
    c = base_config()
    c.epochs = 10
    c.steps_per_epoch = 30  # 300 steps
    c.batch_size = 32
    c.log_every_steps = 10

    c.model.size = "tiny"
    c.model.patch_size = 8
    c.model.img_size = 48
    c.model.embed_dim = 64
    c.model.depth = 4
    c.model.num_heads = 4
    c.model.drop_path_rate = 0.1

    c.dino.out_dim = 1024
    c.dino.hidden_dim = 256
    c.dino.bottleneck_dim = 64

    c.optim.warmup_epochs = 1

    c.crops.global_size = 48
    c.crops.local_size = 24
    c.crops.n_local = 4

    c.data.synthetic_slides = 4
    c.data.synthetic_size = 2048
    c.data.synthetic_mpp = 0.25
    c.data.patch_size = 64
    c.data.mpps = (0.5, 1.0)
    c.data.num_workers = 0

    c.checkpoint.every_steps = 100
    c.monitor.every_steps = 50
    c.monitor.num_patches = 256
    c.monitor.batch_size = 128
    c.monitor.online_task = "synthetic"  # kNN on the slides' tissue classes every 50 steps
    c.dashboard.image_every_steps = 50  # crop grids in <workdir>/tensorboard (docs/dashboards.md)
    return c

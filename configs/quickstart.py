"""Quick start: DINO on generated synthetic slides with a tiny ViT, a few minutes on 2 CPU cores.

    python -m pathfm.main --config configs/quickstart.py --workdir runs/quickstart

Everything else is the reference DINO recipe (pathfm.config.base_config) scaled down: a 4-block
96-wide ViT with 8 px patches on 64 px global / 32 px local crops, a 4096-prototype head, and
pseudo-epochs of 30 steps so warm-up, teacher-temperature warm-up and freezing of the last layer
all happen within the run. Point `--config.data.slides` at a folder of your own slides to try it
on real data.
"""

from pathfm.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.epochs = 10
    c.steps_per_epoch = 30  # 300 steps
    c.batch_size = 32
    c.log_every_steps = 10

    c.model.size = "tiny"
    c.model.patch_size = 8
    c.model.img_size = 64
    c.model.embed_dim = 96
    c.model.depth = 4
    c.model.num_heads = 3
    c.model.drop_path_rate = 0.1

    c.dino.out_dim = 4096
    c.dino.hidden_dim = 512
    c.dino.bottleneck_dim = 128
    c.dino.warmup_teacher_temp = 0.04
    c.dino.teacher_temp = 0.06
    c.dino.warmup_teacher_temp_epochs = 3
    c.dino.momentum_teacher = 0.99

    c.optim.lr = 2e-3  # per 256 images; tiny models on tiny batches like a larger step
    c.optim.warmup_epochs = 1

    c.crops.global_size = 64
    c.crops.local_size = 32
    c.crops.n_local = 4

    c.data.synthetic_slides = 4
    c.data.synthetic_size = 2048
    c.data.synthetic_mpp = 0.25
    c.data.patch_size = 96
    c.data.mpps = (0.5, 1.0)
    c.data.num_workers = 0

    c.checkpoint.every_steps = 100
    c.monitor.every_steps = 50
    c.monitor.num_patches = 256
    c.monitor.batch_size = 128
    return c

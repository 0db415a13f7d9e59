"""Quick start: DINOv2 on generated synthetic slides with a tiny ViT, a few minutes on 2 CPU cores.

    python -m pathfm.main --config configs/quickstart.py --workdir runs/quickstart

DINOv2 (Oquab et al. 2023: the DINO loss on the CLS token, iBOT's masked patch-token loss and the
KoLeo regulariser) with the Sinkhorn-Knopp centering of the teacher that the paper trains with
(section 4; facebookresearch/dinov2 `centering: sinkhorn_knopp`). Sizes shrink: a 4-block 64-wide
ViT with 8 px patches on 48 px global / 24 px local crops, a 1024-prototype head, batch 32, 600
steps in pseudo-epochs of 30 so that the lr warm-up and the freezing of the last layer happen
within the run. Why, measured on the synthetic task (docs/evaluation.md):

- DINO (v1) at this size falls into its uniform collapse (the loss at ln 1024, RankMe ~3, the
  online kNN at chance) from some seeds whatever the lr (2.5e-4 to 5e-4), teacher momentum
  (0.99, 0.996), teacher temperature (0.02-0.04), warm-up, head normalisation or width (128);
  Sinkhorn-Knopp alone did not help, with KoLeo and iBOT the features spread (RankMe ~29) and the
  kNN rises on every seed tried;
- base lr 4e-3 per 256 images (DINOv2's base lr; peak 5e-4 at batch 32): the reference scaling
  rules leave a fresh tiny ViT near its start in a few hundred steps;
- teacher momentum 0.99 (reference 0.992-0.996): the teacher follows the student within the run;
- one magnification, 1 um/px (kaiko mixes 0.25-2): 48 px then span 48 um, several nuclei or a
  gland, and the tiny model does not split its few steps between scales. The online kNN and the
  evaluation (configs/eval/linear_probe.py) score the tissue classes at the same resolution.

Point `--config.data.slides` at a folder of your own slides to try it on real data.
"""

from pathfm.config import base_config


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"unknown config argument {arg!r}; this config takes none")
    c = base_config()
    c.method = "dinov2"
    c.dinov2.centering = "sinkhorn_knopp"  # DINOv2's final recipe (see above)
    c.epochs = 20
    c.steps_per_epoch = 30  # 600 steps
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

    c.optim.lr = 4e-3  # per 256 images: peak 5e-4 at batch 32 (see above)
    c.optim.warmup_epochs = 1
    c.dino.momentum_teacher = 0.99  # cosine to 1 over the run

    c.crops.global_size = 48
    c.crops.local_size = 24
    c.crops.n_local = 4

    c.data.synthetic_slides = 8  # 4 train, 2 validation, 2 test slides for the evaluation
    c.data.synthetic_size = 2048
    c.data.synthetic_mpp = 0.25
    c.data.patch_size = 64
    c.data.mpps = (1.0,)  # one magnification (see above)
    c.data.num_workers = 0

    c.checkpoint.every_steps = 300
    c.monitor.every_steps = 50
    c.monitor.num_patches = 256
    c.monitor.batch_size = 128
    c.monitor.online_task = "synthetic"  # kNN on the slides' tissue classes every 50 steps
    c.monitor.online_mpp = 1.0  # at the training magnification
    c.dashboard.image_every_steps = 50  # crop grids in <workdir>/tensorboard (docs/dashboards.md)
    return c

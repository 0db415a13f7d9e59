"""Paths and loaders shared by the tests."""

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GOLDEN = SHARED / "golden"
TEST_SLIDES = SHARED / "test-slides"


def golden(name: str):
    """A golden .npz computed by the official reference code (see ../shared/golden/README.md)."""
    path = GOLDEN / name
    if not path.exists():
        pytest.fail(f"golden file {path} is missing: the shared/ folder must sit beside the repo")
    return np.load(path)


def tiny_dino_config(**overrides):
    """The reference DINO config shrunk to a 2-block 32-wide ViT on 32/16 px crops."""
    from pathfm.config import base_config

    c = base_config()
    c.epochs, c.steps_per_epoch, c.batch_size, c.log_every_steps = 2, 3, 8, 1
    c.model.update(size="tiny", patch_size=8, img_size=32, embed_dim=32, depth=2, num_heads=2)
    c.dino.update(out_dim=64, hidden_dim=32, bottleneck_dim=16, freeze_last_layer=1)
    c.optim.warmup_epochs = 1
    c.crops.update(global_size=32, local_size=16, n_local=2)
    c.data.update(patch_size=48, synthetic_size=2048, mpps=(0.5,))
    c.monitor.update(every_steps=3, num_patches=16, batch_size=8)
    c.checkpoint.every_steps = 2
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return c


def random_dino_batch(config, seed=0):
    """uint8 crops shaped like the input pipeline's batches."""
    rng = np.random.default_rng(seed)
    b, cr = config.batch_size, config.crops
    return {
        "global_crops": rng.integers(0, 256, (b, 2, cr.global_size, cr.global_size, 3), np.uint8),
        "local_crops": rng.integers(
            0, 256, (b, cr.n_local, cr.local_size, cr.local_size, 3), np.uint8
        ),
    }

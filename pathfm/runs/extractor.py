"""The frozen backbone of a training run, read from its workdir for evaluation and plots."""

from __future__ import annotations

from pathlib import Path

from jax.sharding import Mesh

from pathfm import parallel
from pathfm.config import config_from_json
from pathfm.evaluation.features import FeatureExtractor, default_backbone
from pathfm.train.checkpoint import load_weights


def load_extractor(
    workdir: str | Path, which: str | None = None, step: int | None = None, mesh: Mesh = None
) -> FeatureExtractor:
    """The backbone of a training run's checkpoint: the newest readable step by default (weights
    only, no optimiser state); the teacher for DINO/DINOv2, the encoder for MAE unless `which`
    says otherwise."""
    workdir = Path(workdir)
    config = config_from_json(workdir / "config.json")
    step, state = load_weights(workdir / "checkpoints", step)
    which = which or default_backbone(config)
    mesh = mesh or parallel.make_mesh(-1, 1)
    return FeatureExtractor(config, which, state["params"], state["extra"], step, mesh)

"""The config keys that pick a training run's checkpoint, one name across evaluation, MIL and
export: `checkpoint` (the run's --workdir, or its checkpoints/ folder), `step`, `backbone`,
`random_init`. Export's former `checkpoint_dir` is accepted as an alias of `checkpoint`.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from pathfm.errors import ConfigError
from pathfm.train.checkpoint import complete_steps

ALIASES = {"checkpoint_dir": "checkpoint"}  # old name -> name


def checkpoint_keys(aliases: bool = False) -> ml_collections.ConfigDict:
    """The keys that choose the frozen backbone (with the old aliases when `aliases`)."""
    c = ml_collections.ConfigDict()
    c.checkpoint = ""  # workdir of a pathfm training run (its config.json and checkpoints/)
    c.step = 0  # 0 = the newest checkpoint that reads
    c.backbone = ""  # "" = teacher (DINO, DINOv2) or encoder (MAE); or "student"
    c.random_init = False  # the run's architecture, untrained: the random-init baseline
    if aliases:
        for old in ALIASES:
            c[old] = ""  # accepted alias, see ALIASES
    return c


def run_folder(checkpoint: str | Path) -> Path:
    """The run folder of `checkpoint`: the run's workdir, or the workdir of its checkpoints/."""
    path = Path(checkpoint)
    if not (path / "config.json").is_file() and (path.parent / "config.json").is_file():
        return path.parent
    return path


def resolve_checkpoint_keys(config: ml_collections.ConfigDict) -> Path:
    """Checks the checkpoint keys before any work and returns the run folder. Folds aliases into
    `checkpoint` (in place). ConfigError naming the key: no run, no config.json, no complete
    checkpoint (unless `random_init`), or a `step` the run does not have. `checkpoint` is set to
    the run folder."""
    for old, new in ALIASES.items():
        if config.get(old):
            if config[new] and config[new] != config[old]:
                raise ConfigError(
                    f"config.{old} is an alias of config.{new}; they name different runs "
                    f"({config[old]!r} and {config[new]!r}): pass only --config.{new}"
                )
            config[new] = config[old]
    if not config.checkpoint:
        raise ConfigError(
            "config.checkpoint: pass the --workdir of a pathfm training run "
            "(--config.checkpoint=runs/NAME)"
        )
    run = run_folder(config.checkpoint)
    if not (run / "config.json").is_file():
        raise ConfigError(
            f"config.checkpoint: {config.checkpoint} holds no config.json; pass the --workdir "
            "of a pathfm training run"
        )
    config.checkpoint = str(run)  # downstream code reads <checkpoint>/config.json
    if config.step < 0:
        raise ConfigError(f"config.step: {config.step}; use a saved step, or 0 for the newest")
    if config.random_init:
        return run
    steps = complete_steps(run / "checkpoints")
    if not steps:
        raise ConfigError(
            f"config.checkpoint: {run} has no complete checkpoint yet; wait for the run's first "
            "save (checkpoint.every_steps), or pass --config.random_init=true for the untrained "
            "baseline"
        )
    if config.step and config.step not in steps:
        raise ConfigError(f"config.step: {run} has no checkpoint {config.step}; it has {steps}")
    return run

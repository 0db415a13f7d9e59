"""The `export` mode: a training run's backbone as timm files.

    python -m pathfm.main --config configs/export.py \
        --config.checkpoint_dir=runs/vits16 --config.output=exports/vits16

writes `<timm name>.safetensors`, `<timm name>.pth`, `<timm name>.json` and `hubconf.py` into
`output` (docs/interop.md). Every key is checked before anything is read or written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ml_collections

import pathfm
from pathfm.config import config_from_json
from pathfm.errors import ConfigError
from pathfm.interop.timm_export import FORMATS, check_formats, export_backbone
from pathfm.ssl.registry import build_method

log = logging.getLogger("pathfm")


def export_config() -> ml_collections.ConfigDict:
    """Every key of an export, with its default."""
    c = ml_collections.ConfigDict()
    c.mode = "export"
    c.checkpoint_dir = ""  # --workdir of a pathfm training run (config.json, checkpoints/)
    c.output = ""  # folder for the files; created if missing
    c.step = 0  # 0 = the newest checkpoint
    c.backbone = ""  # "" = teacher (DINO, DINOv2) / encoder (MAE); or "student"
    c.formats = FORMATS  # safetensors (no torch needed) and/or pth
    return c


def run_dir(checkpoint_dir: str | Path) -> Path:
    """The run folder of `checkpoint_dir`: the run's workdir or its `checkpoints/` folder."""
    path = Path(checkpoint_dir)
    if not (path / "config.json").is_file() and (path.parent / "config.json").is_file():
        return path.parent
    return path


def _steps(run: Path) -> list[int]:
    import orbax.checkpoint as ocp

    if not (run / "checkpoints").is_dir():
        return []
    with ocp.CheckpointManager((run / "checkpoints").absolute()) as manager:
        return sorted(manager.all_steps())


def validate_export(config: ml_collections.ConfigDict) -> None:
    """ConfigError naming the first bad key, before any work."""
    if not config.checkpoint_dir:
        raise ConfigError("config.checkpoint_dir: pass the --workdir of a pathfm training run")
    run = run_dir(config.checkpoint_dir)
    if not (run / "config.json").is_file():
        raise ConfigError(
            f"config.checkpoint_dir: {config.checkpoint_dir} holds no config.json; pass the "
            "--workdir of a pathfm training run"
        )
    if not config.output:
        raise ConfigError("config.output: the folder to write the timm files into")
    method = build_method(config_from_json(run / "config.json"))
    if config.backbone and config.backbone not in method.backbones:
        names = ", ".join(repr(b) for b in method.backbones)
        raise ConfigError(f"config.backbone: {method.name} runs have {names}")
    check_formats(config.formats)
    steps = _steps(run)
    if not steps:
        raise ConfigError(f"config.checkpoint_dir: {run} has no complete checkpoint yet")
    if config.step and config.step not in steps:
        raise ConfigError(f"config.step: {run} has no checkpoint {config.step}; it has {steps}")


def export_run(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Exports the chosen backbone of the run's checkpoint; returns the JSON description."""
    from pathfm.train.checkpoint import load_state

    run = run_dir(config.checkpoint_dir)
    run_config = config_from_json(run / "config.json")
    method = build_method(run_config)
    step, state = load_state(run / "checkpoints", config.step or None)
    which = config.backbone or method.backbones[0]
    backbone = method.backbone(state["params"], state["extra"], which)
    data = run_config.data
    meta = {
        "mean": list(data.mean),
        "std": list(data.std),
        "mpps": list(data.mpps),  # um/px the backbone was trained on
        "mpp_weights": list(data.mpp_weights),  # empty: uniform over mpps
        "train_crop_size": run_config.crops.global_size,
        "method": run_config.method,
        "backbone": which,
        "step": int(step),
        "checkpoint_dir": str(run.resolve()),
        "slides": data.slides or "synthetic",
        "pathfm_version": pathfm.__version__,
    }
    description = export_backbone(backbone, config.output, meta, config.formats)
    name = description["timm_name"]
    log.info("exported the %s of %s step %d as %s to %s", which, run, step, name, config.output)
    return description

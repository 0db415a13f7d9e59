"""The `export` mode: a training run's backbone as timm files.

    python -m pathfm.main --config configs/export.py \
        --config.checkpoint=runs/vits16 --config.output=exports/vits16

writes `<timm name>.safetensors`, `<timm name>.pth`, `<timm name>.json`, `hubconf.py` and a
model card `README.md` into `output` (docs/interop.md), and eva's BACH, CRC, MHIST and PCam
configs into `output/eva/` (docs/eva.md). Every key is checked before anything is read or written.
"""

from __future__ import annotations

import logging
from typing import Any

import ml_collections

import pathfm
from pathfm.config import config_from_json
from pathfm.errors import ConfigError
from pathfm.interop.eva_configs import write_eva_configs
from pathfm.interop.model_card import write_model_card
from pathfm.interop.timm_export import FORMATS, check_formats, export_backbone
from pathfm.runs.checkpoint_keys import checkpoint_keys, resolve_checkpoint_keys, run_folder
from pathfm.ssl.registry import build_method
from pathfm.train.checkpoint import load_weights

log = logging.getLogger(__name__)


def export_config() -> ml_collections.ConfigDict:
    """Every key of an export, with its default (`checkpoint_dir` is an alias of `checkpoint`)."""
    c = checkpoint_keys(aliases=True)
    c.mode = "export"
    c.output = ""  # folder for the files; created if missing
    c.formats = FORMATS  # safetensors (no torch needed) and/or pth
    return c


def validate_export(config: ml_collections.ConfigDict) -> None:
    """ConfigError naming the first bad key, before any work."""
    run = resolve_checkpoint_keys(config)
    if config.random_init:
        raise ConfigError("config.random_init: an export writes trained weights; drop the key")
    if not config.output:
        raise ConfigError("config.output: the folder to write the timm files into")
    method = build_method(config_from_json(run / "config.json"))
    if config.backbone and config.backbone not in method.backbones:
        names = ", ".join(repr(b) for b in method.backbones)
        raise ConfigError(f"config.backbone: {method.name} runs have {names}")
    check_formats(config.formats)


def export_run(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Exports the chosen backbone of the run's checkpoint; returns the JSON description."""
    run = run_folder(config.checkpoint)
    run_config = config_from_json(run / "config.json")
    method = build_method(run_config)
    step, state = load_weights(run / "checkpoints", config.step or None)
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
        "checkpoint": str(run.resolve()),
        "slides": data.slides or "synthetic",
        "pathfm_version": pathfm.__version__,
    }
    description = export_backbone(backbone, config.output, meta, config.formats)
    eva = write_eva_configs(description, config.output)
    write_model_card(description, config.output, run_config.batch_size)
    name = description["timm_name"]
    log.info("exported the %s of %s step %d as %s to %s", which, run, step, name, config.output)
    log.info("eva configs (docs/eva.md): %s", ", ".join(str(p) for p in eva))
    return description

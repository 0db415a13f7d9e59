"""Export a training run's backbone as a timm ViT (safetensors, .pth, JSON, hubconf.py).

    python -m pathfm.main --config configs/export.py \
        --config.checkpoint_dir=runs/quickstart --config.output=exports/quickstart

Keys: `checkpoint_dir` (the run's --workdir), `output`, `step` (0 = newest), `backbone` ("" =
teacher / MAE encoder, or "student"), `formats`. See docs/interop.md.
"""

from pathfm.interop.export_run import export_config


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"unknown config argument {arg!r}; this config takes none")
    return export_config()

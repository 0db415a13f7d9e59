"""Export a training run's backbone as a timm ViT (safetensors, .pth, JSON, hubconf.py).

    python -m pathfm.main --config configs/export.py \
        --config.checkpoint=runs/quickstart --config.output=exports/quickstart

Keys: `checkpoint` (the run's --workdir; `checkpoint_dir` is accepted as an alias), `output`,
`step` (0 = the newest that reads), `backbone` ("" = teacher / MAE encoder, or "student"),
`formats`. See docs/interop.md.
"""

from pathfm.runs.export import export_config


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"unknown config argument {arg!r}; this config takes none")
    return export_config()

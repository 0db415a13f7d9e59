"""Prepare the slide index of `data.slides` once, before training on many hosts (docs/data.md).

  python -m pathfm.main --config configs/prepare.py --workdir runs/prepare \
      --config.data.slides=/data/tcga/manifest.csv --config.data.index_dir=/nfs/tcga_index

Pass the tissue settings (`data.mask_mpp`, `data.saturation_threshold`, ...) and `data.root` the
training run will use: the index is keyed by them. Launch it like training (SLURM, TPU pods,
--num_processes): each process prepares its share of the slides on every local core.
"""

from pathfm.config import base_config


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"unknown config argument {arg!r}; this config takes none")
    config = base_config()
    config.mode = "prepare"
    return config

"""Patch-level downstream data sets of kaiko-ai/eva, read from disk as their publishers
distribute them; nothing is downloaded. BACH, CRC, MHIST and PCam come with eva's splits (each
module says where its rule comes from); `image_folder` and `csv` read your own data.

    ds = load_dataset("crc", "/data/crc")
    ds.classes, ds.mpp, ds.splits()          # ('ADI', ..., 'TUM'), 0.5, ('train', 'val')
    image, label = ds.split("val")[0]        # uint8 [224, 224, 3], int
    for images, labels in ds.iter_batches("val", 256, size=224):  # uint8 [B, 224, 224, 3], [B]
        ...

A missing root, file or folder raises `DataError` with the path expected, the download address and
the layout. `size` resizes the shorter side to `size` (area when shrinking, bilinear when
enlarging) and keeps the central square (`resize_and_crop`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pathfm.errors import ConfigError
from pathfm.evaluation.datasets.bach import load_bach
from pathfm.evaluation.datasets.base import (
    ImageFileSplit,
    PatchDataset,
    PatchSplit,
    resize_and_crop,
    stratified_split,
)
from pathfm.evaluation.datasets.crc import load_crc
from pathfm.evaluation.datasets.generic import load_csv, load_image_folder
from pathfm.evaluation.datasets.mhist import load_mhist
from pathfm.evaluation.datasets.pcam import load_pcam
from pathfm.evaluation.datasets.tfds_source import (
    load_tfds,
    load_tfds_colorectal_histology,
    load_tfds_patch_camelyon,
)

DATASETS: dict[str, Callable[..., PatchDataset]] = {
    "bach": load_bach,
    "crc": load_crc,
    "mhist": load_mhist,
    "pcam": load_pcam,
    "image_folder": load_image_folder,
    "csv": load_csv,
    "tfds_patch_camelyon": load_tfds_patch_camelyon,
    "tfds_colorectal_histology": load_tfds_colorectal_histology,
}


def load_dataset(name: str, root: str | Path, **kwargs) -> PatchDataset:
    """The data set `name` (a key of DATASETS) read from `root` (for `csv`, the manifest)."""
    if name not in DATASETS:
        raise ConfigError(f"unknown data set {name!r}; known: {sorted(DATASETS)}")
    return DATASETS[name](root, **kwargs)


__all__ = [
    "DATASETS",
    "ImageFileSplit",
    "PatchDataset",
    "PatchSplit",
    "load_bach",
    "load_crc",
    "load_csv",
    "load_dataset",
    "load_image_folder",
    "load_mhist",
    "load_pcam",
    "load_tfds",
    "load_tfds_colorectal_histology",
    "load_tfds_patch_camelyon",
    "resize_and_crop",
    "stratified_split",
]

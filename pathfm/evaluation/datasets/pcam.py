"""PatchCamelyon (Veeling et al. 2018): 327,680 lymph-node H&E patches, 96 x 96 px, at 1.0 um/px
(kaiko-ai/eva docs/datasets/index.md), labelled tumour / no tumour, in the publisher's h5 files.

Splits as eva does (kaiko-ai/eva `src/eva/vision/data/datasets/classification/patch_camelyon.py`):
train (262,144), val (the `valid` files, 32,768) and test (32,768), classes no_tumor = 0,
tumor = 1. Images are read lazily from `x` [N, 96, 96, 3] uint8; labels `y` [N, 1, 1, 1] are read
whole (a few hundred kB).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pathfm.errors import DataError
from pathfm.evaluation.datasets.base import PatchDataset, Source

CLASSES = ("no_tumor", "tumor")
MPP = 1.0
FILE_SPLITS = {"train": "train", "val": "valid", "test": "test"}  # our split -> file infix
SOURCE = Source(
    title="PCam",
    download=(
        "the six camelyonpatch_level_2_split_*.h5.gz files from https://zenodo.org/records/2546921 "
        "(see https://github.com/basveeling/pcam)"
    ),
    layout="{root}/camelyonpatch_level_2_split_<train|valid|test>_<x|y>.h5 (gunzip each file)",
)


def _h5py():
    try:
        import h5py
    except ImportError as error:
        raise DataError("PCam needs h5py: pip install h5py") from error
    return h5py


class H5ImageSplit:
    """One PCam split: images read on demand from the h5 dataset `x` (the file is opened once per
    process), labels int64 [N] in memory."""

    def __init__(self, x_path: Path, labels: np.ndarray):
        self.x_path = x_path
        self.labels = labels
        self._file = None
        self._pid = None

    def _images(self):
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = _h5py().File(self.x_path, "r"), os.getpid()
        return self._file["x"]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        index = range(len(self))[index]  # negative indices, IndexError past the end
        return self._images()[index], int(self.labels[index])

    def read(self, start: int, stop: int) -> np.ndarray:
        """uint8 [stop - start, 96, 96, 3], one contiguous h5 read."""
        return self._images()[start:stop]


def _h5_file(root: Path, infix: str, key: str) -> Path:
    path = root / f"camelyonpatch_level_2_split_{infix}_{key}.h5"
    if not path.is_file():
        if path.with_name(path.name + ".gz").is_file():
            raise SOURCE.unusable(path.with_name(path.name + ".gz"), f"must be gunzipped to {path}")
        raise SOURCE.missing(path, root)
    return path


def load_pcam(root: str | Path) -> PatchDataset:
    """`root/camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5` -> splits train, val,
    test."""
    h5py, root = _h5py(), Path(root)
    split_data = {}
    for split, infix in FILE_SPLITS.items():
        x_path, y_path = _h5_file(root, infix, "x"), _h5_file(root, infix, "y")
        try:
            with h5py.File(y_path, "r") as y_file, h5py.File(x_path, "r") as x_file:
                labels = np.asarray(y_file["y"][:], np.int64).reshape(-1)
                shape, dtype = x_file["x"].shape, x_file["x"].dtype
        except (OSError, KeyError) as error:
            problem = f"has an unreadable {infix} h5 file ({error})"
            raise SOURCE.unusable(x_path.parent, problem) from error
        if len(shape) != 4 or shape[-1] != 3 or dtype != np.uint8 or shape[0] != len(labels):
            raise SOURCE.unusable(
                x_path, f"holds x {shape} {dtype} for {len(labels)} labels, not [N, H, W, 3] uint8"
            )
        split_data[split] = H5ImageSplit(x_path, labels)
    return PatchDataset("pcam", CLASSES, MPP, split_data)

"""BACH (ICIAR 2018 grand challenge, part A): 400 breast H&E microscopy photos, 2048 x 1536 px,
4 classes, 100 each, at 0.5 um/px (kaiko-ai/eva docs/datasets/index.md).

Split as eva does (kaiko-ai/eva `src/eva/vision/data/datasets/classification/bach.py`, class
`Bach`/`BACH`, `train_index_ranges` / `val_index_ranges`): the 400 `.tif` files are listed class by
class (Benign, InSitu, Invasive, Normal) and by sorted file name within a class, as torchvision's
`make_dataset` does, and index ranges that keep each patient's images together pick train (268
images) and val (132). There is no test split; eva reports val.
"""

from __future__ import annotations

from pathlib import Path

from pathfm.evaluation.datasets.base import ImageFileSplit, PatchDataset, Source

CLASSES = ("Benign", "InSitu", "Invasive", "Normal")
MPP = 0.5
NUM_IMAGES = 400
TRAIN_RANGES = ((0, 41), (59, 60), (90, 139), (169, 240), (258, 260), (273, 345), (368, 400))
VAL_RANGES = ((41, 59), (60, 90), (139, 169), (240, 258), (260, 273), (345, 368))
SOURCE = Source(
    title="BACH",
    download=(
        "ICIAR2018_BACH_Challenge.zip from https://zenodo.org/records/3632035 (or via "
        "https://iciar2018-challenge.grand-challenge.org/Dataset/)"
    ),
    layout="{root}/ICIAR2018_BACH_Challenge/Photos/<Benign|InSitu|Invasive|Normal>/*.tif "
    "(unzip the archive in {root})",
)


def load_bach(root: str | Path) -> PatchDataset:
    """`root/ICIAR2018_BACH_Challenge/Photos/<class>/*.tif` -> splits train and val (eva's)."""
    root = Path(root)
    photos = root / "ICIAR2018_BACH_Challenge" / "Photos"
    samples = []
    for label, name in enumerate(CLASSES):
        folder = photos / name
        if not folder.is_dir():
            raise SOURCE.missing(folder, root)
        tifs = sorted(p for p in folder.iterdir() if p.name.lower().endswith(".tif"))
        samples += [(path, label) for path in tifs]
    if len(samples) != NUM_IMAGES:
        raise SOURCE.unusable(
            photos, f"holds {len(samples)} .tif photos, not the {NUM_IMAGES} eva's split indexes"
        )
    everything = ImageFileSplit.from_samples(samples)
    split_data = {
        split: everything.subset([i for start, stop in ranges for i in range(start, stop)])
        for split, ranges in (("train", TRAIN_RANGES), ("val", VAL_RANGES))
    }
    return PatchDataset("bach", CLASSES, MPP, split_data)

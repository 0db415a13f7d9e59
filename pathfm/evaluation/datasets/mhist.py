"""MHIST (Wei et al. 2021): 3,152 colorectal polyp H&E images, 224 x 224 px, at 2.0 um/px
(kaiko-ai/eva docs/datasets/index.md: 5x, downsampled from 40x), hyperplastic polyp (HP) vs
sessile serrated adenoma (SSA).

Split as eva does (kaiko-ai/eva `src/eva/vision/data/datasets/classification/mhist.py`): the
`Partition` column of `annotations.csv` gives train (2,175) and test (977); labels are the
`Majority Vote Label`, with eva's indices SSA = 0, HP = 1. eva's MHIST config validates on, and
reports, the test split.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pathfm.evaluation.datasets.base import ImageFileSplit, PatchDataset, Source

CLASSES = ("SSA", "HP")
MPP = 2.0
SPLITS = ("train", "test")
SOURCE = Source(
    title="MHIST",
    download=(
        "images.zip and annotations.csv through the request form at "
        "https://bmirds.github.io/MHIST/ (the download links come by e-mail)"
    ),
    layout="{root}/annotations.csv and {root}/images/MHIST_*.png (unzip images.zip in {root})",
)


def load_mhist(root: str | Path) -> PatchDataset:
    """`root/annotations.csv` (Image Name, Majority Vote Label, Partition) and `root/images/*.png`
    -> splits train and test."""
    root = Path(root)
    annotations, images = root / "annotations.csv", root / "images"
    for expected in (annotations, images):
        if not expected.exists():
            raise SOURCE.missing(expected, root)
    with annotations.open(newline="") as file:
        rows = list(csv.DictReader(file))
    needed = ("Image Name", "Majority Vote Label", "Partition")
    if not rows or any(column not in rows[0] for column in needed):
        raise SOURCE.unusable(annotations, f"lacks the columns {list(needed)} or has no rows")
    samples: dict[str, list[tuple[Path, int]]] = {split: [] for split in SPLITS}
    for row in rows:
        label, split = row["Majority Vote Label"].strip(), row["Partition"].strip()
        if label not in CLASSES or split not in SPLITS:
            raise SOURCE.unusable(annotations, f"has label {label!r} / partition {split!r}")
        samples[split].append((images / row["Image Name"].strip(), CLASSES.index(label)))
    missing = [str(p) for split in SPLITS for p, _ in samples[split] if not p.is_file()]
    if missing:
        raise SOURCE.unusable(
            images, f"lacks {len(missing)} images named in annotations.csv, e.g. {missing[:5]}"
        )
    split_data = {split: ImageFileSplit.from_samples(samples[split]) for split in SPLITS}
    return PatchDataset("mhist", CLASSES, MPP, split_data)

"""CRC (Kather et al. 2018, zenodo 1214456): 224 x 224 px colorectal H&E tiles at 0.5 um/px in 9
tissue classes (resolution as in kaiko-ai/eva docs/datasets/index.md).

Split as eva does (kaiko-ai/eva `src/eva/vision/data/datasets/classification/crc.py`): train is
NCT-CRC-HE-100K (100,000 tiles, Macenko-normalised), val is CRC-VAL-HE-7K (7,180 tiles from 50
other patients); no test split, eva reports val. Class indices follow eva's `class_to_idx`, files
are sorted by name within a class.
"""

from __future__ import annotations

from pathlib import Path

from pathfm.evaluation.datasets.base import ImageFileSplit, PatchDataset, Source

CLASSES = ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")
MPP = 0.5
SOURCE = Source(
    title="CRC",
    download=("NCT-CRC-HE-100K.zip and CRC-VAL-HE-7K.zip from https://zenodo.org/records/1214456"),
    layout="{root}/NCT-CRC-HE-100K/<ADI|BACK|DEB|LYM|MUC|MUS|NORM|STR|TUM>/*.tif and "
    "{root}/CRC-VAL-HE-7K/<same classes>/*.tif (unzip both archives in {root})",
)


def load_crc(
    root: str | Path, train_folder: str = "NCT-CRC-HE-100K", val_folder: str = "CRC-VAL-HE-7K"
) -> PatchDataset:
    """`root/NCT-CRC-HE-100K/<class>/*.tif` (train) and `root/CRC-VAL-HE-7K/<class>/*.tif` (val).
    `train_folder="NCT-CRC-HE-100K-NONORM"` selects the unnormalised release."""
    root = Path(root)
    split_data = {}
    for split, folder_name in (("train", train_folder), ("val", val_folder)):
        samples = []
        for label, name in enumerate(CLASSES):
            folder = root / folder_name / name
            if not folder.is_dir():
                raise SOURCE.missing(folder, root)
            tifs = sorted(p for p in folder.iterdir() if p.name.lower().endswith(".tif"))
            samples += [(path, label) for path in tifs]
        if not samples:
            raise SOURCE.unusable(root / folder_name, "holds no .tif tiles")
        split_data[split] = ImageFileSplit.from_samples(samples)
    return PatchDataset("crc", CLASSES, MPP, split_data)

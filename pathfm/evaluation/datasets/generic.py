"""Two generic layouts for your own patch data sets: an image folder and a CSV manifest."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from pathfm.errors import DataError
from pathfm.evaluation.datasets.base import (
    SPLIT_NAMES,
    ImageFileSplit,
    PatchDataset,
    images_in,
    stratified_split,
)


def _split_by_seed(
    samples: ImageFileSplit, seed: int, val_fraction: float, test_fraction: float
) -> dict[str, ImageFileSplit]:
    indices = stratified_split(samples.labels, seed, val_fraction, test_fraction)
    return {split: samples.subset(members) for split, members in indices.items()}


def _class_samples(folder: Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    """(path, label) of the images in `folder/<class>/`, classes in order, files sorted."""
    return [
        (path, label)
        for label, name in enumerate(classes)
        if (folder / name).is_dir()
        for path in images_in(folder / name)
    ]


def load_image_folder(
    root: str | Path,
    classes: Sequence[str] | None = None,
    mpp: float | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    name: str = "image_folder",
) -> PatchDataset:
    """`root/<split>/<class>/*.png|jpg|jpeg|tif|tiff` with split in train/val/test, or, without
    split folders, `root/<class>/*` split by `stratified_split(labels, seed, val_fraction,
    test_fraction)`. Classes default to the sorted names of the class folders; a split folder may
    lack a class."""
    root = Path(root)
    layout = "root/[train|val|test/]<class>/*.png|jpg|tif"
    if not root.is_dir():
        raise DataError(f"{name}: folder {root} does not exist; expected {layout}")
    parents = [root / s for s in SPLIT_NAMES if (root / s).is_dir()] or [root]
    if classes is None:
        classes = sorted({p.name for parent in parents for p in parent.iterdir() if p.is_dir()})
    if not classes:
        raise DataError(f"{name}: no class folders in {root}; expected {layout}")
    for c in classes:
        if not any((parent / c).is_dir() for parent in parents):
            raise DataError(f"{name}: no folder for class {c!r} in {root}; expected {layout}")
    if parents == [root]:
        samples = ImageFileSplit.from_samples(_class_samples(root, classes))
        split_data = _split_by_seed(samples, seed, val_fraction, test_fraction)
    else:
        split_data = {
            p.name: ImageFileSplit.from_samples(_class_samples(p, classes)) for p in parents
        }
    return PatchDataset(name, tuple(classes), mpp, split_data)


def load_csv(
    path: str | Path,
    classes: Sequence[str] | None = None,
    mpp: float | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    name: str = "csv",
) -> PatchDataset:
    """A CSV manifest with columns `path,label[,split]`: paths absolute or relative to the CSV's
    folder, labels class names, split train/val/test (without a split column: `stratified_split`
    as in `load_image_folder`). Classes default to the sorted label names. Missing images are
    reported all at once."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{name}: manifest {path} does not exist; expected a CSV path,label[,split]"
        )
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    columns = set(rows[0]) if rows else set()
    if not rows or not {"path", "label"} <= columns:
        raise DataError(f"{name}: {path} needs a header path,label[,split] and at least one row")
    classes = tuple(classes) if classes is not None else tuple(sorted({r["label"] for r in rows}))
    unknown = sorted({r["label"] for r in rows} - set(classes))
    if unknown:
        raise DataError(f"{name}: {path} has labels {unknown} outside the classes {list(classes)}")
    image_paths = [path.parent / r["path"] for r in rows]  # an absolute path stays absolute
    missing = [str(p) for p in image_paths if not p.is_file()]
    if missing:
        raise DataError(f"{name}: {path} names {len(missing)} missing images: {missing[:20]}")
    label_of = {c: i for i, c in enumerate(classes)}
    everything = ImageFileSplit.from_samples(
        [(p, label_of[r["label"]]) for p, r in zip(image_paths, rows, strict=True)]
    )
    if "split" not in columns:
        split_data = _split_by_seed(everything, seed, val_fraction, test_fraction)
    else:
        bad_splits = sorted({r["split"] for r in rows} - set(SPLIT_NAMES))
        if bad_splits:
            raise DataError(f"{name}: {path} has splits {bad_splits}; use train, val or test")
        members = {s: [i for i, r in enumerate(rows) if r["split"] == s] for s in SPLIT_NAMES}
        split_data = {s: everything.subset(m) for s, m in members.items() if m}
    return PatchDataset(name, classes, mpp, split_data)

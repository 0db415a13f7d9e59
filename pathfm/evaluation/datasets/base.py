"""The common interface of patch data sets, image reading, the resize policy and a deterministic
stratified split."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from pathfm.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SPLIT_NAMES = ("train", "val", "test")


class PatchSplit(Protocol):
    """One split: `len`, item i -> (uint8 RGB image [H, W, 3], label) and `labels` int64 [N]."""

    labels: np.ndarray

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]: ...

    def read(self, start: int, stop: int) -> Sequence[np.ndarray]:
        """Images start..stop-1, each uint8 [H, W, 3]."""
        ...


@dataclasses.dataclass(frozen=True)
class PatchDataset:
    """A labelled patch data set: class names (label i is `classes[i]`), native resolution in um/px
    (None when unknown) and its named splits."""

    name: str
    classes: tuple[str, ...]
    mpp: float | None
    split_data: Mapping[str, PatchSplit]

    def splits(self) -> tuple[str, ...]:
        """The available split names, in train/val/test order."""
        return tuple(s for s in SPLIT_NAMES if s in self.split_data)

    def split(self, split: str) -> PatchSplit:
        """The split named `split` (one of `splits()`)."""
        if split not in self.split_data:
            raise DataError(f"{self.name} has no split {split!r}; it has {list(self.splits())}")
        return self.split_data[split]

    def iter_batches(
        self, split: str, batch_size: int, size: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(images uint8 [B, size, size, 3], or [B, H, W, 3] as stored when `size` is None;
        labels int64 [B]) in split order. The last batch may be smaller."""
        data = self.split(split)
        for start in range(0, len(data), batch_size):
            stop = min(start + batch_size, len(data))
            images = data.read(start, stop)
            if size is not None:
                images = [resize_and_crop(image, size) for image in images]
            elif len({image.shape for image in images}) > 1:
                raise DataError(f"{self.name}/{split}: images differ in size; pass size=...")
            yield np.stack(images), data.labels[start:stop]


def resize_and_crop(image: np.ndarray, size: int) -> np.ndarray:
    """[H, W, 3] -> [size, size, 3], as eva's ResizeAndCrop: the shorter side scaled to `size`
    (cv2.INTER_AREA when shrinking, cv2.INTER_LINEAR when enlarging, the longer side rounded to the
    nearest pixel), then the central square (offset (L - size) // 2)."""
    height, width = image.shape[:2]
    scale = size / min(height, width)
    if scale != 1:
        new_height, new_width = max(size, round(height * scale)), max(size, round(width * scale))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, (new_width, new_height), interpolation=interpolation)
        height, width = new_height, new_width
    top, left = (height - size) // 2, (width - size) // 2
    return image[top : top + size, left : left + size]


def read_rgb(path: Path) -> np.ndarray:
    """An image file as uint8 RGB [H, W, 3] (grey replicated, alpha dropped, 16 bit scaled)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"cannot read image {path}: missing, truncated or not an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@dataclasses.dataclass(frozen=True)
class ImageFileSplit:
    """A split of image files: `paths[i]` has label `labels[i]`."""

    paths: tuple[Path, ...]
    labels: np.ndarray  # int64 [N]

    @classmethod
    def from_samples(cls, samples: Sequence[tuple[Path, int]]) -> ImageFileSplit:
        return cls(tuple(p for p, _ in samples), np.array([y for _, y in samples], np.int64))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return read_rgb(self.paths[index]), int(self.labels[index])

    def read(self, start: int, stop: int) -> list[np.ndarray]:
        return [read_rgb(path) for path in self.paths[start:stop]]

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageFileSplit:
        indices = np.asarray(indices, np.int64)
        return ImageFileSplit(tuple(self.paths[i] for i in indices), self.labels[indices])


def images_in(folder: Path) -> list[Path]:
    """Image files directly in `folder` (IMAGE_EXTENSIONS, any case), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def stratified_split(
    labels: np.ndarray, seed: int, val_fraction: float, test_fraction: float = 0.0
) -> dict[str, np.ndarray]:
    """Split indices [N] by class: within each class, `np.random.default_rng([seed, label])`
    permutes its members, the first round-half-up(n * test_fraction) go to test, the next
    round-half-up(n * val_fraction) to val, the rest to train. Indices sorted; empty splits are
    left out."""
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLIT_NAMES}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = np.random.default_rng([seed, int(label)]).permutation(members)
        n_test = int(np.floor(len(members) * test_fraction + 0.5))
        n_val = int(np.floor(len(members) * val_fraction + 0.5))
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test : n_test + n_val])
        parts["train"].append(members[n_test + n_val :])
    merged = {
        s: np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for s, p in parts.items()
    }
    return {s: indices for s, indices in merged.items() if len(indices)}


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a public data set comes from and how its files must be laid out under `root`."""

    title: str
    download: str
    layout: str  # with {root}

    def missing(self, path: Path, root: Path) -> DataError:
        """The error for an expected file or folder that is not there."""
        return DataError(
            f"{self.title}: expected {path}, which does not exist. Nothing is downloaded at run "
            f"time: download {self.download}, and lay it out as {self.layout.format(root=root)}"
        )

    def unusable(self, path: Path, problem: str) -> DataError:
        """The error for a file or folder that is there but not as published."""
        return DataError(f"{self.title}: {path} {problem}. Get a complete copy: {self.download}")

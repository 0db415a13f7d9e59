"""TFDS patch data sets (tensorflow/datasets) read through `tfds.data_source`: random access to the
ArrayRecord files of a data set already prepared in a TFDS data_dir, without TensorFlow. Nothing is
downloaded or generated at run time.

- `patch_camelyon`: TFDS train / validation / test -> train / val / test (eva's PCam splits, the
  same sets as `load_pcam`, in TFDS's record order), classes no_tumor = 0, tumor = 1.
- `colorectal_histology` (Kather et al. 2016; not the `crc` NCT-CRC-HE-100K): TFDS has only
  `train` (5,000 tiles, 150 px, 8 classes), split here by `stratified_split(labels, seed,
  val_fraction, test_fraction)` over the tiles ordered by (label, filename), so the split depends
  on the tiles only, not on TFDS's record order. The defaults give 3,000 / 1,000 / 1,000 (375 /
  125 / 125 per class).

Images are decoded from the stored PNG bytes with OpenCV to uint8 RGB; a split's labels are read in
one pass over its records the first time they are needed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pathfm.errors import ConfigError, DataError
from pathfm.evaluation.datasets.base import PatchDataset, stratified_split

READ_CHUNK = 4096  # records per __getitems__ call when scanning labels


@dataclasses.dataclass(frozen=True)
class TFDSSpec:
    """How a TFDS data set maps onto a PatchDataset."""

    splits: Mapping[str, str] | None  # our split -> TFDS split; None: stratified split of `train`
    classes: tuple[str, ...] | None  # None: the TFDS ClassLabel names
    mpp: float
    key: str  # the text feature naming a record, for a split independent of record order


KNOWN = {
    # TFDS's ClassLabel names are "0", "1"; the names of load_pcam are used instead. mpp 1.0 as in
    # eva's docs and load_pcam; the physical value is 0.972 (level 2 of 0.243 um/px scans).
    "patch_camelyon": TFDSSpec(
        {"train": "train", "val": "validation", "test": "test"}, ("no_tumor", "tumor"), 1.0, "id"
    ),
    "colorectal_histology": TFDSSpec(None, None, 0.495, "filename"),
}


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise DataError(
            "reading TFDS data sets needs tensorflow-datasets and array-record (not TensorFlow): "
            "pip install tensorflow-datasets array-record"
        ) from error
    return tfds


def _not_prepared(name: str, data_dir: Path, expected: Path, problem: str) -> DataError:
    return DataError(
        f"TFDS {name} {problem} (expected {expected}/dataset_info.json and ArrayRecord shards "
        f"under data_dir {data_dir}). Nothing is downloaded at run time. On a machine with "
        f"internet and TensorFlow (pip install tensorflow tensorflow-datasets array-record), run "
        f"`tfds build {name} --data_dir={data_dir} --file_format=array_record` and copy "
        f"{data_dir / name} here. tfds.data_source reads only the array_record format; a copy "
        f"built as tfrecord converts with `tfds convert_format --dataset_version_dir={expected} "
        f"--out_file_format=array_record`."
    )


def _decode(raw: bytes, where: str) -> np.ndarray:
    """Stored image bytes (PNG) -> uint8 RGB [H, W, 3]."""
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), flags)
    if image is None:
        raise DataError(f"{where}: the stored image cannot be decoded; rebuild the data set")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _scan(source: Sequence[dict[str, Any]], indices: np.ndarray, feature: str) -> list[Any]:
    """`feature` of records `indices`, read in chunks (images are not decoded)."""
    values = []
    for start in range(0, len(indices), READ_CHUNK):
        chunk = [int(i) for i in indices[start : start + READ_CHUNK]]
        values.extend(record[feature] for record in source.__getitems__(chunk))
    return values


class TFDSSplit:
    """Records `indices` [N] of one TFDS split, read on demand from its data source; labels int64
    [N], read in one pass on first use unless given."""

    def __init__(
        self,
        source: Sequence[dict[str, Any]],
        where: str,
        indices: np.ndarray | None = None,
        labels: np.ndarray | None = None,
    ):
        self.source = source
        self.where = where
        self.indices = np.arange(len(source), dtype=np.int64) if indices is None else indices
        self._labels = labels

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = np.array(_scan(self.source, self.indices, "label"), np.int64)
        return self._labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        index = range(len(self))[index]  # negative indices, IndexError past the end
        record = self.source[int(self.indices[index])]
        return _decode(record["image"], f"{self.where}[{index}]"), int(record["label"])

    def read(self, start: int, stop: int) -> list[np.ndarray]:
        """Images start..stop-1, uint8 RGB [H, W, 3], one batched read."""
        chunk = [int(i) for i in self.indices[start:stop]]
        records = self.source.__getitems__(chunk) if chunk else []
        return [_decode(r["image"], f"{self.where}[{start + i}]") for i, r in enumerate(records)]


def _stratified(
    source: Sequence[dict[str, Any]],
    where: str,
    key: str,
    seed: int,
    val_fraction: float,
    test_fraction: float,
) -> dict[str, TFDSSplit]:
    """Split all records by `stratified_split`, over the records sorted by (label, key)."""
    everything = np.arange(len(source), dtype=np.int64)
    labels = np.array(_scan(source, everything, "label"), np.int64)
    keys = _scan(source, everything, key)
    order = np.array(sorted(everything, key=lambda i: (labels[i], keys[i])), np.int64)
    parts = stratified_split(labels[order], seed, val_fraction, test_fraction)
    members = {split: np.sort(order[p]) for split, p in parts.items()}  # record indices, ascending
    return {
        split: TFDSSplit(source, f"{where}/{split}", indices, labels[indices])
        for split, indices in members.items()
    }


def load_tfds(
    name: str,
    data_dir: str | Path,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
) -> PatchDataset:
    """The TFDS data set `name` (a key of KNOWN, optionally `name:version`) prepared in ArrayRecord
    format under `data_dir`. `seed`, `val_fraction` and `test_fraction` split data sets that TFDS
    publishes as `train` only (colorectal_histology)."""
    base_name, _, version = name.partition(":")
    if base_name not in KNOWN:
        raise ConfigError(f"unknown TFDS data set {name!r}; known: {sorted(KNOWN)}")
    spec, data_dir = KNOWN[base_name], Path(data_dir).expanduser()
    tfds = _tfds()
    expected = data_dir / base_name / (version or str(tfds.builder_cls(base_name).VERSION))
    if not (expected / "dataset_info.json").is_file():  # checked first: tfds.builder would warn
        raise _not_prepared(base_name, data_dir, expected, "is not prepared")
    try:
        builder = tfds.builder(name, data_dir=str(data_dir))
        formats = sorted(f.value for f in builder.info.available_file_formats())
    except (ValueError, AssertionError) as error:
        raise _not_prepared(base_name, data_dir, expected, f"cannot be read ({error})") from error
    if "array_record" not in formats:
        problem = f"is prepared as {', '.join(formats) or 'nothing'}, not array_record"
        raise _not_prepared(base_name, data_dir, expected, problem)
    decoders = {"image": tfds.decode.SkipDecoding()}  # decoded in TFDSSplit
    sources = builder.as_data_source(decoders=decoders, file_format="array_record")
    sources = {str(split): source for split, source in sources.items()}
    missing = sorted(set((spec.splits or {"train": "train"}).values()) - set(sources))
    if missing:
        raise _not_prepared(base_name, data_dir, expected, f"lacks splits {missing}")
    where = f"tfds {base_name} in {data_dir}"
    if spec.splits is None:
        split_data = _stratified(
            sources["train"], where, spec.key, seed, val_fraction, test_fraction
        )
    else:
        split_data = {
            split: TFDSSplit(sources[tfds_split], f"{where}/{tfds_split}")
            for split, tfds_split in spec.splits.items()
        }
    tfds_classes = tuple(builder.info.features["label"].names)
    classes = spec.classes or tfds_classes
    if len(classes) != len(tfds_classes):
        raise DataError(f"{where}: {len(tfds_classes)} classes, not {len(classes)}; rebuild it")
    return PatchDataset(f"tfds_{base_name}", classes, spec.mpp, split_data)


def load_tfds_patch_camelyon(data_dir: str | Path) -> PatchDataset:
    """TFDS `patch_camelyon` under `data_dir`: train / val / test, 96 px, 2 classes."""
    return load_tfds("patch_camelyon", data_dir)


def load_tfds_colorectal_histology(
    data_dir: str | Path, seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2
) -> PatchDataset:
    """TFDS `colorectal_histology` under `data_dir`: a seeded stratified train / val / test split
    of its 5,000 tiles, 150 px, 8 classes."""
    return load_tfds("colorectal_histology", data_dir, seed, val_fraction, test_fraction)

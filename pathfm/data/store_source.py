"""Training samples from a pre-extracted tile store: any TFDS image data set in ArrayRecord format.

Campanella et al.'s regime: a fixed tile set visited once per epoch in a fresh order. Global sample
index i -> epoch e = i // N, position p = i % N -> record perm_e(p) of the N records, where perm_e
is a bijection of [0, N) seeded by (seed, e) (`EpochPermutation`: a keyed Feistel network, O(1)
memory whatever N). As with online patching every sample is a pure function of (seed, i), so the
stream is the same for any number of workers and hosts, and a checkpoint needs only the next i.

Records are read with `tfds.data_source` (random access to the ArrayRecord shards, no TensorFlow);
the image feature is read as its stored bytes and decoded here with OpenCV (uint8 RGB).
The pathfm store (`python -m pathfm.build_tile_store`) holds image, slide, x, y, mpp and
tissue_fraction; a set without some of them (e.g. only image and label) gets neutral provenance.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import cv2
import ml_collections
import numpy as np

from pathfm.errors import DataError

_MASK64 = (1 << 64) - 1
BUILD_HINT = (
    "Build a tile store with `python -m pathfm.build_tile_store --config <config> --out DIR` "
    "and set data.tfds_dir=DIR and data.tfds_name=pathfm_tiles/<config>, or point them at any "
    "TFDS image data set prepared in ArrayRecord format (tfds.data_source reads only "
    "array_record: pip install tensorflow-datasets array-record; a tfrecord copy converts with "
    "`tfds convert_format --out_file_format=array_record`)"
)


def _tfds():
    """tensorflow_datasets, imported on first use: an optional dependency of slide training."""
    try:
        import tensorflow_datasets as tfds  # optional dependency: only tile-store runs need it
    except ImportError as error:
        raise DataError(
            "data.source='tfds' needs tensorflow-datasets and array-record (not TensorFlow): "
            "pip install tensorflow-datasets array-record"
        ) from error
    return tfds


def _mix(x: int) -> int:
    """splitmix64's finaliser: a 64-bit integer hash, the Feistel round function."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class EpochPermutation:
    """perm_e: [0, n) -> [0, n), one pseudo-random bijection per epoch e, seeded by (seed, e).

    A balanced Feistel network of ROUNDS rounds over the 2h-bit integers (2^(2h) >= n, so less
    than 4n) is a bijection for any round keys; cycle walking (re-applying it until the value
    falls below n) restricts it to [0, n), at fewer than 4 applications on average. Memory is
    O(1) whatever n (an explicit permutation of 3.2 billion tiles is 25 GB per worker), and a
    lookup costs microseconds.
    """

    ROUNDS = 6

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise ValueError(f"a permutation needs n >= 1, got {n}")
        self.n, self.seed = n, seed
        self.half_bits = max(1, ((n - 1).bit_length() + 1) // 2)
        self.half_mask = (1 << self.half_bits) - 1
        self._keys: dict[int, tuple[int, ...]] = {}

    def keys(self, epoch: int) -> tuple[int, ...]:
        """The round keys of `epoch` (the last few epochs' are kept)."""
        keys = self._keys.get(epoch)
        if keys is None:
            seeds = np.random.SeedSequence([self.seed, epoch])
            keys = tuple(int(k) for k in seeds.generate_state(self.ROUNDS, np.uint64))
            if len(self._keys) >= 4:
                self._keys.clear()
            self._keys[epoch] = keys
        return keys

    def __call__(self, epoch: int, position: int) -> int:
        """The record at `position` of epoch `epoch`'s order."""
        if not 0 <= position < self.n:
            raise IndexError(f"position {position} outside [0, {self.n})")
        keys, h, mask = self.keys(epoch), self.half_bits, self.half_mask
        x = position
        while True:
            left, right = x >> h, x & mask
            for k in keys:
                left, right = right, left ^ (_mix(right ^ k) & mask)
            x = (left << h) | right
            if x < self.n:
                return x


def version_dirs(data_dir: str, name: str) -> list[Path]:
    """The prepared versions of `name` ("dataset[/config][:version]") under `data_dir`, newest
    last: folders holding a dataset_info.json."""
    base, _, version = name.partition(":")
    root = Path(data_dir).expanduser() / base
    if version:
        return [root / version] if (root / version / "dataset_info.json").is_file() else []
    found = [p.parent for p in root.glob("*/dataset_info.json")]
    return sorted(found, key=lambda p: tuple(int(v) for v in p.name.split(".") if v.isdigit()))


def open_builder(name: str, data_dir: str):
    """The TFDS builder of a prepared data set: `tfds.builder` (a registered class, or the files
    of `data_dir`), else `tfds.builder_from_directory` on its newest version folder."""
    tfds = _tfds()
    try:
        return tfds.builder(name, data_dir=data_dir or None)
    except Exception as error:  # DatasetNotFoundError, or a registered class that cannot load
        found = version_dirs(data_dir or str(tfds.core.constants.DATA_DIR), name)
        if not found:
            raise DataError(
                f"data.tfds_name: no prepared TFDS data set {name!r} in data.tfds_dir "
                f"{data_dir or '(the TFDS default)'} ({type(error).__name__}). {BUILD_HINT}"
            ) from None
        return tfds.builder_from_directory(str(found[-1]))


def open_split(name: str, data_dir: str, split: str, image_key: str):
    """(random-access records of `split` with `image_key` left as stored bytes, its features)."""
    tfds = _tfds()
    builder = open_builder(name, data_dir)
    features = builder.info.features
    where = f"TFDS {name} ({builder.data_dir})"
    if image_key not in features:
        raise DataError(
            f"data.tfds_image_key: {where} has no feature {image_key!r}; its features are "
            f"{sorted(features.keys())}: set data.tfds_image_key to its image feature"
        )
    image = features[image_key]
    if not isinstance(image, tfds.features.Image):
        raise DataError(
            f"data.tfds_image_key: feature {image_key!r} of {where} is a "
            f"{type(image).__name__}, not an image; name its image feature"
        )
    shape, dtype = tuple(image.shape), np.dtype(image.np_dtype)
    if shape[-1] != 3 or dtype != np.uint8:
        raise DataError(
            f"{where}: training needs 3-channel uint8 (RGB) images, {image_key!r} is "
            f"{dtype.name} {shape}; rebuild the store with RGB tiles"
        )
    if split not in builder.info.splits:
        raise DataError(
            f"data.tfds_split: {where} has no split {split!r}; it has {sorted(builder.info.splits)}"
        )
    try:
        source = builder.as_data_source(split, decoders={image_key: tfds.decode.SkipDecoding()})
    except Exception as error:  # e.g. a tfrecord copy: data sources need array_record
        message = f"{where} split {split!r} cannot be opened ({error}). {BUILD_HINT}"
        raise DataError(message) from None
    if len(source) == 0:
        raise DataError(f"{where} split {split!r} holds no records. {BUILD_HINT}")
    return source, features


def decode_image(raw: bytes, where: str) -> np.ndarray:
    """Stored image bytes (JPEG or PNG) -> uint8 RGB [H, W, 3]; DataError otherwise."""
    flags = cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), flags)
    if image is None:
        raise DataError(f"{where}: the stored image cannot be decoded; rebuild the store")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(
            f"{where}: training needs 3-channel uint8 (RGB) images, got {image.dtype} "
            f"{image.shape}; rebuild the store with RGB tiles"
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclasses.dataclass
class StoreSampler:
    """Sample i of the stream -> the record of epoch i // N at position i % N, decoded.

    Picklable for grain's workers: it pickles as its settings; each process opens the data
    source on first use. `min_size` is the smallest image side the crops need."""

    name: str
    data_dir: str
    split: str
    image_key: str
    seed: int
    min_size: int = 0

    def __post_init__(self):
        self._source = None
        self.size = len(self.source)
        self.permutation = EpochPermutation(self.size, self.seed)

    @property
    def source(self):
        if self._source is None:
            self._source, _ = open_split(self.name, self.data_dir, self.split, self.image_key)
        return self._source

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_source"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _source=None)

    def record(self, index: int) -> int:
        """The record of global sample `index`."""
        epoch, position = divmod(int(index), self.size)
        return self.permutation(epoch, position)

    def image(self, record: int, example: dict | None = None) -> np.ndarray:
        """uint8 RGB [H, W, 3] of `record` (of its `example`, if read already)."""
        example = self.source[record] if example is None else example
        where = f"TFDS {self.name} {self.split} record {record}"
        image = decode_image(example[self.image_key], where)
        if min(image.shape[:2]) < self.min_size:
            raise DataError(
                f"{where}: a {image.shape[1]}x{image.shape[0]} px image is smaller than the "
                f"{self.min_size} px crops (crops.global_size / crops.local_size); lower them or "
                "rebuild the store with larger tiles"
            )
        return image

    def draw(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Sample `index`: image uint8 [H, W, 3] and provenance as the slide sampler gives it.
        `slide` is the record number (`slide_name` gives its slide); x/y, mpp and tissue come
        from the store's x, y, mpp and tissue_fraction, else 0 (x, y) and NaN (unknown)."""
        del rng  # the record follows from the index; the crops draw from rng afterwards
        record = self.record(index)
        example = self.source[record]
        return {
            "image": self.image(record, example),
            "slide": np.int64(record),
            "x": np.int64(example.get("x", 0)),
            "y": np.int64(example.get("y", 0)),
            "mpp": np.float32(example.get("mpp", math.nan)),
            "tissue": np.float32(example.get("tissue_fraction", math.nan)),
            "read_errors": np.int32(0),
        }

    def slide_name(self, record: int) -> str:
        """The slide a record came from (its `slide` feature), or the record's address."""
        slide = self.source[int(record)].get("slide")
        where = f"{self.name} {self.split} record {int(record)}"
        return f"{_text(slide)} ({where})" if slide is not None else where


def crop_floor(config: ml_collections.ConfigDict) -> int:
    """The smallest image side the configured crops can be cut from."""
    cr = config.crops
    return max(cr.global_size, cr.local_size if cr.n_local else 0)


@dataclasses.dataclass
class TrainingStore:
    """What a tile-store run trains on: the store's name and its sampler (the interface of
    `pipeline.TrainingSlides`)."""

    source: str
    sampler: StoreSampler

    def probe_sampler(self, config: ml_collections.ConfigDict) -> StoreSampler:
        """The monitor's probe sampler: the same store (its probe indices lie past the training
        stream, in epochs training never reaches, so the set is fixed; tiles may overlap)."""
        del config
        return self.sampler

    def slide_name(self, record: int) -> str:
        return self.sampler.slide_name(record)

    def report(self, config: ml_collections.ConfigDict, workdir: str | Path) -> list[str]:
        """Writes <workdir>/store.json (the store and its size); returns the start-up log lines."""
        s = self.sampler
        report = {
            "tfds_name": s.name,
            "tfds_dir": s.data_dir,
            "split": s.split,
            "image_key": s.image_key,
            "records": s.size,
            "steps_per_data_epoch": s.size / config.batch_size,
        }
        path = Path(workdir) / "store.json"
        path.write_text(json.dumps(report, indent=2))
        epochs = config.epochs * config.steps_per_epoch * config.batch_size / s.size
        return [
            f"tile store {s.name} ({s.split}): {s.size} records, the run visits each "
            f"{epochs:.2f} times; {path}"
        ]


def training_store(config: ml_collections.ConfigDict) -> TrainingStore:
    """The store of `data.tfds_*`, opened and checked before training: a DataError names a
    missing store, a missing split or feature, or images the crops cannot be cut from."""
    d = config.data
    sampler = StoreSampler(
        d.tfds_name, d.tfds_dir, d.tfds_split, d.tfds_image_key, config.seed, crop_floor(config)
    )
    sampler.image(sampler.record(0))  # the first sample decodes and fits the crops
    return TrainingStore(d.tfds_name, sampler)

"""The TFDS adapter on real TFDS data sets (ArrayRecord shards, dataset_info.json, features.json)
built here with TFDS's own builder, without TensorFlow: same names, versions and features as TFDS's
`patch_camelyon` and `colorectal_histology`, random images stored as PNG bytes (encoding an array
would need TensorFlow; the records are the same)."""

import json
import shutil
import sys

import cv2
import numpy as np
import pytest

from pathfm.errors import ConfigError, DataError
from pathfm.evaluation.datasets.base import stratified_split
from pathfm.evaluation.datasets.tfds_source import (
    load_tfds,
    load_tfds_colorectal_histology,
    load_tfds_patch_camelyon,
)

CRC_CLASSES = ("tumor", "stroma", "complex", "lympho", "debris", "mucosa", "adipose", "empty")
PCAM_SIZES = {"train": 6, "validation": 3, "test": 4}
PCAM_FILE_ORDER = ("test", "train", "validation")
CRC_PER_CLASS = 5


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def _builder_class(tfds, class_name, features, key_feature, splits):
    """A TFDS builder named after `class_name` (snake case), version 2.0.0, writing `splits`
    {split: [(image, label, key)]} with the image as PNG bytes and the key as `key_feature`."""

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(items) for split, items in splits.items()}

    def _generate_examples(self, items):
        for image, label, key in items:
            yield key, {"image": _png(image), "label": label, key_feature: key}

    namespace = {
        "VERSION": tfds.core.Version("2.0.0"),
        "_info": _info,
        "_split_generators": _split_generators,
        "_generate_examples": _generate_examples,
    }
    return type(class_name, (tfds.core.GeneratorBasedBuilder,), namespace, skip_registration=True)


def _build(tfds, data_dir, rng):
    """Prepare both data sets in `data_dir` with TFDS's features; return what was written:
    {(name, split): [(image, label, key)]}."""
    pcam = {
        split: [
            (rng.integers(0, 256, (96, 96, 3), np.uint8), i % 2, f"{split}_{i}") for i in range(n)
        ]
        for split, n in PCAM_SIZES.items()
    }
    crc = [
        (rng.integers(0, 256, (150, 150, 3), np.uint8), label, f"{name}_{k:02d}.tif")
        for label, name in enumerate(CRC_CLASSES)
        for k in range(CRC_PER_CLASS)
    ]
    pcam_features = {
        "id": tfds.features.Text(),
        "image": tfds.features.Image(shape=(96, 96, 3), encoding_format="png"),
        "label": tfds.features.ClassLabel(num_classes=2),
    }
    crc_features = {
        "image": tfds.features.Image(shape=(150, 150, 3)),
        "label": tfds.features.ClassLabel(names=CRC_CLASSES),
        "filename": tfds.features.Text(),
    }
    for builder_class in (
        _builder_class(tfds, "PatchCamelyon", pcam_features, "id", pcam),
        _builder_class(tfds, "ColorectalHistology", crc_features, "filename", {"train": crc}),
    ):
        builder = builder_class(data_dir=str(data_dir), file_format="array_record")
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig())
    written = {("patch_camelyon", split): items for split, items in pcam.items()}
    return written | {("colorectal_histology", "train"): crc}


@pytest.fixture(scope="module")
def tfds_data(tmp_path_factory):
    import tensorflow_datasets as tfds  # in the test extra: never skipped in CI

    data_dir = tmp_path_factory.mktemp("tfds")
    with pytest.MonkeyPatch.context() as patch:
        # A new builder looks up GCS (disabled) after making a temp dir it never removes.
        patch.setattr(tfds.core.DatasetInfo, "initialize_from_bucket", lambda self: None)
        written = _build(tfds, data_dir, np.random.default_rng(0))
    assert "tensorflow" not in sys.modules
    return data_dir, written


def _as_written(images, labels):
    """{image bytes: label} of a split read through the adapter."""
    return {image.tobytes(): int(label) for image, label in zip(images, labels, strict=True)}


def _by_bytes(items):
    """{image bytes: label} of what was written."""
    return {image.tobytes(): label for image, label, _ in items}


def test_patch_camelyon_splits_pixels_and_labels(tfds_data):
    data_dir, written = tfds_data
    assert sorted(p.name for p in (data_dir / "patch_camelyon" / "2.0.0").iterdir()) == [
        "dataset_info.json",
        "features.json",
        *(f"patch_camelyon-{s}.array_record-00000-of-00001" for s in PCAM_FILE_ORDER),
    ]
    ds = load_tfds_patch_camelyon(data_dir)
    assert (ds.name, ds.classes, ds.mpp, ds.splits()) == (
        "tfds_patch_camelyon",
        ("no_tumor", "tumor"),
        1.0,
        ("train", "val", "test"),
    )
    for split, tfds_split in (("train", "train"), ("val", "validation"), ("test", "test")):
        data = ds.split(split)
        assert len(data) == len(data.labels) == PCAM_SIZES[tfds_split]
        assert data.labels.dtype == np.int64
        images = data.read(0, len(data))
        assert all(image.dtype == np.uint8 and image.shape == (96, 96, 3) for image in images)
        assert _as_written(images, data.labels) == _by_bytes(written["patch_camelyon", tfds_split])
        image, label = data[-1]
        assert np.array_equal(image, images[-1]) and label == data.labels[-1]
    with pytest.raises(IndexError):
        ds.split("test")[PCAM_SIZES["test"]]


def test_iter_batches(tfds_data):
    data_dir, written = tfds_data
    ds = load_tfds("patch_camelyon", data_dir)
    batches = list(ds.iter_batches("train", batch_size=4))
    assert [(x.shape, x.dtype, y.shape, y.dtype) for x, y in batches] == [
        ((4, 96, 96, 3), np.uint8, (4,), np.int64),
        ((2, 96, 96, 3), np.uint8, (2,), np.int64),
    ]
    images, labels = (np.concatenate(arrays) for arrays in zip(*batches, strict=True))
    assert _as_written(images, labels) == _by_bytes(written["patch_camelyon", "train"])
    resized = [x.shape for x, _ in ds.iter_batches("test", batch_size=3, size=64)]
    assert resized == [(3, 64, 64, 3), (1, 64, 64, 3)]


def test_colorectal_histology_stratified_split(tfds_data):
    data_dir, written = tfds_data
    ds = load_tfds_colorectal_histology(data_dir)
    assert (ds.name, ds.classes, ds.mpp, ds.splits()) == (
        "tfds_colorectal_histology",
        CRC_CLASSES,
        0.495,
        ("train", "val", "test"),
    )
    # The rule: stratified_split over the tiles sorted by (label, filename).
    items = sorted(written["colorectal_histology", "train"], key=lambda t: (t[1], t[2]))
    parts = stratified_split(np.array([label for _, label, _ in items]), 0, 0.2, 0.2)
    seen = set()
    for split, n_per_class in (("train", 3), ("val", 1), ("test", 1)):
        data = ds.split(split)
        assert np.array_equal(np.bincount(data.labels, minlength=8), [n_per_class] * 8)
        got = _as_written(data.read(0, len(data)), data.labels)
        assert got == _by_bytes([items[i] for i in parts[split]])
        seen |= got.keys()
    assert len(seen) == 8 * CRC_PER_CLASS
    other = load_tfds_colorectal_histology(data_dir, seed=1, val_fraction=0.4, test_fraction=0)
    assert other.splits() == ("train", "val") and len(other.split("val")) == 16
    assert not np.array_equal(other.split("train").indices, ds.split("train").indices)


def test_not_prepared(tfds_data, tmp_path):
    empty = tmp_path / "empty"
    with pytest.raises(DataError) as error:
        load_tfds("patch_camelyon", empty)
    message = str(error.value)
    for part in (
        f"expected {empty}/patch_camelyon/2.0.0/dataset_info.json",
        f"tfds build patch_camelyon --data_dir={empty} --file_format=array_record",
        "array_record format",
    ):
        assert part in message


def test_tfrecord_copy(tfds_data, tmp_path):
    data_dir, _ = tfds_data
    copy = tmp_path / "tfrecord"
    shutil.copytree(data_dir / "colorectal_histology", copy / "colorectal_histology")
    info_path = copy / "colorectal_histology" / "2.0.0" / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(info))
    with pytest.raises(
        DataError, match=r"prepared as tfrecord, not array_record.*tfds convert_format"
    ):
        load_tfds("colorectal_histology", copy)


def test_unknown_name_and_missing_tfds(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="known: \\['colorectal_histology', 'patch_camelyon'\\]"):
        load_tfds("mnist", tmp_path)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(DataError, match="pip install tensorflow-datasets"):
        load_tfds("patch_camelyon", tmp_path)

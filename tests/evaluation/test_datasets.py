"""Tests for the patch data set readers (pathfm.evaluation.datasets), on tiny fixtures written in
each publisher's layout and file format."""

import csv
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import tifffile

from pathfm.errors import ConfigError, DataError
from pathfm.evaluation.datasets import (
    DATASETS,
    load_csv,
    load_dataset,
    load_image_folder,
    resize_and_crop,
)

BACH_PREFIX = {"Benign": "b", "InSitu": "is", "Invasive": "iv", "Normal": "n"}
CRC_CLASSES = ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")


def _pattern(label: int, number: int, height: int = 3, width: int = 4) -> np.ndarray:
    """uint8 [H, W, 3]: red = label, green = number, blue = a ramp; every pixel value known."""
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0], image[..., 1] = label, number
    image[..., 2] = np.arange(height * width).reshape(height, width) * 7
    return image


def _write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _write_tif(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, rgb, photometric="rgb")  # uncompressed RGB, as BACH and CRC ship


def _names(split) -> list[str]:
    return [path.stem for path in split.paths]


# ---------------------------------------------------------------------------------------- BACH


@pytest.fixture(scope="module")
def bach_root(tmp_path_factory) -> Path:
    """The full BACH Photos layout: 4 x 100 tiny .tif photos plus the ground-truth CSV."""
    root = tmp_path_factory.mktemp("bach")
    photos = root / "ICIAR2018_BACH_Challenge" / "Photos"
    for label, (name, prefix) in enumerate(BACH_PREFIX.items()):
        for number in range(1, 101):
            _write_tif(photos / name / f"{prefix}{number:03d}.tif", _pattern(label, number))
    (photos / "microscopy_ground_truth.csv").write_text("b001.tif,Benign\n")
    return root


def _numbered(prefix: str, first: int, last: int) -> set[str]:
    return {f"{prefix}{n:03d}" for n in range(first, last + 1)}


def test_bach_classes_and_eva_patient_split(bach_root: Path) -> None:
    ds = load_dataset("bach", bach_root)
    assert ds.classes == ("Benign", "InSitu", "Invasive", "Normal")
    assert (ds.splits(), ds.mpp) == (("train", "val"), 0.5)
    train, val = ds.split("train"), ds.split("val")
    # eva's val index ranges, written out as file numbers per class.
    expected_val = (
        _numbered("b", 42, 59) | _numbered("b", 61, 90) | _numbered("is", 40, 69)
        | _numbered("iv", 41, 58) | _numbered("iv", 61, 73) | _numbered("n", 46, 68)
    )  # fmt: skip
    everything = {f"{p}{n:03d}" for p in BACH_PREFIX.values() for n in range(1, 101)}
    assert (len(train), len(val)) == (268, 132)
    assert set(_names(val)) == expected_val
    assert set(_names(train)) == everything - expected_val
    assert np.bincount(train.labels).tolist() == [52, 70, 69, 77]
    assert np.bincount(val.labels).tolist() == [48, 30, 31, 23]
    for split in (train, val):  # the label is the class folder
        prefixes = [name.rstrip("0123456789") for name in _names(split)]
        assert [ds.classes[y] for y in split.labels] == [
            {v: k for k, v in BACH_PREFIX.items()}[p] for p in prefixes
        ]
    image, label = val[0]  # val starts with b042
    assert _names(val)[0] == "b042" and label == 0
    np.testing.assert_array_equal(image, _pattern(0, 42))
    image, label = train[-1]
    np.testing.assert_array_equal(image, _pattern(3, 100))
    assert label == 3


def test_bach_with_fewer_photos_than_eva_indexes_is_refused(tmp_path: Path) -> None:
    photos = tmp_path / "ICIAR2018_BACH_Challenge" / "Photos"
    for label, (name, prefix) in enumerate(BACH_PREFIX.items()):
        _write_tif(photos / name / f"{prefix}001.tif", _pattern(label, 1))
    with pytest.raises(DataError, match=r"holds 4 \.tif photos, not the 400"):
        load_dataset("bach", tmp_path)


# ----------------------------------------------------------------------------------------- CRC


@pytest.fixture
def crc_root(tmp_path: Path) -> Path:
    """NCT-CRC-HE-100K (2 tiles per class) and CRC-VAL-HE-7K (1 per class), .tif as published."""
    for folder, count in (("NCT-CRC-HE-100K", 2), ("CRC-VAL-HE-7K", 1)):
        for label, name in enumerate(CRC_CLASSES):
            for number in range(count):
                path = tmp_path / folder / name / f"{name}-TCGA-{number:04d}.tif"
                _write_tif(path, _pattern(label, number + 10 * (folder == "CRC-VAL-HE-7K")))
    (tmp_path / "CRC-VAL-HE-7K" / "ADI" / "Thumbs.db").write_text("not an image")
    return tmp_path


def test_crc_splits_labels_and_pixels(crc_root: Path) -> None:
    ds = load_dataset("crc", crc_root)
    assert (ds.classes, ds.splits(), ds.mpp) == (CRC_CLASSES, ("train", "val"), 0.5)
    train, val = ds.split("train"), ds.split("val")
    assert train.labels.tolist() == [y for y in range(9) for _ in range(2)]
    assert val.labels.tolist() == list(range(9))
    assert all(path.parent.parent.name == "CRC-VAL-HE-7K" for path in val.paths)
    image, label = val[4]
    assert label == 4 and val.paths[4].name == "MUC-TCGA-0000.tif"
    np.testing.assert_array_equal(image, _pattern(4, 10))
    batches = list(ds.iter_batches("train", batch_size=4))
    assert [len(labels) for _, labels in batches] == [4, 4, 4, 4, 2]
    images = np.concatenate([images for images, _ in batches])
    expected = np.stack([_pattern(y, n) for y in range(9) for n in range(2)])
    np.testing.assert_array_equal(images, expected)
    assert images.dtype == np.uint8
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), train.labels)
    with pytest.raises(DataError, match="no split 'test'"):
        ds.split("test")


def test_crc_missing_validation_class_names_the_folder(crc_root: Path) -> None:
    for path in (crc_root / "CRC-VAL-HE-7K" / "TUM").iterdir():
        path.unlink()
    (crc_root / "CRC-VAL-HE-7K" / "TUM").rmdir()
    with pytest.raises(DataError) as error:
        load_dataset("crc", crc_root)
    assert str(crc_root / "CRC-VAL-HE-7K" / "TUM") in str(error.value)


# --------------------------------------------------------------------------------------- MHIST


@pytest.fixture
def mhist_root(tmp_path: Path) -> Path:
    """images/MHIST_*.png and annotations.csv with the published columns."""
    rows = [("aaa", "HP", "train"), ("aab", "SSA", "test"), ("aac", "SSA", "train")]
    rows += [("aad", "HP", "test"), ("aae", "HP", "train")]
    with (tmp_path / "annotations.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        votes = "Number of Annotators who Selected SSA (Out of 7)"
        writer.writerow(["Image Name", "Majority Vote Label", votes, "Partition"])
        for number, (name, label, partition) in enumerate(rows):
            writer.writerow([f"MHIST_{name}.png", label, 5 if label == "SSA" else 1, partition])
            _write_png(tmp_path / "images" / f"MHIST_{name}.png", _pattern(label == "HP", number))
    return tmp_path


def test_mhist_partition_split_and_eva_label_indices(mhist_root: Path) -> None:
    ds = load_dataset("mhist", mhist_root)
    assert (ds.classes, ds.splits(), ds.mpp) == (("SSA", "HP"), ("train", "test"), 2.0)
    train, test = ds.split("train"), ds.split("test")
    assert _names(train) == ["MHIST_aaa", "MHIST_aac", "MHIST_aae"]
    assert _names(test) == ["MHIST_aab", "MHIST_aad"]
    assert train.labels.tolist() == [1, 0, 1] and test.labels.tolist() == [0, 1]
    image, label = test[1]
    np.testing.assert_array_equal(image, _pattern(1, 3))  # PNG is lossless
    assert label == 1


def test_mhist_missing_image_is_reported(mhist_root: Path) -> None:
    (mhist_root / "images" / "MHIST_aac.png").unlink()
    with pytest.raises(DataError, match=r"lacks 1 images named in annotations\.csv") as error:
        load_dataset("mhist", mhist_root)
    assert "MHIST_aac.png" in str(error.value)


# ---------------------------------------------------------------------------------------- PCam


@pytest.fixture
def pcam_root(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The six h5 files: x [N, 96, 96, 3] uint8 and y [N, 1, 1, 1] uint8."""
    rng = np.random.default_rng(0)
    data = {}
    for infix, count in (("train", 5), ("valid", 3), ("test", 2)):
        x = rng.integers(0, 256, (count, 96, 96, 3), dtype=np.uint8)
        y = rng.integers(0, 2, (count, 1, 1, 1), dtype=np.uint8)
        with h5py.File(tmp_path / f"camelyonpatch_level_2_split_{infix}_x.h5", "w") as file:
            file.create_dataset("x", data=x, chunks=(1, 96, 96, 3), compression="gzip")
        with h5py.File(tmp_path / f"camelyonpatch_level_2_split_{infix}_y.h5", "w") as file:
            file.create_dataset("y", data=y)
        data[infix] = (x, y)
    return tmp_path, data


def test_pcam_reads_h5_splits_exactly(pcam_root) -> None:
    root, data = pcam_root
    ds = load_dataset("pcam", root)
    assert (ds.classes, ds.splits(), ds.mpp) == (
        ("no_tumor", "tumor"),
        ("train", "val", "test"),
        1.0,
    )
    for split, infix in (("train", "train"), ("val", "valid"), ("test", "test")):
        x, y = data[infix]
        assert len(ds.split(split)) == len(x)
        assert ds.split(split).labels.tolist() == y.reshape(-1).tolist()
    x, y = data["valid"]
    image, label = ds.split("val")[-1]
    np.testing.assert_array_equal(image, x[2])
    assert label == int(y[2, 0, 0, 0])
    x, y = data["train"]
    batches = list(ds.iter_batches("train", batch_size=2))
    assert [len(labels) for _, labels in batches] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([images for images, _ in batches]), x)
    (small, labels), *_ = ds.iter_batches("train", batch_size=5, size=48)
    block_means = x.reshape(5, 48, 2, 48, 2, 3).astype(np.float64).mean(axis=(2, 4))
    assert small.shape == (5, 48, 48, 3) and small.dtype == np.uint8
    assert np.abs(small - block_means).max() <= 0.5  # INTER_AREA: 2 x 2 means, rounded
    assert labels.tolist() == y.reshape(-1).tolist()


def test_pcam_gzipped_file_asks_for_gunzip(pcam_root) -> None:
    root, _ = pcam_root
    x_path = root / "camelyonpatch_level_2_split_test_x.h5"
    x_path.rename(x_path.with_name(x_path.name + ".gz"))
    with pytest.raises(DataError, match="must be gunzipped") as error:
        load_dataset("pcam", root)
    assert str(x_path) in str(error.value)


# ------------------------------------------------------------------------ missing data: errors


@pytest.mark.parametrize(
    ("name", "expected", "urls"),
    [
        (
            "bach",
            "ICIAR2018_BACH_Challenge/Photos/Benign",
            [
                "https://zenodo.org/records/3632035",
                "https://iciar2018-challenge.grand-challenge.org",
            ],
        ),
        ("crc", "NCT-CRC-HE-100K/ADI", ["https://zenodo.org/records/1214456"]),
        ("mhist", "annotations.csv", ["https://bmirds.github.io/MHIST/"]),
        (
            "pcam",
            "camelyonpatch_level_2_split_train_x.h5",
            ["https://zenodo.org/records/2546921", "https://github.com/basveeling/pcam"],
        ),
    ],
)
def test_missing_data_names_the_path_and_where_to_download(
    tmp_path: Path, name: str, expected: str, urls: list[str]
) -> None:
    root = tmp_path / "absent"
    with pytest.raises(DataError) as error:
        load_dataset(name, root)
    message = str(error.value)
    assert str(root / expected) in message
    assert all(url in message for url in urls)
    assert "lay it out as" in message


def test_registry_lists_every_reader_and_refuses_unknown_names(tmp_path: Path) -> None:
    assert set(DATASETS) == {
        "bach", "crc", "mhist", "pcam", "image_folder", "csv",
        "tfds_patch_camelyon", "tfds_colorectal_histology",
    }  # fmt: skip
    with pytest.raises(ConfigError, match="unknown data set 'camelyon'"):
        load_dataset("camelyon", tmp_path)


# ------------------------------------------------------------------- generic layouts, resizing


def _blocks(grid: list[list[int]]) -> np.ndarray:
    """uint8 [2 rows x 2, 2 cols x 2, 3]: each grid value fills a 2 x 2 block; channels v, 255 - v,
    7."""
    values = np.kron(np.array(grid), np.ones((2, 2), int))
    return np.stack([values, 255 - values, np.full_like(values, 7)], axis=-1).astype(np.uint8)


def test_resize_shorter_side_then_centre_crop_by_hand(tmp_path: Path) -> None:
    grid = [[0, 40, 80, 120], [160, 200, 240, 252]]
    _write_png(tmp_path / "train" / "a" / "wide.png", _blocks(grid))  # [4, 8, 3]
    _write_png(tmp_path / "train" / "b" / "tall.png", _blocks(np.transpose(grid).tolist()))
    ds = load_image_folder(tmp_path)
    assert (ds.classes, ds.splits(), ds.mpp) == (("a", "b"), ("train",), None)
    (images, labels), *rest = ds.iter_batches("train", batch_size=8, size=2)
    assert not rest and labels.tolist() == [0, 1]
    # Shorter side 4 -> 2 averages each 2 x 2 block; the middle 2 of the 4 block columns remain.
    np.testing.assert_array_equal(images[0], _blocks([[40, 80], [200, 240]])[::2, ::2])
    np.testing.assert_array_equal(images[1], _blocks([[40, 200], [80, 240]])[::2, ::2])
    with pytest.raises(DataError, match="images differ in size"):
        next(ds.iter_batches("train", batch_size=8))
    odd = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(resize_and_crop(odd, 2), odd[:, :2])  # no resize, offset 0
    spikes = np.zeros((8, 8, 3), np.uint8)
    spikes[::4, ::4] = 160  # area: 160 / 16 per 4 x 4 block (bilinear would miss the spikes: 0)
    np.testing.assert_array_equal(resize_and_crop(spikes, 2), np.full((2, 2, 3), 10, np.uint8))
    flat = np.full((2, 3, 3), 9, np.uint8)
    np.testing.assert_array_equal(resize_and_crop(flat, 4), np.full((4, 4, 3), 9, np.uint8))


def test_image_folder_without_split_folders_is_split_by_seed(tmp_path: Path) -> None:
    for label, (name, count) in enumerate((("lymph", 10), ("tumour", 5))):
        for number in range(count):
            _write_png(tmp_path / name / f"{number:02d}.png", _pattern(label, number))
    (tmp_path / "lymph" / "notes.txt").write_text("ignored")
    ds = load_image_folder(tmp_path, seed=3, val_fraction=0.2, test_fraction=0.2)
    assert ds.splits() == ("train", "val", "test")
    counts = {s: np.bincount(ds.split(s).labels).tolist() for s in ds.splits()}
    assert counts == {"train": [6, 3], "val": [2, 1], "test": [2, 1]}  # 10 -> 2/2/6, 5 -> 1/1/3
    paths = [set(ds.split(s).paths) for s in ds.splits()]
    assert len(set.union(*paths)) == 15 and sum(map(len, paths)) == 15
    again = load_image_folder(tmp_path, seed=3, val_fraction=0.2, test_fraction=0.2)
    assert all(ds.split(s).paths == again.split(s).paths for s in ds.splits())
    other = load_image_folder(tmp_path, seed=4, val_fraction=0.2, test_fraction=0.2)
    assert any(ds.split(s).paths != other.split(s).paths for s in ds.splits())
    split = ds.split("val")
    image, label = split[0]
    np.testing.assert_array_equal(image, _pattern(label, int(split.paths[0].stem)))


def test_csv_manifest_relative_paths_splits_and_errors(tmp_path: Path) -> None:
    _write_png(tmp_path / "img" / "x.png", _pattern(0, 1))
    _write_png(tmp_path / "img" / "y.png", _pattern(1, 2))
    _write_png(tmp_path / "elsewhere" / "z.png", _pattern(1, 3))
    manifest = tmp_path / "tables" / "manifest.csv"
    manifest.parent.mkdir()
    rows = [("../img/x.png", "normal", "train"), ("../img/y.png", "tumour", "test")]
    rows += [(str(tmp_path / "elsewhere" / "z.png"), "tumour", "train")]
    manifest.write_text("path,label,split\n" + "".join(",".join(r) + "\n" for r in rows))
    ds = load_csv(manifest, mpp=0.5)
    assert (ds.classes, ds.splits(), ds.mpp) == (("normal", "tumour"), ("train", "test"), 0.5)
    assert ds.split("train").labels.tolist() == [0, 1]
    image, label = ds.split("test")[0]
    np.testing.assert_array_equal(image, _pattern(1, 2))
    assert label == 1
    swapped = load_dataset("csv", manifest, classes=["tumour", "normal"])
    assert swapped.split("train").labels.tolist() == [1, 0]
    unsplit = tmp_path / "unsplit.csv"
    unsplit.write_text("path,label\nimg/x.png,normal\nimg/y.png,tumour\n")
    assert load_csv(unsplit, val_fraction=0.0).split("train").labels.tolist() == [0, 1]
    with pytest.raises(DataError, match=r"labels \['tumour'\] outside the classes"):
        load_csv(manifest, classes=["normal"])
    (tmp_path / "img" / "y.png").unlink()
    with pytest.raises(DataError, match="1 missing images") as error:
        load_csv(manifest)
    assert "y.png" in str(error.value)

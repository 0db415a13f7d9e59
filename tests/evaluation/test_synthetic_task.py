"""The synthetic downstream task: labels from the sidecar boxes, pixels from the slide files,
determinism, balance, slide-disjoint splits, and that morphology, not colour, separates the
classes."""

import json
import shutil
from pathlib import Path

import numpy as np
import openslide
import pytest

from pathfm.data.slides import composite_on_white
from pathfm.data.synthetic import TISSUE_CLASSES
from pathfm.errors import DataError
from pathfm.evaluation.colour_baseline import colour_features
from pathfm.evaluation.linear_probe import LinearProbeConfig, linear_probe
from pathfm.evaluation.synthetic_task import synthetic_patch_task

SIZE, MPP, PER_CLASS = 64, 0.5, 12  # on 0.25 um/px slides: level 1, 128 level-0 px per patch
PROBE = LinearProbeConfig(learning_rate=1e-2, max_steps=1000, patience_steps=300, eval_every=50)


@pytest.fixture(scope="module")
def task(synthetic_slide_dir):
    return synthetic_patch_task(synthetic_slide_dir, patch_size=SIZE, mpp=MPP, per_class=PER_CLASS)


def _boxes(slide_path: str) -> list[tuple[str, tuple[int, int, int, int]]]:
    """(label, level-0 box) of every region, straight from the sidecar JSON."""
    sidecar = json.loads(Path(slide_path).with_suffix(".json").read_text())
    return [(r["label"], tuple(r["box"])) for r in sidecar["regions"]]


def test_shapes_classes_and_balance(task):
    n = 4 * len(TISSUE_CLASSES) * PER_CLASS
    assert task.images.shape == (n, SIZE, SIZE, 3) and task.images.dtype == np.uint8
    assert task.labels.shape == task.slides.shape == (n,) and task.centers.shape == (n, 2)
    assert (
        task.classes == TISSUE_CLASSES == ("stroma", "tumor", "lymphocytes", "glands", "necrosis")
    )
    assert [Path(p).name for p in task.slide_paths] == [f"synthetic_{i:03d}.tiff" for i in range(4)]
    counts = np.zeros((4, len(TISSUE_CLASSES)), int)
    np.add.at(counts, (task.slides, task.labels), 1)
    np.testing.assert_array_equal(counts, PER_CLASS)  # per_class of each class from each slide
    for s in range(4):  # centres are distinct within a slide
        assert len({tuple(c) for c in task.centers[task.slides == s].tolist()}) == PER_CLASS * 5


def test_label_is_the_sidecar_box_around_the_whole_patch(task):
    half = SIZE * MPP / 0.25 / 2  # level-0 px
    for label, slide, (x, y) in zip(task.labels, task.slides, task.centers.tolist(), strict=True):
        around = [
            (name, (x0, y0, x1, y1))
            for name, (x0, y0, x1, y1) in _boxes(task.slide_paths[slide])
            if x0 <= x < x1 and y0 <= y < y1
        ]
        assert [name for name, _ in around] == [task.classes[label]]
        x0, y0, x1, y1 = around[0][1]
        assert x0 <= x - half and x + half <= x1 and y0 <= y - half and y + half <= y1


def test_patches_are_read_from_the_slide(task):
    slide, shifted_diffs = 1, []
    with openslide.OpenSlide(task.slide_paths[slide]) as osr:
        assert osr.level_downsamples[1] == pytest.approx(2.0)  # 0.5 um/px: level 1, no resize

        def read(x: int, y: int) -> np.ndarray:  # int [SIZE, SIZE, 3] at level 1, level-0 x, y
            rgba = np.asarray(osr.read_region((int(x), int(y)), 1, (SIZE, SIZE)))
            return composite_on_white(rgba).astype(int)

        for i in np.flatnonzero(task.slides == slide)[::PER_CLASS]:  # one patch per class
            x, y = task.centers[i] - SIZE  # top-left in level-0 px (SIZE level-1 px per side)
            diff = np.abs(task.images[i] - read(x, y))
            assert diff.mean() < 1.0 and diff.max() <= 8, (i, diff.mean(), diff.max())
            shifted_diffs.append(np.abs(task.images[i] - read(x + 24, y + 24)).mean())
    assert np.mean(shifted_diffs) > 5  # the comparison can tell locations apart


def test_deterministic_given_the_seed(task, synthetic_slide_dir):
    kwargs = {"patch_size": SIZE, "mpp": MPP, "per_class": PER_CLASS}
    again = synthetic_patch_task(synthetic_slide_dir, seed=0, **kwargs)
    np.testing.assert_array_equal(again.images, task.images)
    np.testing.assert_array_equal(again.centers, task.centers)
    for name in task.splits():
        np.testing.assert_array_equal(again.split_indices[name], task.split_indices[name])
    other = synthetic_patch_task(synthetic_slide_dir, seed=1, **kwargs)
    np.testing.assert_array_equal(other.labels, task.labels)  # same layout of the arrays ...
    assert (other.centers != task.centers).any(axis=1).mean() > 0.9  # ... other positions
    assert not np.array_equal(other.images, task.images)


def test_splits_are_slide_disjoint_and_cover_everything(task):
    assert task.split_by == "slide" and task.splits() == ("train", "val", "test")
    held = {name: set(task.slides[task.split_indices[name]].tolist()) for name in task.splits()}
    assert [len(held[n]) for n in ("train", "val", "test")] == [2, 1, 1]
    assert held["train"] | held["val"] | held["test"] == {0, 1, 2, 3}
    everything = np.concatenate([task.split_indices[name] for name in task.splits()])
    np.testing.assert_array_equal(np.sort(everything), np.arange(len(task.labels)))
    images, labels = task.split("test")
    np.testing.assert_array_equal(images, task.images[task.split_indices["test"]])
    np.testing.assert_array_equal(np.bincount(labels), PER_CLASS)  # one whole slide, balanced
    with pytest.raises(DataError, match="no split 'dev'"):
        task.split("dev")


def test_patch_split_with_fewer_than_three_slides(synthetic_slide_dir, tmp_path):
    for i in range(2):
        for suffix in (".tiff", ".json"):
            name = f"synthetic_{i:03d}{suffix}"
            shutil.copy(Path(synthetic_slide_dir) / name, tmp_path / name)
    small = synthetic_patch_task(tmp_path, patch_size=32, mpp=1.0, per_class=10)
    assert small.split_by == "patch" and len(small.labels) == 2 * 5 * 10
    sizes = {name: np.bincount(small.labels[idx]) for name, idx in small.split_indices.items()}
    assert {name: s.tolist() for name, s in sizes.items()} == {
        "train": [12] * 5,
        "val": [4] * 5,
        "test": [4] * 5,
    }
    everything = np.concatenate(list(small.split_indices.values()))
    np.testing.assert_array_equal(np.sort(everything), np.arange(100))


def test_too_small_a_box_names_the_class_and_slide(synthetic_slide_dir):
    with pytest.raises(DataError, match=r"synthetic_000\.tiff: class 'stroma' has 0 valid"):
        synthetic_patch_task(synthetic_slide_dir, patch_size=256, mpp=1.0, per_class=1)


def _texture_features(images: np.ndarray) -> np.ndarray:
    """[n, P/2 + 1]: the log radial power spectrum of each patch's standardised grey image (how
    much structure there is at each scale: nucleus size and spacing, fibre period) and its
    orientation anisotropy (aligned fibres). Blind to colour by construction."""
    g = images.astype(np.float32).mean(-1)
    g = (g - g.mean((1, 2), keepdims=True)) / (g.std((1, 2), keepdims=True) + 1e-3)
    power = np.abs(np.fft.fftshift(np.fft.fft2(g), axes=(1, 2))) ** 2
    n = g.shape[1]
    yy, xx = np.mgrid[:n, :n] - n // 2
    radius = np.hypot(yy, xx).astype(int).ravel()
    counts = np.bincount(radius, minlength=n)[: n // 2]
    radial = np.stack([np.bincount(radius, p.ravel(), minlength=n)[: n // 2] for p in power])
    angle = np.exp(2j * np.arctan2(yy, xx))
    anisotropy = np.abs((power * angle).sum((1, 2))) / power.sum((1, 2))
    return np.concatenate([np.log(radial / counts + 1e-6), anisotropy[:, None]], 1)


def test_morphology_not_colour_separates_the_classes_on_held_out_slides(task):
    """The classes differ in morphology only: a probe on colour statistics (histogram, means,
    percentiles) stays near chance (0.2) on the held-out slide, while the same probe on a
    colour-blind texture descriptor learns the task."""
    splits = [task.split(name) for name in ("train", "val", "test")]
    scores = {}
    for name, features in (("colour", colour_features), ("texture", _texture_features)):
        (tx, ty), (vx, vy), (sx, sy) = ((features(x), y) for x, y in splits)
        mu, sd = tx.mean(0), tx.std(0) + 1e-6
        tx, vx, sx = ((x - mu) / sd for x in (tx, vx, sx))
        result = linear_probe(tx, ty, vx, vy, sx, sy, len(TISSUE_CLASSES), PROBE)
        scores[name] = result["mean"]["balanced_accuracy"]
    assert scores["colour"] <= 0.45 and scores["texture"] >= 0.75, scores

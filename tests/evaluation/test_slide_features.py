"""Whole-slide features over the tissue grid: the grid is the mask's tissue tiles on the right
lattice, each tile's feature is the extractor on a direct read, runs resume, and bad slides are
skipped without leaving files behind."""

import json
import os
import shutil

import jax
import numpy as np
import openslide
import pytest
from testutil import TEST_SLIDES, tiny_dino_config

from pathfm import parallel
from pathfm.data import slides as slides_lib
from pathfm.data import tissue as tissue_lib
from pathfm.errors import DataError
from pathfm.evaluation.features import FeatureExtractor
from pathfm.evaluation.slide_features import (
    extract_slide_features,
    load_slide_features,
    slide_info,
    tile_centers,
    tissue_grid,
)
from pathfm.train.build import build_setup

CMU = TEST_SLIDES / "CMU-1-Small-Region.svs"
MPP, TILE, BATCH, MIN_TISSUE = 2.0, 32, 16, 0.5  # synthetic: 256 level-0 px tiles, ~50 a slide


def _expected_grid(path, mpp, tile_size, min_tissue):
    """Every lattice tile inside the slide whose thumbnail-mask tissue fraction passes, recomputed
    from the thumbnail without the grid code."""
    with openslide.OpenSlide(str(path)) as slide:
        base = slides_lib.slide_mpp(slide.properties)
        width, height = slide.dimensions
        thumb, _ = tissue_lib.read_thumbnail(slide, base, 8.0)
    mask = tissue_lib.tissue_mask(thumb, tissue_lib.TissueConfig())
    stride = tile_size * mpp / base
    xs = [
        round(i * stride) for i in range(int(width / stride)) if round(i * stride) + stride <= width
    ]
    ys = [
        round(j * stride)
        for j in range(int(height / stride))
        if round(j * stride) + stride <= height
    ]
    fraction = lambda x, y: tissue_lib.mask_fraction(mask, width, height, x, y, stride)
    return {(x, y) for y in ys for x in xs if fraction(x, y) >= min_tissue}, mask, stride


@pytest.fixture(scope="module")
def extractor():
    """The untrained tiny DINO teacher: a FeatureExtractor without a training run."""
    config = tiny_dino_config()
    mesh = parallel.single_device_mesh()
    state = jax.device_get(build_setup(config, mesh).fresh_state())
    return FeatureExtractor(config, "teacher", state["params"], state["extra"], 0, mesh)


class Counting:
    """An extractor that counts the images it sees (and keeps the wrapped one's step/which)."""

    def __init__(self, extractor):
        self.extractor, self.step, self.which, self.images = extractor, 0, "teacher", 0

    def __call__(self, images):
        self.images += len(images)
        return self.extractor(images)


@pytest.fixture(scope="module")
def slide_list(tmp_path_factory, synthetic_slide_dir):
    """The four synthetic slides, a same-named copy of the first in another folder, and a
    truncated (unreadable) copy of the second."""
    root = tmp_path_factory.mktemp("slide_list")
    synthetic = sorted(synthetic_slide_dir.glob("*.tiff"))
    (root / "other").mkdir()
    twin = shutil.copy(synthetic[0], root / "other" / synthetic[0].name)
    broken = root / "broken.tiff"
    broken.write_bytes(synthetic[1].read_bytes()[: synthetic[1].stat().st_size // 2])
    return [*map(str, synthetic), str(twin), str(broken)]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, extractor, slide_list):
    out = tmp_path_factory.mktemp("slide_features")
    summary = extract_slide_features(
        extractor, slide_list, out, MPP, TILE, BATCH, MIN_TISSUE, cache_dir=out.parent / "masks"
    )
    return out, summary


def test_synthetic_grid_is_the_masks_tissue_tiles_on_the_lattice(synthetic_slide_dir, tmp_path):
    for path in sorted(synthetic_slide_dir.glob("*.tiff")):
        grid = tissue_grid(path, MPP, TILE, MIN_TISSUE, cache_dir=tmp_path)
        expected, _, stride = _expected_grid(path, MPP, TILE, MIN_TISSUE)
        assert stride == 256 and grid.dtype == np.int64
        assert {tuple(map(int, xy)) for xy in grid} == expected and len(grid) == len(expected)
        assert 0 < len(grid) <= 64  # the regions fill the slide: glass only in thin margins
        assert np.all(grid % 256 == 0) and np.all(grid + 256 <= 2048)
        np.testing.assert_array_equal(tissue_grid(path, MPP, TILE, MIN_TISSUE), grid)  # no cache
    assert len(list(tmp_path.glob("*.npz"))) == 4  # the training mask cache was used


def test_cmu_grid_covers_tissue_not_glass():
    grid = tissue_grid(CMU, 0.5, 224, 0.35)  # Campanella's tiles: 224 px at 0.5 um/px
    expected, _, stride = _expected_grid(CMU, 0.5, 224, 0.35)
    assert {tuple(map(int, xy)) for xy in grid} == expected and 30 < len(grid) < 117
    steps = np.rint(grid / stride)
    np.testing.assert_array_equal(np.rint(steps * stride), grid)  # on the round(i * stride) lattice
    assert np.all(grid + 225 <= (2220, 2967))
    lattice = tissue_grid(CMU, 0.5, 224, min_tissue_fraction=0.0)  # every tile inside the slide
    assert len(lattice) == 9 * 13 and np.all(lattice + stride <= (2220, 2967))
    corners = {(0, 0), (0, round(12 * stride)), (round(8 * stride), 0)}  # glass (see thumbnail)
    assert not corners & expected
    info = slide_info(CMU, 0.5)
    with openslide.OpenSlide(str(CMU)) as slide:
        for (x, y), center in zip(grid, tile_centers(grid, info, 224, 0.5), strict=True):
            direct = np.asarray(slide.read_region((int(x), int(y)), 0, (224, 224)))
            tile = slides_lib.read_patch(slide, tuple(center), 224, 0.5, info.mpp)
            np.testing.assert_array_equal(tile, slides_lib.composite_on_white(direct))
            assert (tile.min(axis=2) < tissue_lib.WHITE_LEVEL).mean() > 0.1  # not glass


def test_features_equal_the_extractor_on_direct_reads(first_run, extractor, synthetic_slide_dir):
    out, _ = first_run
    path = sorted(synthetic_slide_dir.glob("*.tiff"))[2]
    saved = np.load(out / f"{path.stem}.npz")
    assert str(saved["slide"]) == os.path.abspath(path)
    assert saved["mpp"] == MPP and saved["tile_size"] == TILE and saved["coords"].dtype == np.int64
    np.testing.assert_array_equal(saved["coords"], tissue_grid(path, MPP, TILE, MIN_TISSUE))
    n, dim = saved["cls"].shape
    assert saved["mean_patch"].shape == (n, dim) and saved["cls"].dtype == np.float32
    with openslide.OpenSlide(str(path)) as slide:
        level = 3  # 2.0 um/px on a 0.25 um/px slide: downsample 8, a 32 px read
        reads = [
            slides_lib.composite_on_white(np.asarray(slide.read_region(xy, level, (TILE, TILE))))
            for xy in map(tuple, saved["coords"][:BATCH].tolist())
        ]
    direct = extractor(np.stack(reads))
    for key in ("cls", "mean_patch"):
        np.testing.assert_allclose(saved[key][:BATCH], direct[key], rtol=1e-4, atol=1e-5)


def test_summary_names_the_unreadable_slide_and_collisions_keep_both(first_run, slide_list):
    out, summary = first_run
    *synthetic, twin, broken = slide_list
    assert (summary["n_written"], summary["n_existing"], summary["n_failed"]) == (5, 0, 1)
    assert [f["slide"] for f in summary["failed"]] == [broken]
    assert "unreadable" in summary["failed"][0]["reason"]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["failed"] == summary["failed"] and on_disk["n_failed"] == 1
    files = {item["slide"]: item["file"] for item in summary["written"]}
    stem = os.path.basename(twin).removesuffix(".tiff")
    assert files[synthetic[0]] != files[twin] and files[twin].startswith(f"{stem}-")
    assert files[synthetic[1]] == os.path.basename(synthetic[1]).replace(".tiff", ".npz")
    assert sorted(p.name for p in out.iterdir()) == sorted([*files.values(), "summary.json"])
    features = load_slide_features(out)
    assert sorted(features) == sorted(files)
    a, b = features[synthetic[0]], features[twin]  # same pixels, both kept
    np.testing.assert_array_equal(a["cls"], b["cls"])
    bags = [f["cls"] for f in features.values()]  # what mil.cross_validate takes
    assert all(bag.ndim == 2 and bag.shape[1] == 32 and len(bag) > 0 for bag in bags)


def test_rerun_recomputes_only_the_missing_slide(first_run, extractor, slide_list, tmp_path):
    out = tmp_path / "features"
    shutil.copytree(first_run[0], out)
    before = {p.name: (p.stat().st_mtime_ns, dict(np.load(p))) for p in out.glob("*.npz")}
    victim = first_run[1]["written"][1]
    (out / victim["file"]).unlink()
    counting = Counting(extractor)
    summary = extract_slide_features(counting, slide_list, out, MPP, TILE, BATCH, MIN_TISSUE)
    assert (summary["n_written"], summary["n_existing"], summary["n_failed"]) == (1, 4, 1)
    assert summary["written"] == [victim]
    assert counting.images == -(-victim["n_tiles"] // BATCH) * BATCH  # the last batch is padded
    for name, (mtime, arrays) in before.items():
        again = dict(np.load(out / name))
        assert again.keys() == arrays.keys()
        for key in arrays:
            np.testing.assert_array_equal(again[key], arrays[key])
        assert ((out / name).stat().st_mtime_ns == mtime) == (name != victim["file"])
    assert not [p for p in out.iterdir() if p.suffix == ".tmp"]
    with pytest.raises(DataError, match="computed with"):
        extract_slide_features(extractor, slide_list, out, MPP, 2 * TILE, BATCH)


def test_read_error_mid_slide_is_skipped_without_a_file(
    extractor, synthetic_slide_dir, tmp_path, monkeypatch
):
    path = str(sorted(synthetic_slide_dir.glob("*.tiff"))[3])
    calls = []

    def failing_read(*args, **kwargs):
        calls.append(1)
        if len(calls) > BATCH + 2:  # fails in the second batch, after one was extracted
            raise OSError("tile 7 truncated")
        return read_patch(*args, **kwargs)

    read_patch = slides_lib.read_patch
    monkeypatch.setattr(slides_lib, "read_patch", failing_read)
    summary = extract_slide_features(extractor, [path], tmp_path, MPP, TILE, BATCH, MIN_TISSUE)
    assert (
        summary["n_failed"] == 1 and "OSError: tile 7 truncated" in summary["failed"][0]["reason"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]

"""Tissue-mask disk cache: hits skip the thumbnail, settings/mtime invalidate, bad entries heal."""

import logging
import os
import pathlib
import shutil

import cv2
import numpy as np
import pytest
import tifffile

from pathfm.data import mask_cache, sampler, slides, tissue
from pathfm.errors import DataError

CMU = pathlib.Path("/work/shared/test-slides/CMU-1-Small-Region.svs")
CONFIG = tissue.TissueConfig()


@pytest.fixture
def slide(tmp_path) -> str:
    """A 3-level 1024x768 pyramid at 0.25 um/px: a strong and a pale pink block on glass."""
    level0 = np.full((768, 1024, 3), 242, np.uint8)
    level0[100:400, 100:500] = (190, 100, 170)  # saturation ~120
    level0[450:700, 600:950] = (225, 190, 215)  # saturation ~40
    path = tmp_path / "pyramid.tiff"
    with tifffile.TiffWriter(path) as tif:
        for i, f in enumerate((1, 4, 16)):
            img = cv2.resize(level0, (1024 // f, 768 // f), interpolation=cv2.INTER_AREA)
            kw = {"resolution": (1e4 / (0.25 * f),) * 2, "resolutionunit": "CENTIMETER"}
            tif.write(img, tile=(64, 64), compression="jpeg", photometric="rgb", **kw,
                      subfiletype=1 if i else 0)  # fmt: skip
    return str(path)


@pytest.fixture
def thumbnails(monkeypatch) -> list[str]:
    """Counts thumbnail reads (as the paths read) while still reading them."""
    calls, real = [], tissue.read_thumbnail
    monkeypatch.setattr(tissue, "read_thumbnail", lambda s, *a: calls.append(s) or real(s, *a))
    return calls


def build(paths, cache_dir, config=CONFIG, **kw) -> sampler.SlideIndex:
    records = [p if isinstance(p, slides.SlideRecord) else slides.SlideRecord(p) for p in paths]
    return sampler.SlideIndex.build(records, config, cache_dir=str(cache_dir), **kw)


def entries(cache_dir) -> list[str]:
    return sorted(os.listdir(cache_dir))


def test_second_build_reads_no_thumbnail(slide, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    paths = [slide, str(CMU)]
    first = build(paths, cache).slides
    names = entries(cache)  # one entry each, no temp file left behind
    assert len(names) == 2 and all(n.endswith(".npz") for n in names)

    def fail(*args):
        raise AssertionError("thumbnail read on a cache hit")

    monkeypatch.setattr(tissue, "read_thumbnail", fail)
    monkeypatch.setattr(sampler.openslide, "OpenSlide", fail)  # not even opened
    second = build(paths, cache).slides
    for a, b in zip(first, second, strict=True):
        assert b.mask.dtype == bool and np.array_equal(a.mask, b.mask)
        for field in ("path", "mpp", "width", "height", "level_mpps", "mask_mpp"):
            assert getattr(a, field) == getattr(b, field)
    assert second[0].level_mpps == (0.25, 1.0, 4.0) and second[1].width == 2220
    assert entries(cache) == names


def test_settings_mtime_and_mpp_invalidate(slide, tmp_path, thumbnails):
    cache = tmp_path / "cache"
    base = build([slide], cache).slides[0]
    assert len(thumbnails) == 1
    build([slide], cache, tissue.TissueConfig(min_tissue_fraction=0.9))  # mask unaffected: hit
    assert len(thumbnails) == 1
    other = build([slide], cache, tissue.TissueConfig(saturation_threshold=60)).slides[0]
    assert len(thumbnails) == 2 and other.mask.sum() < base.mask.sum()
    build([slide], cache, tissue.TissueConfig(use_otsu=True))
    assert len(thumbnails) == 3
    stat = os.stat(slide)
    os.utime(slide, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # "touched"
    build([slide], cache)
    assert len(thumbnails) == 4
    overridden = build([slides.SlideRecord(slide, 0.5)], cache).slides[0]
    assert len(thumbnails) == 5 and overridden.mpp == 0.5
    build([slides.SlideRecord(slide, 0.5)], cache)
    assert len(thumbnails) == 5
    assert len(entries(cache)) == 5


def test_cache_hit_still_checks_max_mpp(slide, tmp_path):
    build([slide], tmp_path)
    with pytest.raises(DataError, match="too coarse"):
        build([slide], tmp_path, max_mpp_for_training=0.2)


def test_corrupt_entry_is_recomputed(slide, tmp_path, thumbnails, caplog):
    cache = tmp_path / "cache"
    expected = build([slide], cache).slides[0].mask
    (name,) = entries(cache)
    for garbage in (b"not a zip", b""):
        (cache / name).write_bytes(garbage)
        with caplog.at_level(logging.DEBUG, logger="pathfm.data.mask_cache"):
            mask = build([slide], cache).slides[0].mask
        assert np.array_equal(mask, expected)
        assert any("Ignoring unreadable" in r.getMessage() for r in caplog.records)
    assert len(thumbnails) == 3
    build([slide], cache)  # rewritten: a hit again
    assert len(thumbnails) == 3


def test_foreign_entry_is_ignored(slide, tmp_path):
    cache = str(tmp_path / "cache")
    info = build([slide], cache).slides[0]
    key, other_key = (mask_cache.cache_key(slide, m, CONFIG) for m in (None, 0.3))
    shutil.copy(mask_cache.entry_path(cache, key), mask_cache.entry_path(cache, other_key))
    assert mask_cache.load(cache, other_key, slide) is None  # the stored key differs
    assert mask_cache.load(cache, key, slide).width == info.width


def test_unwritable_cache_dir_only_warns(slide, tmp_path, caplog):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with caplog.at_level(logging.WARNING):
        index = build([slide], not_a_dir)
    assert len(index) == 1
    assert any("Could not write the mask cache" in r.getMessage() for r in caplog.records)


def test_key_depends_on_identity_and_mask_settings(slide):
    key = mask_cache.cache_key(slide, None, CONFIG)
    assert key == mask_cache.cache_key(slide, None, tissue.TissueConfig(min_tissue_fraction=0.1))
    for config in (
        tissue.TissueConfig(mask_mpp=4.0),
        tissue.TissueConfig(median_blur=3),
        tissue.TissueConfig(close_kernel=1),
    ):
        assert mask_cache.cache_key(slide, None, config) != key
    assert os.path.abspath(slide) in key and str(mask_cache.FORMAT_VERSION) in key

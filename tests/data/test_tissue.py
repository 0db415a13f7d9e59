"""Tissue masks: synthetic thumbnails, a pyramid fixture and the real CMU-1-Small-Region slide."""

import pathlib

import cv2
import ml_collections
import numpy as np
import openslide
import pytest
import tifffile

from pathfm.data import sampler, slides, tissue, tissue_runs
from pathfm.errors import ConfigError

CMU = pathlib.Path("/work/shared/test-slides/CMU-1-Small-Region.svs")
CMU_MPP = 0.499
CONFIG = tissue.TissueConfig()
CORNERS = [(112.0, 112.0), (2108.0, 112.0), (112.0, 2855.0), (112.0, 1500.0)]  # glass only


def saturation(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]


def near_white_fraction(rgb: np.ndarray) -> float:
    return float((rgb.min(axis=2) >= tissue.WHITE_LEVEL).mean())


@pytest.fixture(scope="module")
def cmu():
    with openslide.OpenSlide(CMU) as slide:
        yield slide


@pytest.fixture(scope="module")
def cmu_sampler():
    records = [slides.SlideRecord(str(CMU))]
    index = sampler.SlideIndex.build(records, CONFIG)
    return sampler.PatchSampler(index, 224, [0.5, 1.0], min_tissue_fraction=0.35)


def test_mask_of_blank_images_is_empty():
    for value in (255, 245, 0, 12):
        assert not tissue.tissue_mask(np.full((40, 50, 3), value, np.uint8), CONFIG).any()


@pytest.mark.parametrize("use_otsu", [False, True])
def test_mask_finds_a_pink_block(use_otsu):
    rng = np.random.default_rng(0)
    rgb = np.clip(rng.normal(242, 3, (60, 80, 3)), 0, 255).astype(np.uint8)
    rgb[20:45, 30:70] = (200, 110, 170)  # eosin-ish pink, saturation ~ 115
    mask = tissue.tissue_mask(rgb, tissue.TissueConfig(use_otsu=use_otsu))
    assert mask.shape == (60, 80) and mask.dtype == bool
    assert mask[24:41, 34:66].all() and not mask[:15].any() and not mask[:, :25].any()


def test_mask_close_fills_small_holes():
    rgb = np.full((40, 40, 3), 250, np.uint8)
    rgb[5:35, 5:35] = (180, 90, 160)
    rgb[19:21, 19:21] = 250
    no_close = tissue.TissueConfig(median_blur=1, close_kernel=1)
    assert not tissue.tissue_mask(rgb, no_close)[20, 20]
    assert tissue.tissue_mask(rgb, tissue.TissueConfig(median_blur=1))[20, 20]


def test_mask_rejects_bad_input():
    with pytest.raises(ValueError):
        tissue.tissue_mask(np.zeros((4, 4), np.uint8), CONFIG)


def test_read_thumbnail_uses_coarse_level(tmp_path):
    level0 = np.full((768, 1024, 3), 240, np.uint8)
    level0[200:500, 300:700] = (190, 100, 170)
    path = tmp_path / "p.tiff"
    with tifffile.TiffWriter(path) as tif:
        for i, f in enumerate((1, 4, 16)):
            img = cv2.resize(level0, (1024 // f, 768 // f), interpolation=cv2.INTER_AREA)
            res = (1e4 / (0.25 * f),) * 2
            kw = {"resolution": res, "resolutionunit": "CENTIMETER", "subfiletype": 1 if i else 0}
            tif.write(img, tile=(64, 64), compression="jpeg", photometric="rgb", **kw)
    with openslide.OpenSlide(path) as slide:
        thumb, mpp = tissue.read_thumbnail(slide, 0.25, 8.0)  # from the 4 um/px level, halved
        assert thumb.shape == (24, 32, 3) and mpp == pytest.approx(8.0)
        mask = tissue.tissue_mask(thumb, CONFIG)
        assert mask[8:14, 11:20].all() and not mask[:4].any()
        fine, fine_mpp = tissue.read_thumbnail(slide, 0.25, 0.1)  # never upscaled
        assert fine.shape == (768, 1024, 3) and fine_mpp == pytest.approx(0.25)


def test_cmu_mask_covers_a_plausible_fraction(cmu):
    thumb, mpp = tissue.read_thumbnail(cmu, CMU_MPP, CONFIG.mask_mpp)
    assert mpp == pytest.approx(8.0, rel=0.05)
    assert thumb.shape == (round(2967 * CMU_MPP / 8), round(2220 * CMU_MPP / 8), 3)
    for config in (CONFIG, tissue.TissueConfig(use_otsu=True)):
        fraction = tissue.tissue_mask(thumb, config).mean()
        assert 0.15 < fraction < 0.7
    mask = tissue.tissue_mask(thumb, CONFIG)
    assert not mask[-20:, :20].any() and not mask[:20, -20:].any()  # glass corners


def test_cmu_background_corners_are_rejected(cmu):
    for center in CORNERS:
        patch = slides.read_patch(cmu, center, 224, 0.5, CMU_MPP)
        assert tissue.tissue_mask(patch, CONFIG).mean() < CONFIG.min_tissue_fraction
        assert near_white_fraction(patch) > 0.9


def test_cmu_sampled_patches_are_tissue(cmu, cmu_sampler):
    background = max(
        saturation(slides.read_patch(cmu, c, 224, 0.5, CMU_MPP)).mean() for c in CORNERS
    )
    rng = np.random.default_rng(1)
    samples = [cmu_sampler(rng) for _ in range(50)]
    assert {float(s["mpp"]) for s in samples} == {0.5, 1.0}
    sat = np.array([saturation(s["image"]).mean() for s in samples])
    white = np.array([near_white_fraction(s["image"]) for s in samples])
    tissue_frac = np.array([tissue.tissue_mask(s["image"], CONFIG).mean() for s in samples])
    assert sat.min() > max(20.0, 3 * background) and sat.mean() > 60
    assert white.mean() < 0.3 and white.max() < 0.8
    assert tissue_frac.mean() > 0.6 and (tissue_frac >= 0.2).all()


def test_config_validation_and_mapping():
    for bad in ({"mask_mpp": 0.0}, {"saturation_threshold": 300}, {"median_blur": -1},
                {"min_tissue_fraction": 1.5}):  # fmt: skip
        with pytest.raises(ConfigError, match=next(iter(bad))):
            tissue.TissueConfig(**bad)
    data = ml_collections.ConfigDict({"mask_mpp": 4.0, "use_otsu": True, "patch_size": 256})
    config = tissue.TissueConfig.from_mapping(data)
    assert config == tissue.TissueConfig(mask_mpp=4.0, use_otsu=True)
    assert tissue.TissueConfig.from_mapping({}) == CONFIG
    key = CONFIG.mask_key()
    assert "min_tissue_fraction" not in key
    assert tissue.TissueConfig(min_tissue_fraction=0.9).mask_key() == key
    assert tissue.TissueConfig(use_otsu=True).mask_key() != key


def test_clam_preset_on_cmu(cmu):
    thumb, _ = tissue.read_thumbnail(cmu, CMU_MPP, CONFIG.mask_mpp)
    clam = tissue.TissueConfig(saturation_threshold=8, median_blur=7, close_kernel=4)
    eva = tissue.tissue_mask(thumb, CONFIG)
    mask = tissue.tissue_mask(thumb, clam)
    assert (mask | ~eva).mean() > 0.99  # a lower threshold keeps (almost) all of eva's tissue
    assert 0.15 < mask.mean() < 0.8 and not mask[-20:, :20].any()


def test_mask_fraction():
    mask = np.zeros((10, 20), bool)
    mask[:, :10] = True  # left half of a 200x100 px slide
    assert tissue.mask_fraction(mask, 200, 100, 0, 0, 50) == 1.0
    assert tissue.mask_fraction(mask, 200, 100, 75, 0, 50) == pytest.approx(0.5)
    assert tissue.mask_fraction(mask, 200, 100, 300, 0, 50) == 0.0
    runs = tissue_runs.mask_to_runs(mask[:2, :12])  # tissue pixels in row-major order
    flat = [r * 12 + c for r, c in (tissue_runs.pixel_of_ordinal(runs, k) for k in range(20))]
    assert flat == [*range(10), *range(12, 22)]

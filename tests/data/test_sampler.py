"""SlideIndex (rejecting bad slides) and PatchSampler (determinism, pickling, weights, errors)."""

import dataclasses
import logging
import os
import pathlib
import pickle
import shutil

import cv2
import numpy as np
import pytest
import tifffile

from pathfm.data import sampler, slides, tissue
from pathfm.errors import ConfigError, DataError

SLIDES = pathlib.Path("/work/shared/test-slides")
CMU = SLIDES / "CMU-1-Small-Region.svs"
CONFIG = tissue.TissueConfig()


def write_tissue_tiff(path, mpp: float | None) -> str:
    """A 2-level 512x384 generic TIFF: pink tissue on glass; no resolution if mpp is None."""
    level0 = np.full((384, 512, 3), 242, np.uint8)
    level0[96:288, 128:384] = (190, 100, 170)
    with tifffile.TiffWriter(path) as tif:
        for i, f in enumerate((1, 2)):
            img = cv2.resize(level0, (512 // f, 384 // f), interpolation=cv2.INTER_AREA)
            kw = {"resolutionunit": "NONE"}
            if mpp is not None:
                kw = {"resolution": (1e4 / (mpp * f),) * 2, "resolutionunit": "CENTIMETER"}
            tif.write(img, tile=(64, 64), compression="jpeg", photometric="rgb", **kw,
                      subfiletype=1 if i else 0)  # fmt: skip
    return str(path)


def corrupt_copy(path: pathlib.Path) -> str:
    """A copy of CMU with the middle of its tile data overwritten (it opens, reads fail)."""
    data = bytearray(CMU.read_bytes())
    n = len(data)
    data[n // 4 : n // 2] = np.random.default_rng(0).bytes(n // 2 - n // 4)
    path.write_bytes(bytes(data))
    return str(path)


@pytest.fixture(scope="module")
def bad_slides(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("bad")
    noise = folder / "noise.svs"
    noise.write_bytes(np.random.default_rng(0).bytes(50_000))
    truncated = folder / "truncated.svs"
    truncated.write_bytes(CMU.read_bytes()[:600_000])
    return {
        "noise": str(noise),
        "truncated": str(truncated),
        "corrupt": corrupt_copy(folder / "corrupt.svs"),
        "boxes": str(SLIDES / "boxes.tiff"),
        "small": str(SLIDES / "small.svs"),
        "nompp": write_tissue_tiff(folder / "nompp.tiff", None),
        "missing": str(folder / "gone.svs"),
    }


@pytest.fixture(scope="module")
def index() -> sampler.SlideIndex:
    return sampler.SlideIndex.build([slides.SlideRecord(str(CMU))], CONFIG)


def test_index_rejects_bad_slides_with_reasons(bad_slides, caplog):
    records = [slides.SlideRecord(p) for p in bad_slides.values()] + [slides.SlideRecord(str(CMU))]
    with caplog.at_level(logging.WARNING):
        index = sampler.SlideIndex.build(records, CONFIG, num_threads=2)
    assert [s.path for s in index.slides] == [str(CMU)]
    reasons = dict(index.rejected)
    assert set(reasons) == set(bad_slides.values())
    assert "file not found" in reasons[bad_slides["missing"]]
    for name in ("noise", "truncated", "corrupt"):
        assert "unreadable" in reasons[bad_slides[name]]
    assert "implausible resolution 352.8" in reasons[bad_slides["boxes"]]
    assert "no tissue" in reasons[bad_slides["small"]]
    assert "unknown resolution" in reasons[bad_slides["nompp"]]
    for path in bad_slides.values():
        assert any(path in r.getMessage() for r in caplog.records)


def test_index_info(index):
    (info,) = index.slides
    assert (info.width, info.height, info.mpp) == (2220, 2967, pytest.approx(0.499))
    assert info.level_mpps == (pytest.approx(0.499),) and info.mask.dtype == bool
    assert info.mask_mpp == pytest.approx(0.499 * 2220 / info.mask.shape[1])
    assert index.rejected == [] and len(index) == 1


def test_index_mpp_override(bad_slides):
    records = [slides.SlideRecord(bad_slides["nompp"], 0.5), slides.SlideRecord(str(CMU), 0.25)]
    index = sampler.SlideIndex.build(records, CONFIG)
    assert [s.mpp for s in index.slides] == [0.5, 0.25]
    assert index.slides[0].level_mpps == (0.5, 1.0)


def test_index_all_bad_raises_listing_reasons(bad_slides):
    records = [slides.SlideRecord(bad_slides[k]) for k in ("noise", "boxes", "small")]
    with pytest.raises(DataError) as e:
        sampler.SlideIndex.build(records, CONFIG)
    message = str(e.value)
    assert "None of the 3" in message and all(r.path in message for r in records)


def test_index_error_mode_raises_at_first_bad_slide(bad_slides):
    records = [slides.SlideRecord(str(CMU)), slides.SlideRecord(bad_slides["boxes"])]
    with pytest.raises(DataError, match=r"boxes\.tiff.*implausible"):
        sampler.SlideIndex.build(records, CONFIG, on_bad_slide="error")
    with pytest.raises(ConfigError):
        sampler.SlideIndex.build(records, CONFIG, on_bad_slide="ignore")


def test_index_max_mpp_for_training():
    with pytest.raises(DataError, match="too coarse"):
        sampler.SlideIndex.build([slides.SlideRecord(str(CMU))], CONFIG, max_mpp_for_training=0.25)


def test_each_slide_serves_only_the_mpps_it_reaches_without_upscaling(index):
    # CMU is 0.499 um/px: asked for 0.25/0.5/1.0 it serves 0.5 and 1.0, weights renormalised.
    patches = sampler.PatchSampler(index, 32, [0.25, 0.5, 1.0])
    drawn = [float(patches(np.random.default_rng(i))["mpp"]) for i in range(60)]
    assert set(drawn) == {0.5, 1.0}
    assert 15 < drawn.count(0.5) < 45
    with pytest.raises(DataError, match=r"coarser than every requested mpp"):
        sampler.PatchSampler(index, 64, [0.25])
    with pytest.raises(ConfigError):
        sampler.PatchSampler(index, 64, [0.5, 1.0], mpp_weights=[1.0])


def test_sampler_output_and_determinism(index):
    patch_sampler = sampler.PatchSampler(index, 96, [0.5, 1.0, 2.0])
    a = [patch_sampler(np.random.default_rng(7)) for _ in range(2)]
    b = sampler.PatchSampler(index, 96, [0.5, 1.0, 2.0])(np.random.default_rng(7))
    for other in (a[1], b):
        assert all(np.array_equal(a[0][k], other[k]) for k in a[0])
    out = a[0]
    assert out["image"].shape == (96, 96, 3) and out["image"].dtype == np.uint8
    expected = {"slide": np.int32, "x": np.int32, "y": np.int32, "mpp": np.float32}
    expected |= {"tissue": np.float32, "read_errors": np.int32}
    assert set(out) == {"image", *expected}
    for key, dtype in expected.items():
        assert out[key].dtype == dtype and out[key].shape == ()
    assert 0.35 <= float(out["tissue"]) <= 1.0
    rng = np.random.default_rng(8)
    assert not np.array_equal(patch_sampler(rng)["image"], patch_sampler(rng)["image"])


def test_sampler_pickles_after_use(index):
    patch_sampler = sampler.PatchSampler(index, 64, [0.5, 1.0])
    patch_sampler(np.random.default_rng(0))
    assert len(patch_sampler.handles) == 1
    clone = pickle.loads(pickle.dumps(patch_sampler))
    assert clone._handles is None
    x, y = patch_sampler(np.random.default_rng(3)), clone(np.random.default_rng(3))
    assert all(np.array_equal(x[k], y[k]) for k in x)


def test_sampler_weights_and_coordinates(index):
    patch_sampler = sampler.PatchSampler(index, 32, [0.5, 2.0], mpp_weights=[3, 1])
    rng = np.random.default_rng(0)
    draws = [patch_sampler(rng) for _ in range(400)]
    share = np.mean([float(d["mpp"]) == 0.5 for d in draws])
    assert 0.68 < share < 0.82
    info = index.slides[0]
    for d in draws:
        extent = 32 * float(d["mpp"]) / info.mpp
        cx, cy = int(d["x"]) + extent / 2, int(d["y"]) + extent / 2
        assert 0 <= cx <= info.width and 0 <= cy <= info.height
        frac = sampler.tissue_fraction(info, int(d["x"]), int(d["y"]), extent)
        assert frac >= 0.3  # min_tissue_fraction 0.35, up to a pixel of rounding
        assert int(d["read_errors"]) == 0


def test_tissue_fraction(index):
    info = index.slides[0]
    assert sampler.tissue_fraction(info, -5000, -5000, 100) == 0.0
    assert sampler.tissue_fraction(info, 0, 0, 200) == pytest.approx(0.0, abs=0.05)
    whole = sampler.tissue_fraction(info, 0, 0, max(info.width, info.height))
    assert whole == pytest.approx(info.mask.mean() * info.width / info.height, rel=0.02)


def test_sampler_survives_read_errors(tmp_path, caplog):
    good = tmp_path / "good.svs"
    shutil.copy(CMU, good)
    vanishing = tmp_path / "vanishing.svs"
    shutil.copy(CMU, vanishing)
    records = [slides.SlideRecord(str(good)), slides.SlideRecord(str(vanishing))]
    patch_sampler = sampler.PatchSampler(sampler.SlideIndex.build(records, CONFIG), 32, [1.0])
    os.remove(vanishing)
    rng = np.random.default_rng(0)
    with caplog.at_level(logging.WARNING):
        draws = [patch_sampler(rng) for _ in range(20)]
    assert all(int(d["slide"]) == 0 for d in draws)
    assert sum(int(d["read_errors"]) for d in draws) > 0
    assert any("vanishing.svs" in r.getMessage() for r in caplog.records)
    os.remove(good)
    patch_sampler.handles.close()
    with pytest.raises(DataError, match="patch reads failed"):
        patch_sampler(rng)


def test_sampler_survives_corrupt_tiles(bad_slides, index, caplog):
    # The corrupt copy fails SlideIndex.build; pretend it passed, as if it broke afterwards.
    corrupt = dataclasses.replace(index.slides[0], path=bad_slides["corrupt"])
    mixed = sampler.SlideIndex([index.slides[0], corrupt], [])
    patch_sampler = sampler.PatchSampler(mixed, 64, [0.5])
    rng = np.random.default_rng(0)
    with caplog.at_level(logging.WARNING):
        draws = [patch_sampler(rng) for _ in range(60)]
    assert sum(int(d["read_errors"]) for d in draws) > 1
    assert all(d["image"].shape == (64, 64, 3) for d in draws)
    # one warning per slide and kind of error, however many reads fail (issue 14)
    warned = [r.getMessage() for r in caplog.records if "Read error" in r.getMessage()]
    assert len(warned) == 1 and bad_slides["corrupt"] in warned[0]
    restored = pickle.loads(pickle.dumps(patch_sampler))  # a fresh worker warns afresh
    assert not restored._warned


def test_index_max_bad_fraction(bad_slides):
    records = [slides.SlideRecord(p) for p in (bad_slides["boxes"], bad_slides["small"])]
    records.append(slides.SlideRecord(str(CMU)))
    with pytest.raises(DataError, match=r"2 of 3 slides are unusable") as e:
        sampler.SlideIndex.build(records, CONFIG, max_bad_fraction=0.5)
    assert "implausible resolution" in str(e.value) and "no tissue" in str(e.value)
    assert all(r.path in str(e.value) for r in records[:2])
    assert len(sampler.SlideIndex.build(records, CONFIG, max_bad_fraction=0.7)) == 1
    with pytest.raises(ConfigError):
        sampler.SlideIndex.build(records, CONFIG, max_bad_fraction=1.5)


@pytest.fixture(scope="module")
def two_slides(tmp_path_factory) -> sampler.SlideIndex:
    """The same tissue image at 0.5 and at 1.0 um/px: the second has 4x the tissue area."""
    folder = tmp_path_factory.mktemp("two")
    paths = [write_tissue_tiff(folder / f"s{i}.tiff", mpp) for i, mpp in enumerate((0.5, 1.0))]
    config = tissue.TissueConfig(mask_mpp=2.0)
    return sampler.SlideIndex.build([slides.SlideRecord(p) for p in paths], config)


def test_slide_weighting(two_slides):
    (a, b), draws = two_slides.slides, 400
    area = [s.mask.sum() * s.mask_mpp**2 for s in (a, b)]
    assert area[1] / area[0] == pytest.approx(4.0, rel=0.15)  # 4x the um^2 of tissue
    for weighting, p_b in (("uniform", 0.5), ("tissue_area", area[1] / sum(area))):
        patch_sampler = sampler.PatchSampler(two_slides, 16, [1.0], slide_weighting=weighting)
        assert patch_sampler.slide_probs[1] == pytest.approx(p_b)
        rng = np.random.default_rng(0)
        share = np.mean([int(patch_sampler(rng)["slide"]) for _ in range(draws)])
        assert share == pytest.approx(p_b, abs=4 * np.sqrt(p_b * (1 - p_b) / draws))
        x, y = (patch_sampler(np.random.default_rng(5)) for _ in range(2))
        assert all(np.array_equal(x[k], y[k]) for k in x)
    with pytest.raises(ConfigError):
        sampler.PatchSampler(two_slides, 16, [1.0], slide_weighting="area")


def locations(draws) -> list[tuple]:
    return [(int(d["slide"]), int(d["x"]), int(d["y"]), float(d["mpp"])) for d in draws]


def test_patch_budget_pool(two_slides, monkeypatch):
    make = lambda **kw: sampler.PatchSampler(two_slides, 16, [1.0, 2.0], patch_budget=5, **kw)
    patch_sampler = make()
    pool = patch_sampler.budget_pool()
    assert len(set(pool)) == 5
    assert make().budget_pool() == pool
    assert pickle.loads(pickle.dumps(patch_sampler)).budget_pool() == pool
    assert make(budget_seed=1).budget_pool() != pool
    rng = np.random.default_rng(0)
    draws = [patch_sampler(rng) for _ in range(200)]
    assert set(locations(draws)) == {(s, x, y, np.float32(m)) for s, m, x, y in pool}
    assert len(patch_sampler._patches) == 5  # every pool patch decoded once, then cached

    def no_reads(*args):
        raise AssertionError("slide read for a cached pool patch")

    monkeypatch.setattr(slides, "read_patch", no_reads)
    again = [patch_sampler(rng) for _ in range(20)]
    by_location = {loc: d["image"] for loc, d in zip(locations(draws), draws, strict=True)}
    for loc, d in zip(locations(again), again, strict=True):
        assert np.array_equal(d["image"], by_location[loc])
    clone = pickle.loads(pickle.dumps(patch_sampler))
    assert len(clone._patches) == 0
    with pytest.raises(AssertionError, match="cached pool patch"):
        clone(rng)


def test_patch_budget_small_cache_and_unlimited(two_slides):
    patch_sampler = sampler.PatchSampler(
        two_slides, 16, [1.0], patch_budget=5, budget_cache_items=2
    )
    rng = np.random.default_rng(1)
    draws = [patch_sampler(rng) for _ in range(40)]
    assert len(patch_sampler._patches) == 2 and len(set(locations(draws))) <= 5
    unlimited = sampler.PatchSampler(two_slides, 16, [1.0])
    assert unlimited.budget_pool() == [] and unlimited.budget_cache_items == 0
    assert len(set(locations(unlimited(rng) for _ in range(40)))) > 30
    with pytest.raises(ConfigError):
        sampler.PatchSampler(two_slides, 16, [1.0], patch_budget=-1)

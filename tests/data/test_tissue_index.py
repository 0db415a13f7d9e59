"""Tissue runs and the columnar TissueIndex: lossless masks, exact fractions, the same draws as the
full-mask sampler (and the same distribution), files that map and pickle small."""

import pickle
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from pathfm.data import sampler, slides, tissue, tissue_runs
from pathfm.data.mask_cache import SlideInfo
from pathfm.data.tissue_index import TissueIndex

CMU = Path(__file__).resolve().parents[3] / "shared" / "test-slides" / "CMU-1-Small-Region.svs"
CONFIG = tissue.TissueConfig()


def _random_masks():
    rng = np.random.default_rng(0)
    yield np.zeros((3, 4), bool)
    yield np.ones((3, 4), bool)
    yield np.ones((1, 1), bool)
    yield rng.random((17, 23)) < 0.5  # runs touching both row ends
    blobs = np.zeros((40, 60), bool)
    blobs[5:30, 10:25] = blobs[20:38, 30:58] = True
    blobs[10:12, 12:14] = False  # a hole
    yield blobs


@pytest.mark.parametrize("mask", list(_random_masks()), ids=lambda m: f"{m.shape}-{m.sum()}")
def test_runs_are_lossless_and_give_the_kth_tissue_pixel(mask):
    runs = tissue_runs.mask_to_runs(mask)
    np.testing.assert_array_equal(tissue_runs.runs_to_mask(runs, mask.shape), mask)
    assert runs.row_cum[-1] == mask.sum() and np.all(runs.end > runs.begin)
    np.testing.assert_array_equal(np.diff(runs.row_cum.astype(int)), mask.sum(axis=1))
    flat = np.flatnonzero(mask)
    got = [tissue_runs.pixel_of_ordinal(runs, k) for k in range(len(flat))]
    assert got == [tuple(divmod(int(f), mask.shape[1])) for f in flat]
    with pytest.raises(IndexError):
        tissue_runs.pixel_of_ordinal(runs, len(flat))


def test_box_fraction_by_hand():
    mask = np.array([[1, 0], [0, 0]], bool)  # 2 x 2 mask over a 20 x 20 px slide
    runs = tissue_runs.mask_to_runs(mask)
    frac = lambda x0, y0, e: tissue_runs.box_fraction(runs, (2, 2), (20, 20), x0, y0, e)
    assert frac(0, 0, 10) == 1.0  # exactly the tissue pixel
    assert frac(5, 5, 10) == 0.25  # a quarter of it
    assert frac(0, 0, 20) == 0.25
    assert frac(-10, -10, 20) == 0.25  # half outside the slide: outside counts as background
    assert frac(30, 30, 5) == 0.0
    assert frac(10, 10, 10) == 0.0  # only background rows


@pytest.mark.parametrize("mask", list(_random_masks())[3:], ids=["noise", "blobs"])
def test_box_fraction_equals_the_full_mask_fraction(mask):
    runs = tissue_runs.mask_to_runs(mask)
    width, height = mask.shape[1] * 7.3, mask.shape[0] * 7.3
    rng = np.random.default_rng(1)
    for _ in range(300):
        x0, y0 = rng.uniform(-50, width), rng.uniform(-50, height)
        extent = rng.uniform(1, 200)
        want = tissue.mask_fraction(mask, width, height, x0, y0, extent)
        got = tissue_runs.box_fraction(runs, mask.shape, (width, height), x0, y0, extent)
        assert got == pytest.approx(want, abs=1e-12)


def test_masks_too_wide_for_uint16_columns_are_refused():
    with pytest.raises(ValueError, match="raise mask_mpp"):
        tissue_runs.mask_to_runs(np.zeros((1, 70_000), bool))


# ---- The sampler against today's full-mask algorithm --------------------------------------------
def reference_draw(infos, patch_size, mpps, weighting, rng, min_tissue=0.35, max_tries=16):
    """The pre-index PatchSampler._draw on full bool masks (flatnonzero + mask_fraction)."""
    areas = np.array([s.mask.sum() * s.mask_mpp**2 for s in infos])
    if weighting == "uniform":
        slide = int(rng.integers(len(infos)))
    else:
        cum = np.cumsum(areas / areas.sum())
        slide = min(int(np.searchsorted(cum, rng.random(), side="right")), len(infos) - 1)
    info = infos[slide]
    weights = np.where(np.asarray(mpps) * 1.05 >= info.level_mpps[0], 1.0, 0.0)
    choice = int(np.searchsorted(np.cumsum(weights / weights.sum()), rng.random(), side="right"))
    mpp = mpps[min(choice, len(mpps) - 1)]
    tissue_pixels = np.flatnonzero(info.mask)
    mask_w = info.mask.shape[1]
    sx, sy = info.width / mask_w, info.height / info.mask.shape[0]
    extent = patch_size * mpp / info.mpp
    for _ in range(max_tries):
        row, col = divmod(int(tissue_pixels[rng.integers(len(tissue_pixels))]), mask_w)
        cx, cy = (col + rng.random()) * sx, (row + rng.random()) * sy
        frac = tissue.mask_fraction(
            info.mask, info.width, info.height, cx - extent / 2, cy - extent / 2, extent
        )
        if frac >= min_tissue:
            break
    return slide, mpp, (cx, cy), frac


@pytest.fixture(scope="module")
def slide_infos(synthetic_slide_dir):
    records = [*slides.find_slides(str(synthetic_slide_dir)), slides.SlideRecord(str(CMU))]
    return sampler.SlideIndex.build(records, CONFIG).slides


MPPS = (0.25, 0.5, 1.0, 2.0)


@pytest.mark.parametrize("weighting", ["uniform", "tissue_area"])
def test_sampler_draws_exactly_what_the_full_mask_sampler_draws(slide_infos, weighting):
    new = sampler.PatchSampler(
        sampler.SlideIndex(slide_infos, []), 224, MPPS, slide_weighting=weighting
    )
    for seed in (3, 11):
        for i in range(300):
            got = new._draw(np.random.default_rng([seed, i]))
            want = reference_draw(
                slide_infos, 224, MPPS, weighting, np.random.default_rng([seed, i])
            )
            assert got[:3] == want[:3]
            assert got[3] == pytest.approx(want[3], abs=1e-12)


def _draws(draw, n, seed):
    out = [draw(np.random.default_rng([seed, i])) for i in range(n)]
    slide = np.array([d[0] for d in out])
    mpp = np.array([d[1] for d in out])
    xy = np.array([d[2] for d in out])
    return slide, mpp, xy, np.array([d[3] for d in out])


def test_sampled_distribution_matches_the_full_mask_sampler(slide_infos):
    """Other seeds on each side: slide x mpp counts (chi-square) and, per slide, x, y and tissue
    fraction (two-sample KS) are indistinguishable from today's sampler."""
    n = 3000
    new = sampler.PatchSampler(
        sampler.SlideIndex(slide_infos, []), 224, MPPS, slide_weighting="tissue_area"
    )
    a = _draws(new._draw, n, seed=101)
    b = _draws(lambda r: reference_draw(slide_infos, 224, MPPS, "tissue_area", r), n, seed=202)
    cells = [(s, m) for s in range(len(slide_infos)) for m in MPPS]
    table = np.array([[np.sum((d[0] == s) & (d[1] == m)) for s, m in cells] for d in (a, b)], float)
    table = table[:, table.sum(axis=0) > 0]
    assert stats.chi2_contingency(table).pvalue > 1e-3
    for s in range(len(slide_infos)):
        in_a, in_b = a[0] == s, b[0] == s
        for values_a, values_b in (
            (a[2][:, 0], b[2][:, 0]),
            (a[2][:, 1], b[2][:, 1]),
            (a[3], b[3]),
        ):
            assert stats.ks_2samp(values_a[in_a], values_b[in_b]).pvalue > 1e-3
    # and the threshold is met as before (the fallback after max_tries is rare on these slides)
    assert np.mean(a[3] >= 0.35) == pytest.approx(np.mean(b[3] >= 0.35), abs=0.02)


# ---- Files, filters, pickling ------------------------------------------------------------------
def test_index_files_map_back_identical_and_the_sampler_pickles_small(slide_infos, tmp_path):
    memory = TissueIndex.from_slide_infos(slide_infos, [("gone.svs", "file not found")])
    memory.save(str(tmp_path / "index"))
    mapped = TissueIndex.load(str(tmp_path / "index"))
    assert len(mapped) == len(slide_infos) and mapped.rejected == [("gone.svs", "file not found")]
    assert isinstance(mapped.run_begin.base, np.memmap)  # mapped, not read into memory
    for i, info in enumerate(slide_infos):
        np.testing.assert_array_equal(mapped.mask(i), info.mask)
        assert mapped.path(i) == info.path and mapped.levels(i) == info.level_mpps
        assert (mapped.width[i], mapped.height[i], mapped.mpp[i]) == (
            info.width, info.height, info.mpp,
        )  # fmt: skip
    on_disk = sampler.PatchSampler(mapped, 224, MPPS)
    in_memory = sampler.PatchSampler(memory, 224, MPPS)
    payload = pickle.dumps(on_disk)
    assert len(payload) < 2048  # settings and a directory name, whatever the masks
    TissueIndex.from_slide_infos(slide_infos * 40).save(str(tmp_path / "index_x40"))
    forty = sampler.PatchSampler(TissueIndex.load(str(tmp_path / "index_x40")), 224, MPPS)
    assert abs(len(pickle.dumps(forty)) - len(payload)) <= 8  # 40x the slides, same size
    assert len(pickle.dumps(in_memory)) > 5 * len(payload)  # an in-memory index travels whole
    clone = pickle.loads(payload)
    for i in range(50):
        rng_a, rng_b = np.random.default_rng([0, i]), np.random.default_rng([0, i])
        assert clone._draw(rng_a) == in_memory._draw(rng_b)


def test_max_mpp_leaves_out_coarse_slides_and_root_moves_paths(tmp_path):
    mask = np.ones((4, 4), bool)
    fine = SlideInfo("a/fine.svs", 0.25, 400, 400, (0.25, 1.0), mask, 25.0)
    coarse = SlideInfo("b/coarse.svs", 2.0, 50, 50, (2.0,), mask, 25.0)
    TissueIndex.from_slide_infos([fine, coarse]).save(str(tmp_path / "index"))
    every = TissueIndex.load(str(tmp_path / "index"), root="/mnt/elsewhere")
    assert len(every) == 2 and every.path(1) == "/mnt/elsewhere/b/coarse.svs"
    fine_only = TissueIndex.load(str(tmp_path / "index"), max_mpp=1.0)
    assert len(fine_only) == 1 and fine_only.path(0) == "a/fine.svs"
    assert fine_only.rejected == [("b/coarse.svs", sampler.mpp_problem(2.0, 1.0))]
    assert "too coarse for training" in fine_only.rejected[0][1]
    clone = pickle.loads(pickle.dumps(fine_only))
    assert len(clone) == 1 and clone.levels(0) == (0.25, 1.0)

"""TiffJpegSlide: eligibility, pixel agreement with OpenSlide read_region, errors, integration."""

import concurrent.futures
import pathlib
import pickle
import shutil

import numpy as np
import openslide
import pytest
import tifffile

from pathfm.data import sampler, slides
from pathfm.data.synthetic import write_synthetic_slide
from pathfm.data.tiff_reader import TiffJpegSlide, TileCache

SLIDES = pathlib.Path("/work/shared/test-slides")
CMU = SLIDES / "CMU-1-Small-Region.svs"

# (x0, y0, w, h) in level-0 px: interior, tile-crossing, odd sizes/offsets, partly outside.
REGIONS = [
    (0, 0, 224, 224),
    (250, 250, 300, 260),
    (511, 509, 224, 224),
    (1001, 777, 37, 191),
    (-100, 40, 224, 224),
    (57, -61, 150, 100),
    (-7, -5, 33, 29),
    (1900, 1400, 300, 300),
    (2000, 1500, 10, 10),
]


def openslide_rgb(slide: openslide.OpenSlide, x: int, y: int, level: int, w: int, h: int):
    return slides.composite_on_white(np.asarray(slide.read_region((x, y), level, (w, h))))


def mad(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return float(np.abs(a.astype(np.int16) - b).mean())


@pytest.fixture(scope="module", params=[2, 4], ids=["ds2", "ds4"])
def synthetic(request, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("syn") / f"syn{request.param}.tiff"
    write_synthetic_slide(
        path, seed=request.param, width=2048, height=1536, downsample=request.param
    )
    return str(path)


def test_cmu_svs_matches_openslide():
    fast, ref = TiffJpegSlide.open(CMU), openslide.OpenSlide(CMU)
    assert fast is not None and fast.level_count == ref.level_count == 1  # no label/macro/thumb
    assert fast.level_dimensions == ref.level_dimensions and fast.dimensions == (2220, 2967)
    assert fast.level_downsamples == ref.level_downsamples
    assert fast.properties == dict(ref.properties)
    assert slides.slide_mpp(fast.properties) == pytest.approx(0.499)
    for x, y, w, h in [*REGIONS, (2100, 2900, 224, 224), (239, 479, 2, 2)]:
        got, want = fast.read_rgb((x, y), 0, (w, h)), openslide_rgb(ref, x, y, 0, w, h)
        assert np.array_equal(got, want), (x, y, w, h)  # RGB JPEG + JPEGTables, no YCbCr
    corner = fast.read_rgb((2100, 2900), 0, (224, 224))
    assert (corner[67:] == 255).all() and (corner[:, 120:] == 255).all()  # beyond the image


def test_synthetic_every_level_matches_openslide(synthetic):
    fast, ref = TiffJpegSlide.open(synthetic), openslide.OpenSlide(synthetic)
    assert fast is not None and ref.properties["openslide.vendor"] == "generic-tiff"
    assert fast.level_dimensions == ref.level_dimensions and fast.level_count >= 2
    assert fast.level_downsamples == ref.level_downsamples
    for level, ds in enumerate(fast.level_downsamples):
        for x, y, w, h in REGIONS:
            got, want = fast.read_rgb((x, y), level, (w, h)), openslide_rgb(ref, x, y, level, w, h)
            assert mad(got, want) < 0.5, (level, x, y, w, h)
            if all(v < 0 or v % ds == 0 for v in (x, y)):  # integer level origin: same pixels
                assert np.array_equal(got, want), (level, x, y, w, h)
    outside = fast.read_rgb((-500, 5000), 1, (64, 64))
    assert (outside == 255).all() and fast.read_rgb((0, 0), 0, (0, 5)).shape == (5, 0, 3)


def test_small_svs_with_thumbnail_is_eligible():
    fast = TiffJpegSlide.open(SLIDES / "small.svs")
    with openslide.OpenSlide(SLIDES / "small.svs") as ref:
        assert fast is not None and fast.level_dimensions == ref.level_dimensions == ((16, 16),)
        assert mad(fast.read_rgb((-3, 2), 0, (20, 20)), openslide_rgb(ref, -3, 2, 0, 20, 20)) < 0.5


def test_ineligible_files_fall_back(tmp_path):
    with tifffile.TiffFile(SLIDES / "boxes.tiff") as tif:
        assert tif.pages[0].compression == 8  # deflate: OpenSlide reads it via libtiff
    assert TiffJpegSlide.open(SLIDES / "boxes.tiff") is None
    img = np.full((512, 512, 3), 200, np.uint8)
    tifffile.imwrite(tmp_path / "strips.tiff", img, compression="jpeg", photometric="rgb")
    tifffile.imwrite(tmp_path / "gray.tiff", img[..., 0], tile=(256, 256), compression="jpeg")
    (tmp_path / "notes.tiff").write_text("not a slide")
    for name in ("strips.tiff", "gray.tiff", "notes.tiff", "missing.tiff"):
        assert TiffJpegSlide.open(tmp_path / name) is None, name
    handles = slides.SlideHandles(max_open=2)
    assert isinstance(handles.get(str(SLIDES / "boxes.tiff")), openslide.OpenSlide)


def test_read_errors_are_value_or_os_errors(tmp_path, synthetic):
    path = tmp_path / "bad.tiff"
    shutil.copy(synthetic, path)
    with tifffile.TiffFile(path) as tif:
        offsets, counts = tif.pages[0].dataoffsets, tif.pages[0].databytecounts
    fast = TiffJpegSlide.open(path)
    with open(path, "r+b") as f:
        f.seek(offsets[1])
        f.write(b"\0" * 16)  # tile 1 is no JPEG any more
        f.seek(offsets[2] + counts[2] - 64)
        f.write(b"\0" * 64)  # tile 2 lost its end-of-image marker
    with pytest.raises(ValueError, match="tile 1"):
        fast.read_rgb((300, 10), 0, (10, 10))
    with pytest.raises(ValueError, match="end-of-image"):
        fast.read_rgb((600, 10), 0, (10, 10))
    with pytest.raises(ValueError, match="level 9"):
        fast.read_rgb((0, 0), 9, (10, 10))
    fast.read_rgb((0, 0), 0, (10, 10))  # tile 0 still reads
    with open(path, "r+b") as f:
        f.truncate(offsets[3] + 10)
    with pytest.raises(OSError, match="truncated"):
        fast.read_rgb((800, 10), 0, (10, 10))
    fast.close()
    with pytest.raises(sampler.READ_ERRORS):
        fast.read_rgb((0, 0), 0, (10, 10))


def test_tile_cache_is_bounded_and_transparent(synthetic):
    fast = TiffJpegSlide.open(synthetic)
    plain = fast.read_rgb((300, 300), 0, (300, 300))  # 4 tiles of 256 px
    cache = TileCache(3 * 256 * 256 * 3)
    fast.set_cache(cache)
    assert np.array_equal(fast.read_rgb((300, 300), 0, (300, 300)), plain)
    assert len(cache) == 3 and cache.nbytes <= cache.max_bytes
    assert np.array_equal(fast.read_rgb((300, 300), 0, (300, 300)), plain)  # partly cached


def test_concurrent_reads_agree(synthetic):
    fast = TiffJpegSlide.open(synthetic)
    fast.set_cache(TileCache(1 << 20))
    rng = np.random.default_rng(0)
    spots = [(int(rng.integers(-100, 1900)), int(rng.integers(-100, 1400))) for _ in range(24)]
    read = lambda xy: fast.read_rgb(xy, int(xy[0]) % fast.level_count, (160, 96))
    serial = [read(xy) for xy in spots]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(read, spots))
    assert all(np.array_equal(a, b) for a, b in zip(serial, parallel, strict=True))


def test_slide_handles_dispatch_and_pickle(synthetic):
    handles = slides.SlideHandles(max_open=4, cache_bytes=8 << 20)
    slide = handles.get(synthetic)
    assert isinstance(slide, TiffJpegSlide) and handles.get(synthetic) is slide
    assert isinstance(handles.get(str(CMU)), TiffJpegSlide)
    clone = pickle.loads(pickle.dumps(slides.SlideHandles(fast_tiff=False)))
    assert clone.fast_tiff is False and isinstance(clone.get(synthetic), openslide.OpenSlide)
    ref = clone.get(synthetic)
    for center, mpp in [((1000.5, 700.25), 0.25), ((333.0, 901.0), 0.5), ((80.0, 1500.0), 1.3)]:
        got = slides.read_patch(slide, center, 96, mpp, base_mpp=0.25)
        want = slides.read_patch(ref, center, 96, mpp, base_mpp=0.25)
        assert got.shape == (96, 96, 3) and mad(got, want) < 0.5, (center, mpp)
    handles.close()
    assert len(handles) == 0

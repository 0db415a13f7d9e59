"""TiffJpegSlide: eligibility, pixel agreement with OpenSlide read_region, errors, integration."""

import concurrent.futures
import dataclasses
import io
import pathlib
import pickle
import shutil

import cv2
import imagecodecs
import numpy as np
import openslide
import PIL.Image
import pytest
import tifffile

from pathfm.data import sampler, slides
from pathfm.data.synthetic import write_synthetic_slide
from pathfm.data.tiff_reader import (
    TiffJpegSlide,
    TileCache,
    decode_tile,
    frame_height_at,
    jpeg_stream,
)

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
    lower = fast.read_rgb((300, 520), 0, (300, 300))  # needs all of tile row 2
    cache = TileCache(2 * 256 * 256 * 3)
    fast.set_cache(cache)
    assert np.array_equal(fast.read_rgb((300, 300), 0, (300, 300)), plain)
    # tile row 1 whole, row 2 down to level row 600 (+ ROW_MARGIN): 256 + 89 + 89 rows kept
    assert [t.shape[0] for t in cache._tiles.values()] == [256, 89, 89]
    assert cache.nbytes <= cache.max_bytes
    assert np.array_equal(fast.read_rgb((300, 300), 0, (300, 300)), plain)  # cached
    assert np.array_equal(fast.read_rgb((300, 520), 0, (300, 300)), lower)  # too short: redecoded
    assert [t.shape[0] for t in cache._tiles.values()] == [256, 53, 53]  # row 2 col 2, row 3
    assert cache.nbytes <= cache.max_bytes


@pytest.mark.parametrize("source", ["CMU", "synthetic"])
def test_decoding_only_the_top_rows_of_a_tile_gives_the_full_decode_s_rows(source, synthetic):
    """CMU's tiles are 4:4:4 RGB, the synthetic ones 4:2:0 YCbCr, whose chroma upsampling reads
    the row below: without ROW_MARGIN the last row differs."""
    fast = TiffJpegSlide.open(CMU if source == "CMU" else synthetic)
    tw, th = fast.tile_size(0)
    for index in (0, 5):
        stream = fast.tile_stream(0, index)
        assert frame_height_at(stream) is not None
        for scale in (1, 2, 4, 8):
            full = decode_tile(stream, tw, th, scale)
            for rows in range(1, th // scale + 1):
                top = decode_tile(stream, tw, th, scale, rows=rows)
                assert rows <= len(top) <= len(full)
                assert len(top) == min(rows + 1, len(full))  # decoded no further
                assert np.array_equal(top[:rows], full[:rows]), (scale, rows)


def test_frames_that_cannot_be_cut_short_decode_whole():
    """Progressive frames, multi-scan frames and a height left to a DNL marker keep every row."""
    image = np.random.default_rng(1).integers(0, 256, (64, 48, 3), np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, "JPEG", progressive=True)
    progressive = buffer.getvalue()
    assert frame_height_at(progressive) is None
    want = decode_tile(progressive, 48, 64)
    assert np.array_equal(decode_tile(progressive, 48, 64, rows=5), want)
    sof = b"\xff\xc0\x00\x11\x08" + (64).to_bytes(2, "big") + (48).to_bytes(2, "big") + b"\x03"
    components = b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    scan = b"\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"  # 3 components
    assert frame_height_at(b"\xff\xd8" + sof + components + scan) == 7
    one = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"  # a first scan of component 1 only
    assert frame_height_at(b"\xff\xd8" + sof + components + one) is None
    dnl = sof[:5] + b"\x00\x00" + sof[7:]
    assert frame_height_at(b"\xff\xd8" + dnl + components + scan) is None


def test_a_tile_without_data_reads_white_and_the_rest_as_before(synthetic):
    """A sparse TIFF's tile with no bytes (OpenSlide: transparent, composited on white) fills
    exactly its part of the window with white; the window is not pre-filled."""
    fast = TiffJpegSlide.open(synthetic)
    before = fast.read_rgb((300, 300), 0, (300, 300))  # tiles (1, 1) (1, 2) (2, 1) (2, 2)
    level = fast._levels[0]
    counts = level.counts.copy()
    counts[1 * level.across + 2] = 0  # row 1, col 2: level px x >= 512, y < 512
    fast._levels[0] = dataclasses.replace(level, counts=counts)
    after = fast.read_rgb((300, 300), 0, (300, 300))
    assert (after[:212, 212:] == 255).all()
    keep = np.ones((300, 300), bool)
    keep[:212, 212:] = False
    assert np.array_equal(after[keep], before[keep]) and not (before[:212, 212:] == 255).all()


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
    for center, mpp in [((1000.5, 700.25), 0.25), ((333.0, 901.0), 0.4), ((80.0, 1500.0), 1.3)]:
        got = slides.read_patch(slide, center, 96, mpp, base_mpp=0.25)  # decoded at full size
        want = slides.read_patch(ref, center, 96, mpp, base_mpp=0.25)
        assert got.shape == (96, 96, 3) and mad(got, want) < 0.5, (center, mpp)
    handles.close()
    assert len(handles) == 0


# Patches decoded at 1/s in the DCT domain vs OpenSlide's full decode + the same INTER_AREA resize:
# the mean absolute difference of a patch, in grey levels (docs/data.md). Real H&E: 0.12-0.19;
# the synthetic slides' textures near the level's Nyquist frequency: 0.6-1.4, at most 2.2.
# Patches decoded at 1/s in the DCT domain vs OpenSlide's full decode + the same INTER_AREA resize:
# the mean absolute difference of a patch, in grey levels (docs/data.md). Real H&E: 0.1-0.2 where
# the decode gives the output size, 0.6 (at most 0.86) with a >= 4x area step after it; the
# synthetic slides' textures near the level's Nyquist frequency: 0.7-1.4, at most 2.2.
SCALED_MAD = {"CMU": 1.0, "synthetic": 2.5}


# (read, scale) for 224 px outputs
DECODE_SCALE_CASES = [(446, 1), (447, 2), (449, 2), (1000, 1), (896, 4), (897, 4), (2000, 2),
                      (1792, 8), (4000, 4), (7168, 8), (9000, 8)]  # fmt: skip


@pytest.mark.parametrize(("read", "scale"), DECODE_SCALE_CASES)
def test_decode_scale_is_the_largest_that_keeps_the_output_size(read, scale):
    assert slides.decode_scale(read, 224) == scale


def test_scaled_decoding_matches_openslide_plus_area_resize(synthetic):
    rng = np.random.default_rng(0)
    scaled = {"CMU": 0, "synthetic": 0}
    cases = [("CMU", CMU, 0.499, (600, 1600, 600, 2300)),
             ("synthetic", synthetic, 0.25, (100, 1900, 100, 1400))]  # fmt: skip
    for name, path, base, box in cases:
        fast, ref = TiffJpegSlide.open(path), openslide.OpenSlide(path)
        mpps = slides.level_mpps(fast, base)
        for mpp in (2 * base, 8 * base, 9 * base, 17 * base):
            for _ in range(6):
                center = (rng.uniform(*box[:2]), rng.uniform(*box[2:]))
                _, _, _, read = slides.patch_window(mpps, center, 96, mpp)
                scaled[name] += slides.decode_scale(read, 96) > 1
                got = slides.read_patch(fast, center, 96, mpp, base)
                want = slides.read_patch(ref, center, 96, mpp, base)
                assert mad(got, want) < SCALED_MAD[name], (name, mpp, center)
                assert mad(got, np.roll(want, 2, axis=1)) > mad(got, want)  # same place
    assert scaled["CMU"] == 24 and scaled["synthetic"] >= 6  # ds2: 8x only; ds4: 2x and 8x


def test_scaled_read_is_the_scaled_decode_of_its_tiles(synthetic):
    fast = TiffJpegSlide.open(synthetic)
    tw, th = fast.tile_size(0)
    for scale in (2, 4, 8):
        # decoded pixels [tw/s - 5, ...): crosses tiles 0 and 1 (and 2 rows of tiles), same pixels
        region = fast.read_rgb((scale * (tw // scale - 5), 0), 0, (10, th // scale + 3), scale)
        tiles = [decode_tile(fast.tile_stream(0, i), tw, th, scale) for i in (0, 1)]
        assert np.array_equal(region[: th // scale, :5], tiles[0][:, -5:])
        assert np.array_equal(region[: th // scale, 5:], tiles[1][:, :5])
        full = decode_tile(fast.tile_stream(0, 0), tw, th)
        area = cv2.resize(full, (tw // scale, th // scale), interpolation=cv2.INTER_AREA)
        assert mad(tiles[0], area) < SCALED_MAD["synthetic"]
    beyond = fast.read_rgb((10_000_000, 0), 0, (4, 4), 8)
    assert (beyond == 255).all()
    with pytest.raises(ValueError, match="scale 3"):
        fast.read_rgb((0, 0), 0, (4, 4), 3)


def test_rgb_tiles_stay_rgb_even_with_a_jfif_marker():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), np.uint8)
    image[:8] = (200, 30, 90)
    stored_rgb = imagecodecs.jpeg8_encode(image, level=95, colorspace="RGB", outcolorspace="RGB")
    want = imagecodecs.jpeg8_decode(stored_rgb, colorspace="RGB", outcolorspace="RGB")
    jfif = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    body = stored_rgb[2:]
    if body[:2] == b"\xff\xee":  # the encoder's own Adobe marker: replace it by a JFIF one
        body = body[2 + int.from_bytes(body[2:4], "big") :]
    got = decode_tile(jpeg_stream(b"\xff\xd8" + jfif + body, None, "RGB"), 16, 16)
    assert np.array_equal(got, want)
    as_ycbcr = decode_tile(jpeg_stream(b"\xff\xd8" + jfif + body, None, "YCbCr"), 16, 16)
    assert mad(as_ycbcr, want) > 20  # what libjpeg's JFIF default would have made of it

"""Slide discovery, resolution, level choice and patch reading (real OpenSlide reads)."""

import pathlib
import pickle

import cv2
import numpy as np
import openslide
import pytest
import tifffile

from pathfm.data import slides
from pathfm.data.tiff_reader import TiffJpegSlide
from pathfm.errors import DataError

SLIDES = pathlib.Path("/work/shared/test-slides")
CMU = SLIDES / "CMU-1-Small-Region.svs"


def smooth_pattern(height: int, width: int) -> np.ndarray:
    """uint8 [h, w, 3] of slow sinusoids: saturated, JPEG-friendly, position-revealing."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 128 + 90 * np.sin(2 * np.pi * x / 160)
    g = 128 + 90 * np.sin(2 * np.pi * y / 176)
    b = 128 + 60 * np.sin(2 * np.pi * (x + y) / 256)
    return np.clip(np.stack([r, g, b], -1).round(), 0, 255).astype(np.uint8)


def write_pyramid(path, level0: np.ndarray, factor: int, levels: int, mpp: float | None = 0.25):
    """Write a JPEG tiled pyramidal TIFF (levels area-downscaled by factor**i) OpenSlide reads."""
    h, w = level0.shape[:2]
    with tifffile.TiffWriter(path) as tif:
        for i in range(levels):
            f = factor**i
            small = (w // f, h // f)
            img = level0 if i == 0 else cv2.resize(level0, small, interpolation=cv2.INTER_AREA)
            res = {}
            if mpp is not None:
                res = {"resolution": (1e4 / (mpp * f),) * 2, "resolutionunit": "CENTIMETER"}
            tif.write(
                img,
                tile=(128, 128),
                compression="jpeg",
                compressionargs={"level": 95},
                photometric="rgb",
                subfiletype=1 if i else 0,
                **res,
            )
    return str(path)


@pytest.fixture(scope="module")
def pattern():
    return smooth_pattern(768, 1024)


@pytest.fixture(scope="module", params=[(2, 4), (4, 3)], ids=["2x", "4x"])
def pyramid_path(request, tmp_path_factory, pattern):
    factor, levels = request.param
    path = tmp_path_factory.mktemp("pyr") / f"pyramid{factor}.tiff"
    return write_pyramid(path, pattern, factor, levels)


@pytest.fixture
def pyramid(pyramid_path):
    with openslide.OpenSlide(pyramid_path) as slide:
        yield slide


# --- find_slides -------------------------------------------------------------------------


def _touch(folder: pathlib.Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")


def test_find_slides_directory_is_sorted_and_filtered(tmp_path):
    _touch(tmp_path, "b.svs", "a.TIFF", "notes.txt", "c.ndpi")
    _touch(tmp_path / "sub", "d.svs")
    (tmp_path / "dir.svs").mkdir()
    got = [pathlib.Path(r.path).name for r in slides.find_slides(str(tmp_path))]
    assert got == ["a.TIFF", "b.svs", "c.ndpi"]
    assert all(r.mpp_override is None for r in slides.find_slides(str(tmp_path)))


def test_find_slides_glob(tmp_path):
    _touch(tmp_path, "b.svs", "a.svs", "c.tiff")
    got = [pathlib.Path(r.path).name for r in slides.find_slides(str(tmp_path / "*.svs"))]
    assert got == ["a.svs", "b.svs"]


def test_find_slides_csv_relative_paths_and_mpp(tmp_path):
    _touch(tmp_path, "a.svs")
    _touch(tmp_path / "m", "b.tiff")
    manifest = tmp_path / "m" / "slides.csv"
    manifest.write_text("path,mpp,label\n../a.svs,0.25,x\nb.tiff,,y\n")
    records = slides.find_slides(str(manifest))
    assert [pathlib.Path(r.path).resolve() for r in records] == [
        (tmp_path / "a.svs").resolve(),
        (tmp_path / "m" / "b.tiff").resolve(),
    ]
    assert [r.mpp_override for r in records] == [0.25, None]


def test_find_slides_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="does not exist") as e:
        slides.find_slides(str(missing))
    assert str(missing) in str(e.value) and "glob" in str(e.value) and "csv" in str(e.value)


def test_find_slides_empty_matches(tmp_path):
    _touch(tmp_path, "notes.txt")
    with pytest.raises(DataError, match="no slide files"):
        slides.find_slides(str(tmp_path))
    with pytest.raises(DataError, match="matches no files"):
        slides.find_slides(str(tmp_path / "*.svs"))


def test_find_slides_csv_lists_every_missing_file_at_once(tmp_path):
    _touch(tmp_path, "ok.svs")
    manifest = tmp_path / "slides.csv"
    manifest.write_text("path\nok.svs\ngone1.svs\nsub/gone2.ndpi\n")
    with pytest.raises(DataError) as e:
        slides.find_slides(str(manifest))
    message = str(e.value)
    assert "2 missing" in message and "gone1.svs" in message and "gone2.ndpi" in message
    assert str(manifest) in message


def test_find_slides_names_at_most_20_missing_files(tmp_path):
    manifest = tmp_path / "slides.csv"
    manifest.write_text("path\n" + "".join(f"gone_{i:02d}.svs\n" for i in range(25)))
    with pytest.raises(DataError) as e:
        slides.find_slides(str(manifest))
    message = str(e.value)
    assert "25 missing" in message and "gone_19.svs" in message and "gone_20.svs" not in message
    assert "and 5 more" in message and "data.root" in message


def test_root_resolves_relative_manifest_paths_and_sources(tmp_path):
    data, elsewhere = tmp_path / "mount", tmp_path / "lists"
    _touch(data / "site_a", "one.svs")
    _touch(data / "site_b" / "deeper", "two.tif")
    elsewhere.mkdir()
    rows = "path,mpp\nsite_a/one.svs,0.25\nsite_b/deeper/two.tif,\n"
    (elsewhere / "slides.csv").write_text(rows)
    records = slides.find_slides(str(elsewhere / "slides.csv"), root=str(data))
    assert records == [
        slides.SlideRecord(str(data / "site_a" / "one.svs"), 0.25),
        slides.SlideRecord(str(data / "site_b" / "deeper" / "two.tif")),
    ]
    globbed = slides.find_slides("**/*.tif", root=str(data))  # relative to the root, recursive
    assert [r.path for r in globbed] == [str(data / "site_b" / "deeper" / "two.tif")]


def test_find_slides_csv_errors(tmp_path):
    (tmp_path / "nopath.csv").write_text("file,mpp\na.svs,0.5\n")
    with pytest.raises(DataError, match="no 'path' column"):
        slides.find_slides(str(tmp_path / "nopath.csv"))
    _touch(tmp_path, "a.svs")
    (tmp_path / "badmpp.csv").write_text("path,mpp\na.svs,fast\n")
    with pytest.raises(DataError, match="line 2"):
        slides.find_slides(str(tmp_path / "badmpp.csv"))


# --- resolution --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("properties", "expected"),
    [
        ({"openslide.mpp-x": "0.2527", "openslide.mpp-y": "0.2528"}, 0.2527),
        ({"tiff.XResolution": "40000", "tiff.ResolutionUnit": "centimeter"}, 0.25),
        ({"tiff.XResolution": "50800", "tiff.ResolutionUnit": "inch"}, 0.5),
        ({"tiff.XResolution": "1", "tiff.ResolutionUnit": "none"}, None),
        ({"openslide.objective-power": "40"}, 0.25),
        ({"openslide.mpp-x": "", "openslide.objective-power": "20"}, 0.5),
        ({}, None),
    ],
)
def test_slide_mpp(properties, expected):
    assert slides.slide_mpp(properties) == pytest.approx(expected)


def test_slide_mpp_real_files():
    assert slides.slide_mpp(openslide.OpenSlide(CMU).properties) == pytest.approx(0.499)
    boxes = slides.slide_mpp(openslide.OpenSlide(SLIDES / "boxes.tiff").properties)
    assert not slides.MPP_RANGE[0] <= boxes <= slides.MPP_RANGE[1]


# --- level choice ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mpps", "target", "level"),
    [
        ([0.25, 0.5, 1.0, 2.0], 0.25, 0),
        ([0.25, 0.5, 1.0, 2.0], 0.5, 1),
        ([0.25, 0.5, 1.0, 2.0], 0.7, 1),
        ([0.25, 0.5, 1.0, 2.0], 1.04, 2),
        ([0.25, 0.5, 1.0, 2.0], 0.96, 2),  # 1.0 within 5% of 0.96
        ([0.25, 0.5, 1.0, 2.0], 8.0, 3),
        ([0.25, 1.0, 4.0], 0.5, 0),
        ([0.25, 1.0, 4.0], 2.0, 1),
        ([0.25, 1.0, 4.0], 0.24, 0),  # level 0 within tolerance
        ([0.26, 1.04], 0.25, 0),  # 0.26 = 0.25 * 1.04: within tolerance
    ],
)
def test_choose_level(mpps, target, level):
    assert slides.choose_level(mpps, target) == level


def test_choose_level_never_upscales():
    with pytest.raises(ValueError, match="upscale"):
        slides.choose_level([0.5, 1.0], 0.25)
    with pytest.raises(ValueError):
        slides.choose_level([0.25, 1.0], 0.23)


def test_level_mpps(pyramid):
    mpps = slides.level_mpps(pyramid, 0.25)
    assert mpps[0] == 0.25 and mpps == sorted(mpps) and len(mpps) == pyramid.level_count


# --- read_patch --------------------------------------------------------------------------


@pytest.mark.parametrize("reader", ["openslide", "tiff"])
@pytest.mark.parametrize("mpp", [0.25, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("center", [(512.0, 384.0), (517.3, 391.8)])
def test_read_patch_matches_area_downscaled_level0(
    pyramid, pyramid_path, pattern, mpp, center, reader
):
    size = 64
    slide = pyramid if reader == "openslide" else TiffJpegSlide.open(pyramid_path)
    patch = slides.read_patch(slide, center, size, mpp, base_mpp=0.25)
    assert patch.shape == (size, size, 3) and patch.dtype == np.uint8
    mpps = slides.level_mpps(pyramid, 0.25)
    level, x0, y0, read = slides.patch_window(mpps, center, size, mpp)
    extent = round(read * mpps[level] / 0.25)  # the window in level-0 px
    assert abs(x0 + extent / 2 - center[0]) <= mpp / 0.25 / 2  # within half an output pixel
    crop = pattern[y0 : y0 + extent, x0 : x0 + extent]
    expected = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    diff = np.abs(patch.astype(int) - expected)
    assert diff.mean() < 2.5 and diff.max() <= 16
    shifted = pattern[y0 + 8 : y0 + 8 + extent, x0 + 8 : x0 + 8 + extent]
    wrong = cv2.resize(shifted, (size, size), interpolation=cv2.INTER_AREA)
    assert np.abs(patch.astype(int) - wrong).mean() > 2 * diff.mean()


def test_read_patch_outside_slide_is_white(pyramid):
    outside = slides.read_patch(pyramid, (-500.0, -500.0), 32, 1.0, base_mpp=0.25)
    assert (outside == 255).all()
    corner = slides.read_patch(pyramid, (0.0, 0.0), 32, 0.5, base_mpp=0.25)
    assert (corner[:16, :] == 255).all() and (corner[:, :16] == 255).all()
    assert (corner[17:, 17:] < 250).any()


def test_read_patch_refuses_to_upscale(pyramid):
    with pytest.raises(ValueError, match="upscale"):
        slides.read_patch(pyramid, (100.0, 100.0), 32, 0.1, base_mpp=0.25)


def test_read_patch_within_tolerance_reads_without_resampling():
    slide = openslide.OpenSlide(CMU)
    patch = slides.read_patch(slide, (1000.0, 1500.0), 224, 0.5, base_mpp=0.499)
    direct = np.asarray(slide.read_region((888, 1388), 0, (224, 224)))[..., :3]
    np.testing.assert_array_equal(patch, direct)


def test_composite_on_white():
    rgba = np.array([[[10, 20, 30, 255], [0, 0, 0, 0], [100, 100, 100, 128]]], np.uint8)
    out = slides.composite_on_white(rgba)
    assert out.tolist()[0][:2] == [[10, 20, 30], [255, 255, 255]]
    assert 170 <= out[0, 2, 0] <= 180


# --- handles -----------------------------------------------------------------------------


def test_slide_handles_lru_and_pickle(pyramid_path):
    handles = slides.SlideHandles(max_open=2, cache_bytes=1 << 20)
    paths = [str(CMU), str(SLIDES / "small.svs"), pyramid_path]
    first = handles.get(paths[0])
    assert handles.get(paths[0]) is first
    for p in paths[1:]:
        handles.get(p)
    assert len(handles) == 2 and handles.get(paths[2]).dimensions == (1024, 768)
    clone = pickle.loads(pickle.dumps(handles))
    assert len(clone) == 0 and clone.max_open == 2 and clone.cache_bytes == 1 << 20
    assert clone.get(paths[0]).dimensions == (2220, 2967)
    handles.discard(paths[2])
    assert len(handles) == 1
    handles.close()
    assert len(handles) == 0

"""Synthetic H&E slides: real OpenSlide reads, layout truth, texture character, robustness."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest

from pathfm.data import synthetic
from pathfm.data.synthetic import (
    TISSUE_CLASSES,
    Region,
    SlideAnnotation,
    generate_synthetic_slides,
    load_annotation,
    write_synthetic_slide,
)
from pathfm.errors import DataError

W, H = 2048, 1536  # width != height on purpose


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[int, SlideAnnotation]:
    """Two slides: downsample 2 at 0.25 um/px and downsample 4 at 0.5 um/px."""
    d = tmp_path_factory.mktemp("synthetic")
    return {
        2: write_synthetic_slide(d / "ds2.tiff", seed=11, width=W, height=H, mpp=0.25),
        4: write_synthetic_slide(d / "ds4.tiff", seed=12, width=W, height=H, mpp=0.5, downsample=4),
    }


def _read(slide: openslide.OpenSlide, cx: int, cy: int, size: int, level: int = 0) -> np.ndarray:
    """RGB (size, size, 3) float read centred on level-0 point (cx, cy)."""
    ds = slide.level_downsamples[level]
    x0, y0 = int(cx - size * ds / 2), int(cy - size * ds / 2)
    return np.asarray(slide.read_region((x0, y0), level, (size, size)).convert("RGB"), np.float64)


def _centre(ann: SlideAnnotation, label: str) -> tuple[int, int]:
    r = next(r for r in ann.regions if r.label == label)
    return (r.box[0] + r.box[2]) // 2, (r.box[1] + r.box[3]) // 2


def _gray(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114])


def _nucleus_area(rgb: np.ndarray, percentile: float = 50) -> float:
    """Percentile of the areas (px) of dark connected components, i.e. of nuclei."""
    dark = (_gray(rgb) < 110).astype(np.uint8)
    _, _, cc, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
    areas = cc[1:, cv2.CC_STAT_AREA]
    areas = areas[areas >= 10]
    return float(np.percentile(areas, percentile)) if len(areas) else 0.0


def _stats(rgb: np.ndarray) -> dict[str, float]:
    """Brightness, saturation, dark ("nuclear") fraction, bright fraction, median nucleus area."""
    gray = _gray(rgb)
    hsv = cv2.cvtColor(rgb.astype(np.uint8), cv2.COLOR_RGB2HSV)
    return {
        "gray": gray.mean(),
        "sat": hsv[..., 1].mean(),
        "dark": (gray < 110).mean(),
        "bright": (rgb.min(axis=-1) > 200).mean(),
        "nucleus_area": _nucleus_area(rgb),
        "r": rgb[..., 0].mean(),
        "g": rgb[..., 1].mean(),
        "b": rgb[..., 2].mean(),
    }


def _expected_sizes(ds: int) -> list[tuple[int, int]]:
    sizes = [(W, H)]
    while min(sizes[-1]) // ds >= 256:
        sizes.append((sizes[-1][0] // ds, sizes[-1][1] // ds))
    return sizes


@pytest.mark.parametrize("ds", [2, 4])
def test_openslide_reads_pyramid_with_mpp(slides: dict[int, SlideAnnotation], ds: int) -> None:
    ann = slides[ds]
    assert openslide.OpenSlide.detect_format(ann.path) == "generic-tiff"
    with openslide.OpenSlide(ann.path) as s:
        for key in ("openslide.mpp-x", "openslide.mpp-y"):
            assert float(s.properties[key]) == pytest.approx(ann.mpp, rel=1e-6)
        sizes = _expected_sizes(ds)
        assert s.level_count == len(sizes) == (3 if ds == 2 else 2)
        assert list(s.level_dimensions) == sizes
        assert list(s.level_downsamples) == [float(ds**i) for i in range(len(sizes))]
        assert not s.properties["tiff.ImageDescription"].startswith("Aperio")


def test_annotation_layout_and_sidecar(slides: dict[int, SlideAnnotation]) -> None:
    ann = slides[2]
    assert (ann.width, ann.height, ann.mpp) == (W, H, 0.25)
    assert {r.label for r in ann.regions} == set(TISSUE_CLASSES)
    for i, r in enumerate(ann.regions):
        x0, y0, x1, y1 = r.box
        assert 0 < x0 < x1 < W and 0 < y0 < y1 < H
        assert min(x1 - x0, y1 - y0) >= 0.3 * min(W, H)  # room for many 224 px patches
        assert ann.label_at((x0 + x1) / 2, (y0 + y1) / 2) == r.label
        assert ann.label_at(x0, y0) == r.label and ann.label_at(x1, y0) != r.label  # half-open
        for other in ann.regions[i + 1 :]:
            ox0, oy0, ox1, oy1 = other.box
            assert min(x1, ox1) < max(x0, ox0) or min(y1, oy1) < max(y0, oy0)  # gap between
    assert ann.label_at(2, 2) is None
    loaded = load_annotation(ann.path)
    assert loaded == ann
    assert SlideAnnotation.from_json(json.loads(json.dumps(ann.to_json()))) == ann
    sidecar = json.loads(Path(ann.path).with_suffix(".json").read_text())
    assert sidecar["path"] == Path(ann.path).name and sidecar["seed"] == 11


def test_label_at_matches_pixels(slides: dict[int, SlideAnnotation]) -> None:
    ann = slides[2]
    with openslide.OpenSlide(ann.path) as s:
        bg = _read(s, 16, 16, 24)
        assert bg.mean() > 235 and np.ptp(bg.mean(axis=(0, 1))) < 3
        for r in ann.regions:
            cx, cy = _centre(ann, r.label)
            assert _read(s, cx, cy, 64).mean() < 235, r.label  # tissue, not glass


def _morphology(rgb: np.ndarray) -> dict[str, float]:
    """Of the darkest quarter of a patch's pixels (nuclear stain) as connected blobs: their
    count, median area (px) and median elongation (long / short axis), and the coherence of the
    patch's structure tensor (0: no preferred orientation, 1: all edges aligned)."""
    od = -np.log10(np.clip(rgb, 1, 255) / 255).sum(-1)
    dark = (od > np.percentile(od, 75)).astype(np.uint8)
    _, labels, cc, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
    blobs = np.flatnonzero(cc[1:, cv2.CC_STAT_AREA] >= 6) + 1
    elongation = []
    for k in blobs:
        ys, xs = np.nonzero(labels == k)
        small, large = np.linalg.eigvalsh(np.cov(np.stack([xs, ys])))
        elongation.append(np.sqrt(large / max(small, 1e-3)))
    smooth = cv2.GaussianBlur(od.astype(np.float32), (0, 0), 2)
    gx, gy = cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1)
    jxx, jyy, jxy = (gx * gx).mean(), (gy * gy).mean(), (gx * gy).mean()
    return {
        "count": len(blobs),
        "area": float(np.median(cc[blobs, cv2.CC_STAT_AREA])),
        "elongation": float(np.median(elongation)),
        "coherence": float(np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (jxx + jyy)),
    }


@pytest.mark.parametrize("ds", [2, 4])
def test_classes_share_colour_and_differ_in_morphology(slides, ds: int) -> None:
    """Within a slide every class has the same colour statistics (so colour cannot tell them
    apart) and H&E character; they differ in nucleus size, shape, density and arrangement."""
    ann = slides[ds]
    size = 384 if ds == 2 else 192  # the same 96 um at 0.25 and 0.5 um/px
    with openslide.OpenSlide(ann.path) as s:
        rgbs = {c: _read(s, *_centre(ann, c), size) for c in TISSUE_CLASSES}
    stats = {c: _stats(rgb) for c, rgb in rgbs.items()}
    for key, spread in (("r", 8), ("g", 8), ("b", 8), ("sat", 8), ("dark", 0.06)):
        values = [stats[c][key] for c in TISSUE_CLASSES]
        assert max(values) - min(values) < spread, (key, values)
    for c in TISSUE_CLASSES:  # both stains absorb green most: pink-purple, never green or grey
        assert min(stats[c]["r"], stats[c]["b"]) > stats[c]["g"] + 15, c
    m = {c: _morphology(rgb) for c, rgb in rgbs.items()}
    others = [c for c in TISSUE_CLASSES if c != "stroma"]
    assert m["stroma"]["coherence"] > 0.5 and m["stroma"]["elongation"] > 3  # aligned spindles
    assert all(m[c]["coherence"] < 0.15 and m[c]["elongation"] < 2.2 for c in others), m
    assert all(m["necrosis"]["count"] > 2.5 * m[c]["count"] for c in others[:-1]), m  # debris
    assert m["lymphocytes"]["count"] > 1.4 * m["tumor"]["count"], m  # small, densely packed


def test_slides_differ_in_stain_scanner_and_focus(slides) -> None:
    """Each slide draws its own style (stain vectors and amounts, thickness, colour cast, blur,
    JPEG quality), recorded in the sidecar; the same class looks different across slides."""
    styles = [
        json.loads(Path(a.path).with_suffix(".json").read_text())["style"] for a in slides.values()
    ]
    assert styles[0] != styles[1]
    for style in styles:
        assert 0.7 <= style["hem_scale"] <= 1.3 and 60 <= style["quality"] <= 95
        assert np.linalg.norm(style["hematoxylin"]) == pytest.approx(1, abs=1e-6)
    means = []
    for ann in slides.values():
        with openslide.OpenSlide(ann.path) as s:
            level = s.get_best_level_for_downsample(0.5 / ann.mpp)  # 0.5 um/px on both
            means.append(_read(s, *_centre(ann, "stroma"), 128, level).mean((0, 1)))
    assert np.abs(means[0] - means[1]).max() > 5, means


def test_nucleus_size_is_physical(slides: dict[int, SlideAnnotation]) -> None:
    """Same tissue at 0.5 um/px level 0 has ~4x smaller nuclei (in px^2) than at 0.25 um/px."""
    areas = {}
    for ds, ann in slides.items():
        with openslide.OpenSlide(ann.path) as s:
            rgb = _read(s, *_centre(ann, "lymphocytes"), 384)
            areas[ds] = _nucleus_area(rgb, percentile=30)  # robust to touching nuclei
    assert 2.5 < areas[2] / areas[4] < 6


def test_deterministic_per_seed_and_different_between_seeds(tmp_path: Path) -> None:
    kw = {"width": 768, "height": 512, "mpp": 0.5}
    a = write_synthetic_slide(tmp_path / "a.tiff", seed=3, **kw)
    b = write_synthetic_slide(tmp_path / "b.tiff", seed=3, **kw)
    c = write_synthetic_slide(tmp_path / "c.tiff", seed=4, **kw)
    assert a.regions == b.regions
    assert Path(a.path).read_bytes() == Path(b.path).read_bytes()
    with openslide.OpenSlide(a.path) as sa, openslide.OpenSlide(c.path) as sc:
        pa, pc = (np.asarray(s.read_region((0, 0), 0, (768, 512))) for s in (sa, sc))
    assert a.regions != c.regions and not np.array_equal(pa, pc)


def test_class_subset_shows_exactly_those_classes(tmp_path: Path) -> None:
    kw = {"width": 768, "height": 512, "mpp": 0.5}
    default = write_synthetic_slide(tmp_path / "a.tiff", seed=5, **kw)
    explicit = write_synthetic_slide(tmp_path / "b.tiff", seed=5, classes=TISSUE_CLASSES, **kw)
    assert explicit.regions == default.regions  # the default draws are unchanged
    no_tumor = tuple(c for c in TISSUE_CLASSES if c != "tumor")
    for seed in range(4):
        ann = write_synthetic_slide(tmp_path / f"n{seed}.tiff", seed=seed, classes=no_tumor, **kw)
        assert {r.label for r in ann.regions} == set(no_tumor)
    two = write_synthetic_slide(tmp_path / "two.tiff", seed=0, classes=("glands", "tumor"), **kw)
    assert {r.label for r in two.regions} == {"glands", "tumor"} and len(two.regions) >= 4
    for bad in (("tumor",), ("tumor", "tumor"), ("tumor", "bone")):
        with pytest.raises(DataError, match="classes"):
            write_synthetic_slide(tmp_path / "bad.tiff", seed=0, classes=bad, **kw)


def test_generate_is_idempotent_and_atomic(tmp_path: Path) -> None:
    out = tmp_path / "new" / "dir"
    kw = {"n_slides": 3, "seed": 1, "width": 640, "height": 512, "mpp": 0.5}
    paths = generate_synthetic_slides(out, **kw)
    assert [p.name for p in paths] == [f"synthetic_{i:03d}.tiff" for i in range(3)]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([p.name for p in paths] + [p.stem + ".json" for p in paths])  # no temps
    mtimes = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert generate_synthetic_slides(out, **kw) == paths
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    anns = [load_annotation(p) for p in paths]
    assert len({a.regions for a in anns}) == 3  # every slide differs
    paths[1].with_suffix(".json").unlink()  # incomplete slide is regenerated, others untouched
    generate_synthetic_slides(out, **kw)
    assert load_annotation(paths[1]) == anns[1]
    assert paths[0].stat().st_mtime_ns == mtimes[paths[0]]


def test_user_errors_raise_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"\.tif"):
        write_synthetic_slide(tmp_path / "x.png", seed=0)
    with pytest.raises(DataError, match="width and height"):
        write_synthetic_slide(tmp_path / "x.tiff", seed=0, width=100)
    with pytest.raises(DataError, match="tile"):
        write_synthetic_slide(tmp_path / "x.tiff", seed=0, tile=100)
    with pytest.raises(DataError, match="mpp"):
        write_synthetic_slide(tmp_path / "x.tiff", seed=0, mpp=0.0)
    with pytest.raises(DataError, match="seed"):
        generate_synthetic_slides(tmp_path, seed=-1)
    with pytest.raises(DataError, match="annotation"):
        load_annotation(tmp_path / "missing.tiff")
    (tmp_path / "bad.json").write_text(json.dumps({"path": "bad.tiff", "regions": [{}]}))
    with pytest.raises(DataError, match="malformed"):
        load_annotation(tmp_path / "bad.tiff")
    assert list(tmp_path.iterdir()) == [tmp_path / "bad.json"]  # nothing half-written


def test_region_contains_is_half_open() -> None:
    r = Region("tumor", (10, 20, 30, 40))
    assert r.contains(10, 20) and r.contains(29.9, 39.9)
    assert not r.contains(30, 25) and not r.contains(15, 40) and not r.contains(9.9, 25)


def test_failed_write_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(path: Path, *args: object) -> None:
        path.write_bytes(b"II*\0 partial")
        raise OSError("disk full")

    monkeypatch.setattr(synthetic, "_write_pyramid", broken)
    with pytest.raises(DataError, match="disk full"):
        generate_synthetic_slides(tmp_path, n_slides=1, width=512, height=512)
    assert list(tmp_path.iterdir()) == []

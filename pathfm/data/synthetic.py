"""Embedded default data set: synthetic H&E whole-slide images as pyramidal OpenSlide TIFFs.

Each slide is white glass with rectangular tissue regions, one tissue class per region (every class
at least once, or every class of a chosen subset: `classes=`), rendered in stain space
(hematoxylin / eosin optical densities, Beer-Lambert) with physically sized structures (microns
converted with the slide's mpp). A sidecar JSON ``<stem>.json`` next to the TIFF holds the
:class:`SlideAnnotation` (region boxes and labels) and the slide's style.

The classes differ in morphology only (version 2 of the generator): stroma has wavy aligned
fibres with long spindle nuclei, tumour large pleomorphic vesicular nuclei with nucleoli,
lymphocytes small round densely packed nuclei, glands rings of columnar nuclei around lumens,
necrosis many small karyorrhectic fragments. Every class is then given the same distribution of
stain concentrations (rank matching to shared quantiles, `_stain`), so colour statistics carry no
class information. What varies is the slide (`SlideStyle`), as labs and scanners vary it: stain
vectors and amounts (stain augmentation in optical density space, Tellez et al. 2019), section
thickness, a scanner colour cast, optical blur and JPEG quality. Version 1 (until pathfm 2026-12)
gave each class its own colours, so any features, even random ones, separated them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tifffile

from pathfm.atomic import atomic_path
from pathfm.errors import DataError

TISSUE_CLASSES: tuple[str, ...] = ("stroma", "tumor", "lymphocytes", "glands", "necrosis")

_GENERATOR = "pathfm.data.synthetic/2"  # /2: morphology-only classes, per-slide styles
_DESCRIPTION = "pathfm synthetic slide"
_MIN_SIDE = 512
# Unit optical-density vectors (R, G, B) of the stains; grey models unstained debris / smudge.
_HEMATOXYLIN = np.array([0.650, 0.704, 0.286], np.float32)
_EOSIN = np.array([0.216, 0.801, 0.558], np.float32) / np.float32(1.1023)
_GREY = np.full(3, 1.0 / math.sqrt(3.0), np.float32)
_GLASS_OD = np.float32(math.log10(255.0 / 242.0))  # background ~ (242, 242, 242)

_Stains = tuple[np.ndarray, np.ndarray, np.ndarray]  # (H, E, grey) concentrations, each (h, w) f32
_Ellipses = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # centres, semi-axes, deg, value


@dataclasses.dataclass(frozen=True)
class Region:
    """One tissue class in a level-0 box ``(x0, y0, x1, y1)``, half-open."""

    label: str
    box: tuple[int, int, int, int]

    def contains(self, x: float, y: float) -> bool:
        """Whether the level-0 point ``(x, y)`` lies in the box."""
        x0, y0, x1, y1 = self.box
        return x0 <= x < x1 and y0 <= y < y1


@dataclasses.dataclass(frozen=True)
class SlideAnnotation:
    """Ground truth of one synthetic slide: level-0 size, mpp and labelled regions."""

    path: str
    width: int
    height: int
    mpp: float
    regions: tuple[Region, ...]

    def label_at(self, x: float, y: float) -> str | None:
        """Tissue class at a level-0 point; None means background."""
        return next((r.label for r in self.regions if r.contains(x, y)), None)

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable dict (inverse of :meth:`from_json`)."""
        regions = [{"label": r.label, "box": list(r.box)} for r in self.regions]
        return {**dataclasses.asdict(self), "regions": regions}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SlideAnnotation:
        """Parse a dict written by :meth:`to_json`; raises DataError when malformed."""
        try:
            regions = tuple(_region_from_json(r) for r in d["regions"])
            return cls(str(d["path"]), int(d["width"]), int(d["height"]), float(d["mpp"]), regions)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"malformed synthetic slide annotation ({e!r}): {d!r:.200}") from e


def _region_from_json(r: dict[str, Any]) -> Region:
    """Parse and validate one region dict."""
    box = tuple(int(v) for v in r["box"])
    if r["label"] not in TISSUE_CLASSES or len(box) != 4 or box[0] >= box[2] or box[1] >= box[3]:
        raise ValueError(f"bad region {r!r}")
    return Region(str(r["label"]), box)  # type: ignore[arg-type]


def has_annotation(slide_path: str | os.PathLike[str]) -> bool:
    """Whether the slide has a synthetic slide's sidecar ``<stem>.json`` (its tissue regions)."""
    return Path(slide_path).with_suffix(".json").is_file()


def load_annotation(slide_path: str | os.PathLike[str]) -> SlideAnnotation:
    """Read the sidecar ``<stem>.json`` of a synthetic slide (``path`` is set to ``slide_path``)."""
    sidecar = Path(slide_path).with_suffix(".json")
    try:
        d = json.loads(sidecar.read_text())
    except (OSError, ValueError) as e:
        raise DataError(
            f"cannot read synthetic slide annotation {sidecar} ({e}); "
            "regenerate it with pathfm.data.synthetic.generate_synthetic_slides"
        ) from e
    return dataclasses.replace(SlideAnnotation.from_json(d), path=str(slide_path))


# ----------------------------------------------------------------------------- random fields


def _smooth_noise(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Smooth ~N(0, 1) field of shape (h, w) with feature size ``scale`` px."""
    scale = max(scale, 1.0)
    gh, gw = int(h / scale) + 3, int(w / scale) + 3
    low = rng.standard_normal((gh, gw), dtype=np.float32)
    up = cv2.resize(low, (int(gw * scale), int(gh * scale)), interpolation=cv2.INTER_CUBIC)
    return up[:h, :w] / np.float32(0.75)


def _hex_points(
    rng: np.random.Generator, h: int, w: int, spacing: float, jitter: float, keep: float
) -> np.ndarray:
    """Jittered hexagonal grid covering (h, w) plus a margin: (n, 2) float x, y."""
    ys = np.arange(-spacing, h + spacing, spacing * math.sqrt(3) / 2)
    xs = np.arange(-spacing, w + spacing, spacing)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    xx = xx + (np.arange(len(ys)) % 2)[:, None] * spacing / 2
    pts = np.stack([xx.ravel(), yy.ravel()], axis=1)
    pts += rng.normal(0.0, jitter * spacing, pts.shape)
    return pts[rng.random(len(pts)) < keep]


def _ellipses(shape: tuple[int, int], e: _Ellipses, thickness: int = -1) -> np.ndarray:
    """(h, w) map of ellipses: centres (n, 2), semi-axes (n, 2) px, angles (n,), values (n,)."""
    img = np.zeros(shape, np.float32)
    f = 16  # 4 bits of sub-pixel precision
    c = np.round(e[0] * f).astype(int).tolist()
    a = np.maximum(np.round(e[1] * f), f // 2).astype(int).tolist()
    for ci, ai, ang, v in zip(c, a, e[2].tolist(), e[3].tolist(), strict=True):
        cv2.ellipse(img, ci, ai, ang, 0, 360, float(v), thickness, cv2.LINE_8, 4)
    return img


def _grain(rng: np.random.Generator, h: int, w: int, s: float, amount: float) -> np.ndarray:
    """Chromatin grain multiplier (h, w): 1 + amount * ~1 um noise."""
    return 1.0 + amount * _smooth_noise(rng, h, w, 1.0 * s)


def _warp(rng: np.random.Generator, img: np.ndarray, amplitude: float, scale: float) -> np.ndarray:
    """Displace ``img`` (h, w[, c]) by a smooth random field (amplitude, scale in px)."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    mx = xx + amplitude * _smooth_noise(rng, h, w, scale)
    my = yy + amplitude * _smooth_noise(rng, h, w, scale)
    return cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _voronoi(rng: np.random.Generator, h: int, w: int, spacing: float) -> list[np.ndarray]:
    """Voronoi cells (polygons (k, 2) float x, y) of a jittered hex grid covering (h, w)."""
    pts = _hex_points(rng, h, w, spacing, 0.3, 1.0)
    pad = int(3 * spacing)
    pts = np.clip(pts, -2 * spacing, np.array([w, h]) + 2 * spacing)
    subdiv = cv2.Subdiv2D((-pad, -pad, w + 2 * pad, h + 2 * pad))
    subdiv.insert([tuple(p) for p in pts.tolist()])
    return subdiv.getVoronoiFacetList([])[0]


def _lines(shape: tuple[int, int], cells: list[np.ndarray], width: float) -> np.ndarray:
    """(h, w) map, 1 on the borders of ``cells`` drawn ``width`` px wide, else 0."""
    img = np.zeros(shape, np.float32)
    polys = [np.round(c * 16).astype(np.int32) for c in cells]
    cv2.polylines(img, polys, True, 1.0, max(1, round(width)), cv2.LINE_8, 4)
    return img


# ----------------------------------------------------------------------------- tissue morphology
# Each renderer: (rng, h, w, s = px per micron) -> (nuclei, matrix) maps (h, w): where nuclear
# chromatin is (~0-1) and the texture of the eosinophilic matrix between the nuclei. Classes differ
# only in the geometry of these maps (nucleus size, shape, density and arrangement; fibre
# texture); `_stain` then gives every class the same distribution of stain concentrations.


def _nuclei(
    rng: np.random.Generator,
    h: int,
    w: int,
    s: float,
    spacing: float,
    keep: float,
    radius: tuple[float, float],
    elongation: tuple[float, float],
    angle: float | None = None,
) -> _Ellipses:
    """Nuclei on a jittered hex grid (spacing um, fraction kept), radius in um, long/short axis
    ratio, orientation `angle` degrees (+- 10) or random."""
    pts = _hex_points(rng, h, w, spacing * s, 0.3, keep)
    n = len(pts)
    r = rng.uniform(*radius, n) * s
    axes = np.stack([r, r / rng.uniform(*elongation, n)], 1)
    angles = rng.uniform(0, 180, n) if angle is None else angle + rng.normal(0, 10, n)
    return pts, axes, angles, np.ones(n)


def _stroma(rng: np.random.Generator, h: int, w: int, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Wavy collagen fibres (~7 um period) with long spindle nuclei (8.5 x 1.7 um) along them."""
    theta = rng.uniform(0, math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = (xx * math.cos(theta) + yy * math.sin(theta)) * np.float32(2 * math.pi / (7.0 * s))
    phase += 3.0 * _smooth_noise(rng, h, w, 50 * s)
    fibres = np.sin(phase) + 0.3 * _smooth_noise(rng, h, w, 4 * s)
    along = math.degrees(theta) + 90
    nuclei = _ellipses((h, w), _nuclei(rng, h, w, s, 12.0, 0.8, (7.0, 10.0), (4.0, 6.0), along))
    return nuclei, fibres


def _tumor(rng: np.random.Generator, h: int, w: int, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Large pleomorphic (4.5-7 um) vesicular nuclei: irregular outlines, pale centres, a
    nucleolus each."""
    e = _nuclei(rng, h, w, s, 15.0, 0.9, (4.5, 7.0), (1.0, 1.6))
    nuclei = _warp(rng, _ellipses((h, w), e), 0.8 * s, 5 * s)
    nuclei -= 0.3 * _ellipses((h, w), (e[0], e[1] * 0.65, e[2], e[3]))
    n = len(e[0])
    dots = (e[0] + rng.normal(0, 1.0, (n, 2)) * s, np.full((n, 2), 1.0 * s), np.zeros(n), e[3])
    return np.maximum(nuclei, _ellipses((h, w), dots)), _smooth_noise(rng, h, w, 6 * s)


def _lymphocytes(rng: np.random.Generator, h: int, w: int, s: float) -> tuple[np.ndarray, ...]:
    """Densely packed small round nuclei (2.6-3.2 um radius)."""
    e = _nuclei(rng, h, w, s, 8.5, 0.85, (2.6, 3.2), (1.0, 1.15))
    return _ellipses((h, w), e), _smooth_noise(rng, h, w, 6 * s)


def _glands(rng: np.random.Generator, h: int, w: int, s: float) -> tuple[np.ndarray, ...]:
    """Glands: rings (11-15 um radius) of columnar nuclei around a lumen, ~38 um apart."""
    centres = _hex_points(rng, h, w, 38 * s, 0.25, 0.9)
    parts = []
    for cx, cy in centres.tolist():
        radius = rng.uniform(11, 15) * s
        k = int(2 * math.pi * radius / (4.2 * s))
        t = np.linspace(0, 2 * math.pi, k, endpoint=False) + rng.uniform(0, 2 * math.pi)
        ring = np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], 1)
        parts.append((ring, np.tile([3.4 * s, 1.7 * s], (k, 1)), np.degrees(t)))
    pts, axes, angles = (np.concatenate(x) for x in zip(*parts, strict=True))
    nuclei = _ellipses((h, w), (pts, axes, angles, np.ones(len(pts))))
    return _warp(rng, nuclei, 2 * s, 20 * s), _smooth_noise(rng, h, w, 6 * s)


def _necrosis(rng: np.random.Generator, h: int, w: int, s: float) -> tuple[np.ndarray, ...]:
    """Karyorrhectic debris: many small irregular fragments (0.8-1.8 um)."""
    e = _nuclei(rng, h, w, s, 4.2, 0.9, (0.8, 1.8), (1.0, 2.0))
    return _ellipses((h, w), e), _smooth_noise(rng, h, w, 6 * s)


_RENDERERS = {f.__name__[1:]: f for f in (_stroma, _tumor, _lymphocytes, _glands, _necrosis)}

# Stain concentrations every class shares (quantile functions on 4096 levels): 30% of the tissue
# is nuclear (hematoxylin OD 0.55-0.95, eosin halved), the rest matrix (hematoxylin 0.03-0.12);
# eosin 0.12-0.37 before that rule. So colour statistics carry no class information.
_LEVELS = (np.arange(4096, dtype=np.float32) + 0.5) / 4096
_NUCLEAR_FRACTION = 0.30
_HEM_LEVELS = np.where(
    _LEVELS > 1 - _NUCLEAR_FRACTION,
    0.55 + 0.40 * (_LEVELS - (1 - _NUCLEAR_FRACTION)) / _NUCLEAR_FRACTION,
    0.03 + 0.09 * _LEVELS / (1 - _NUCLEAR_FRACTION),
).astype(np.float32)
_EOS_LEVELS = (0.12 + 0.25 * _LEVELS).astype(np.float32)


def _match(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """`values` (h, w) with their ranks kept and their distribution replaced by `levels`'."""
    flat = values.ravel()
    out = np.empty_like(flat)
    out[np.argsort(flat, kind="stable")] = levels[(np.arange(flat.size) * len(levels)) // flat.size]
    return out.reshape(values.shape)


def _stain(rng: np.random.Generator, nuclei: np.ndarray, matrix: np.ndarray, s: float) -> _Stains:
    """(H, E, grey) concentrations of a region: chromatin grain and matrix noise, then both
    stains rank-matched to the shared levels (morphology kept, colour statistics equalised)."""
    h, w = nuclei.shape
    chromatin = nuclei * _grain(rng, h, w, s, 0.3) + 0.05 * _smooth_noise(rng, h, w, 3 * s)
    hem = _match(chromatin.astype(np.float32), _HEM_LEVELS)
    eos = _match((matrix + 0.2 * _smooth_noise(rng, h, w, 2 * s)).astype(np.float32), _EOS_LEVELS)
    eos = np.where(hem > 0.5, 0.5 * eos, eos)
    return hem, eos, np.zeros((h, w), np.float32)


@dataclasses.dataclass(frozen=True)
class SlideStyle:
    """One slide's nuisances, as lab, stain batch and scanner vary them: stain OD vectors
    perturbed (unit (R, G, B) each), per-stain concentration factors, section thickness (scales
    both), a scanner colour cast (OD per channel), optical blur (um) and JPEG quality."""

    hematoxylin: np.ndarray
    eosin: np.ndarray
    hem_scale: float
    eos_scale: float
    thickness: float
    cast: np.ndarray
    blur_um: float
    quality: int


def slide_style(rng: np.random.Generator) -> SlideStyle:
    """A random `SlideStyle` (stain vectors +- 0.06 per OD component, concentrations x0.7-1.3,
    thickness x0.8-1.25, cast N(0, 0.02) OD, blur 0.05-0.25 um, JPEG quality 60-95)."""

    def vector(v: np.ndarray) -> np.ndarray:
        v = np.abs(v + rng.normal(0, 0.06, 3))
        return (v / np.linalg.norm(v)).astype(np.float32)

    return SlideStyle(
        vector(_HEMATOXYLIN),
        vector(_EOSIN / np.linalg.norm(_EOSIN)),
        float(rng.uniform(0.7, 1.3)),
        float(rng.uniform(0.7, 1.3)),
        float(rng.uniform(0.8, 1.25)),
        rng.normal(0, 0.02, 3).astype(np.float32),
        float(rng.uniform(0.05, 0.25)),
        int(rng.integers(60, 96)),
    )


def _stains_to_rgb(stains: _Stains, mask: np.ndarray, style: SlideStyle) -> np.ndarray:
    """Beer-Lambert: stain concentrations (h, w) x3 times tissue mask -> uint8 RGB (h, w, 3)."""
    hem, eos, grey = stains
    hem, eos = hem * (style.hem_scale * style.thickness), eos * (style.eos_scale * style.thickness)
    out = np.empty((*hem.shape, 3), np.uint8)
    for c in range(3):
        tissue = hem * style.hematoxylin[c] + eos * style.eosin[c] + grey * _GREY[c]
        od = tissue * mask + _GLASS_OD + style.cast[c]
        out[..., c] = np.clip(255.0 * np.exp(np.float32(-math.log(10)) * od), 0, 255)
    return out


def _edge_mask(rng: np.random.Generator, h: int, w: int, s: float) -> np.ndarray:
    """Tissue mask (h, w) in [0, 1]: the box minus an irregular band (< 2% of its side)."""
    band = 0.02 * min(h, w)
    dy = np.minimum(np.arange(h), h - 1 - np.arange(h)).astype(np.float32)
    dx = np.minimum(np.arange(w), w - 1 - np.arange(w)).astype(np.float32)
    dist = np.minimum(dy[:, None], dx[None, :])
    cut = band * (0.5 + 0.5 * np.tanh(_smooth_noise(rng, h, w, 40 * s)))
    return np.clip((dist - cut) / 2.0, 0.0, 1.0)


# ----------------------------------------------------------------------------- layout and slide


def _split(rng: np.random.Generator, start: float, length: float, n: int, gap: float) -> list:
    """Split [start, start + length) into n random near-equal (lo, hi) int segments with gaps."""
    sizes = rng.uniform(0.92, 1.08, n)
    sizes *= (length - gap * (n - 1)) / sizes.sum()
    lo = start + np.concatenate([[0.0], np.cumsum(sizes)[:-1]]) + gap * np.arange(n)
    return [(round(a), round(a + b)) for a, b in zip(lo.tolist(), sizes.tolist(), strict=True)]


def _layout(
    rng: np.random.Generator, width: int, height: int, classes: tuple[str, ...] = TISSUE_CLASSES
) -> tuple[Region, ...]:
    """Two bands of 2-3 boxes each; every one of `classes` at least once, in random order (the
    draws for the default all-class case are those of earlier versions: same seed, same slide)."""
    mx, my = rng.uniform(0.03, 0.045) * width, rng.uniform(0.03, 0.045) * height
    gap = rng.uniform(0.02, 0.03) * min(width, height)
    counts = [(2, 3), (3, 2), (3, 3)][rng.integers(3)]
    by_rows = bool(rng.random() < 0.5) if width == height else width > height  # squarer boxes
    major = (my, height - 2 * my) if by_rows else (mx, width - 2 * mx)
    minor = (mx, width - 2 * mx) if by_rows else (my, height - 2 * my)
    cells = []
    for band, n in zip(_split(rng, *major, 2, gap), counts, strict=True):
        for seg in _split(rng, *minor, n, gap):
            cells.append((*seg, *band) if by_rows else (*band, *seg))  # (x0, x1, y0, y1)
    extra = rng.choice(len(classes), len(cells) - len(classes)).tolist()
    labels = [classes[i] for i in rng.permutation(len(classes)).tolist() + extra]
    regions = []
    for label, (x0, x1, y0, y1) in zip(labels, cells, strict=True):
        ix, iy = rng.uniform(0, 0.015, 2) * (x1 - x0), rng.uniform(0, 0.015, 2) * (y1 - y0)
        box = (round(x0 + ix[0]), round(y0 + iy[0]), round(x1 - ix[1]), round(y1 - iy[1]))
        regions.append(Region(label, box))
    return tuple(regions)


def _add_noise(rng: np.random.Generator, img: np.ndarray, amplitude: int = 3) -> None:
    """Add uniform per-pixel noise in [-amplitude, amplitude] in place, in row chunks."""
    for y in range(0, img.shape[0], 1024):
        chunk = img[y : y + 1024]
        noise = rng.integers(-amplitude, amplitude + 1, chunk.shape, dtype=np.int8)
        chunk[:] = np.clip(chunk.astype(np.int16) + noise, 0, 255)


def _render_slide(
    seed: int, width: int, height: int, mpp: float, classes: tuple[str, ...] = TISSUE_CLASSES
) -> tuple[np.ndarray, tuple[Region, ...], SlideStyle]:
    """Level-0 RGB (height, width, 3) uint8, its regions and its style, deterministic for the
    arguments."""
    rng = np.random.default_rng(seed)
    regions = _layout(rng, width, height, classes)
    style = slide_style(rng)
    s = 1.0 / mpp
    img = np.full((height, width, 3), 242, np.uint8)
    for r in regions:
        x0, y0, x1, y1 = r.box
        nuclei, matrix = _RENDERERS[r.label](rng, y1 - y0, x1 - x0, s)
        stains = _stain(rng, nuclei, matrix, s)
        mask = _edge_mask(rng, y1 - y0, x1 - x0, s)
        img[y0:y1, x0:x1] = _stains_to_rgb(stains, mask, style)
    sigma = style.blur_um * s  # optical blur / focus of this slide's scan
    if sigma >= 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    _add_noise(rng, img)
    return img, regions, style


def _level_sizes(width: int, height: int, downsample: int, min_level_size: int) -> list:
    """(w, h) per pyramid level, each ``downsample`` x smaller, short side >= min_level_size."""
    sizes = [(width, height)]
    while min(sizes[-1]) // downsample >= min_level_size:
        sizes.append((sizes[-1][0] // downsample, sizes[-1][1] // downsample))
    return sizes


def _write_pyramid(path: Path, img: np.ndarray, mpp: float, sizes: list, tile: int, q: int) -> None:
    """Write each level (w, h) in ``sizes`` as a top-level tiled JPEG page, resolution in px/cm."""
    level = img
    with tifffile.TiffWriter(path, bigtiff=img.nbytes > 2**31) as tif:
        for i, size in enumerate(sizes):
            if i:
                level = cv2.resize(level, size, interpolation=cv2.INTER_AREA)
            res = 1e4 / (mpp * img.shape[1] / size[0])
            tif.write(
                level,
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": q},
                tile=(tile, tile),
                subfiletype=int(i > 0),
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                description=_DESCRIPTION,
                metadata=None,
            )


def _atomic_write(path: Path, write: Any) -> None:
    """``write(tmp)`` on a temporary file beside ``path``, then renamed into place; an OS error
    names the file (DataError)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=path.suffix) as tmp:
            write(tmp)
    except OSError as e:
        raise DataError(f"cannot write {path}: {e}") from e


def _check_args(w: int, h: int, mpp: float, tile: int, ds: int, min_size: int, q: int) -> None:
    """Raise DataError for unusable slide parameters."""
    problems = [
        (min(w, h) < _MIN_SIDE, f"width and height must be >= {_MIN_SIDE}"),
        (not (math.isfinite(mpp) and 0.05 <= mpp <= 20), "mpp must be in [0.05, 20]"),
        (tile <= 0 or tile % 16, "tile must be a positive multiple of 16"),
        (ds < 2, "downsample must be >= 2"),
        (min_size < 1, "min_level_size must be >= 1"),
        (not 1 <= q <= 100, "quality must be in [1, 100]"),
    ]
    bad = [msg for cond, msg in problems if cond]
    if bad:
        raise DataError(f"invalid synthetic slide parameters: {'; '.join(bad)}")


def write_synthetic_slide(
    path: str | os.PathLike[str],
    *,
    seed: int,
    width: int = 4096,
    height: int = 4096,
    mpp: float = 0.25,
    tile: int = 256,
    downsample: int = 2,
    min_level_size: int = 256,
    quality: int | None = None,
    classes: Sequence[str] = TISSUE_CLASSES,
) -> SlideAnnotation:
    """Write one synthetic H&E slide (pyramidal JPEG TIFF) plus sidecar JSON; return its truth.

    `classes`: the tissue classes it shows (2-5 distinct names of TISSUE_CLASSES, each at least
    once), e.g. all but "tumor" for a tumour-free slide of a slide-level task. `quality`: JPEG
    quality of the tiles; None draws it with the slide's style (60-95, as scanners differ)."""
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise DataError(f"synthetic slide path must end in .tif or .tiff: {path}")
    if seed < 0:
        raise DataError(f"seed must be >= 0, got {seed}")
    _check_args(width, height, mpp, tile, downsample, min_level_size, quality or 90)
    classes = _check_classes(classes)
    img, regions, style = _render_slide(seed, width, height, mpp, classes)
    quality = style.quality if quality is None else quality
    ann = SlideAnnotation(str(path), width, height, float(mpp), regions)
    extra = {
        "path": path.name,
        "seed": seed,
        "downsample": downsample,
        "classes": list(classes),
        "generator": _GENERATOR,
        "style": {k: np.asarray(v).tolist() for k, v in dataclasses.asdict(style).items()},
        "quality": quality,
    }
    sizes = _level_sizes(width, height, downsample, min_level_size)
    _atomic_write(path, lambda p: _write_pyramid(p, img, mpp, sizes, tile, quality))
    sidecar = {**ann.to_json(), **extra}
    _atomic_write(path.with_suffix(".json"), lambda p: p.write_text(json.dumps(sidecar, indent=1)))
    return ann


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    """`classes` as a tuple; DataError unless 2-5 distinct names of TISSUE_CLASSES (a slide lays
    out at least 4 boxes, so one class alone would not fill it with distinct tissue)."""
    classes = tuple(classes)
    unknown = [c for c in classes if c not in TISSUE_CLASSES]
    if unknown or len(set(classes)) != len(classes) or not 2 <= len(classes) <= 5:
        raise DataError(
            f"classes must be 2-5 distinct names of {TISSUE_CLASSES}; got {list(classes)}"
        )
    return classes


def _is_complete(path: Path, expected: dict[str, Any]) -> bool:
    """Whether ``path`` and its sidecar exist and the sidecar matches the expected parameters."""
    try:
        d = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return False
    return path.is_file() and all(d.get(k) == v for k, v in expected.items())


def generate_synthetic_slides(
    directory: str | os.PathLike[str],
    *,
    n_slides: int = 4,
    seed: int = 0,
    width: int = 4096,
    height: int = 4096,
    mpp: float = 0.25,
    downsample: int = 2,
    classes: Sequence[str] = TISSUE_CLASSES,
    prefix: str = "synthetic",
) -> list[Path]:
    """Write ``<prefix>_{i:03d}.tiff`` (+ .json) for i < n_slides, slide i from seed
    `seed * 1000 + i`, showing `classes`; complete ones (same parameters) are kept as they are."""
    if n_slides < 0 or seed < 0:
        raise DataError(f"n_slides and seed must be >= 0, got {n_slides} and {seed}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_slides):
        path = directory / f"{prefix}_{i:03d}.tiff"
        shape = {"width": width, "height": height, "mpp": float(mpp), "downsample": downsample}
        expected = {"seed": seed * 1000 + i, "generator": _GENERATOR, **shape}
        if not _is_complete(path, {**expected, "classes": list(classes)}):
            write_synthetic_slide(path, seed=seed * 1000 + i, classes=classes, **shape)
        paths.append(path)
    return paths

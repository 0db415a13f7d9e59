"""Tissue masks from slide thumbnails (HSV saturation threshold, as in eva and CLAM)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
import openslide

from pathfm.data import slides as slides_lib
from pathfm.errors import ConfigError

WHITE_LEVEL = 220  # a pixel with every channel >= this is background (glass)
BLACK_LEVEL = 30  # a pixel with every channel <= this is background (black borders, pen, holes)
OTSU_FLOOR = 8  # Otsu's threshold is never below CLAM's fixed saturation threshold
_STRIP_PIXELS = 1 << 24  # read thumbnails in strips of at most this many level pixels


@dataclasses.dataclass(frozen=True)
class TissueConfig:
    """Tissue detection on a thumbnail at `mask_mpp` um/px; patches need `min_tissue_fraction`.

    A thumbnail pixel is tissue when its (median-blurred) HSV saturation exceeds the threshold and
    it is neither near-white (glass) nor near-black; small holes are then closed. Defaults:
    - mask_mpp 8.0: thumbnail resolution in um/px (~1.25x magnification).
    - saturation_threshold 20 (of 255) with min_tissue_fraction 0.35: eva's tissue rule.
    - use_otsu False: True thresholds at Otsu's level of the blurred saturation (CLAM's
      use_otsu), floored at OTSU_FLOOR = 8; CLAM's fixed-threshold preset is
      saturation_threshold=8 with median_blur 7 and a close.
    - median_blur 7 (CLAM's mthresh) and close_kernel 5 (an elliptic morphological close; CLAM's
      preset closes with a 4x4 square); 0 or 1 disables either.
    - min_tissue_fraction: area fraction of a patch footprint that the mask must call tissue.
    Every field but min_tissue_fraction changes the mask (and the mask cache key).
    """

    mask_mpp: float = 8.0
    saturation_threshold: int = 20
    use_otsu: bool = False
    median_blur: int = 7
    close_kernel: int = 5
    min_tissue_fraction: float = 0.35

    def __post_init__(self) -> None:
        """Reject values that would silently give an empty or a full mask."""
        problems = []
        if not (math.isfinite(self.mask_mpp) and self.mask_mpp > 0):
            problems.append(f"mask_mpp must be > 0 um/px, got {self.mask_mpp}")
        if not 0 <= self.saturation_threshold <= 255:
            problems.append(
                f"saturation_threshold must be in 0..255, got {self.saturation_threshold}"
            )
        if self.median_blur < 0 or self.close_kernel < 0:
            problems.append(
                f"median_blur/close_kernel must be >= 0, got {self.median_blur}/{self.close_kernel}"
            )
        if not 0.0 <= self.min_tissue_fraction <= 1.0:
            problems.append(
                f"min_tissue_fraction must be in [0, 1], got {self.min_tissue_fraction}"
            )
        if problems:
            raise ConfigError("Invalid tissue settings: " + "; ".join(problems) + ".")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TissueConfig:
        """A TissueConfig from the keys of `values` named like its fields (others are ignored)."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: values[n] for n in names if n in values})

    def mask_key(self) -> dict[str, Any]:
        """Everything that determines the mask of a thumbnail (for cache keys)."""
        return {
            "mask_mpp": float(self.mask_mpp),
            "saturation_threshold": int(self.saturation_threshold),
            "use_otsu": bool(self.use_otsu),
            "median_blur": int(self.median_blur),
            "close_kernel": int(self.close_kernel),
            "levels": (WHITE_LEVEL, BLACK_LEVEL, OTSU_FLOOR),
        }


def _odd(k: int) -> int:
    """The smallest odd integer >= k."""
    return k if k % 2 else k + 1


def saturation_threshold(saturation: np.ndarray, config: TissueConfig) -> int:
    """The saturation level (0..255) above which a pixel is tissue."""
    if not config.use_otsu:
        return int(config.saturation_threshold)
    otsu, _ = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return max(int(otsu), OTSU_FLOOR)


def tissue_mask(rgb: np.ndarray, config: TissueConfig) -> np.ndarray:
    """bool [h, w] tissue mask of a uint8 [h, w, 3] RGB thumbnail; near-white/black excluded."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 [h, w, 3], got {rgb.dtype} {rgb.shape}")
    rgb = np.ascontiguousarray(rgb)
    saturation = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    if config.median_blur > 1:
        saturation = cv2.medianBlur(saturation, _odd(config.median_blur))
    mask = saturation > saturation_threshold(saturation, config)
    mask &= rgb.min(axis=2) < WHITE_LEVEL
    mask &= rgb.max(axis=2) > BLACK_LEVEL
    if config.close_kernel > 1:
        k = _odd(config.close_kernel)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, kernel) > 0
    return mask


def read_thumbnail(
    slide: openslide.AbstractSlide, base_mpp: float, mask_mpp: float
) -> tuple[np.ndarray, float]:
    """(uint8 [h, w, 3] RGB on white at ~mask_mpp, its exact um/px along x) of the whole slide."""
    mpps = slides_lib.level_mpps(slide, base_mpp)
    fine_enough = [
        i for i, m in enumerate(mpps) if m <= mask_mpp * (1 + slides_lib.LEVEL_TOLERANCE)
    ]
    level = max(fine_enough, key=lambda i: mpps[i]) if fine_enough else 0
    level_w, level_h = slide.level_dimensions[level]
    width0 = slide.dimensions[0]
    scale = min(1.0, mpps[level] / mask_mpp)  # never upscale a slide coarser than mask_mpp
    out_w, out_h = max(1, round(level_w * scale)), max(1, round(level_h * scale))
    thumb = np.empty((out_h, out_w, 3), np.uint8)
    downsample = float(slide.level_downsamples[level])
    band = max(1, math.floor(_STRIP_PIXELS / level_w * out_h / level_h))
    for r0 in range(0, out_h, band):
        r1 = min(out_h, r0 + band)
        s0, s1 = round(r0 * level_h / out_h), round(r1 * level_h / out_h)
        y0 = round(s0 * downsample)
        strip = slides_lib.read_rgb(slide, (0, y0), level, (level_w, max(1, s1 - s0)))
        thumb[r0:r1] = slides_lib.resize(strip, out_w, r1 - r0)
    return thumb, base_mpp * width0 / out_w


def _overlap(a0: float, a1: float, n: int) -> tuple[int, int, np.ndarray]:
    """Cells [lo, hi) of a length-n axis overlapping [a0, a1), and each one's overlap length."""
    lo, hi = max(0, math.floor(a0)), min(n, math.ceil(a1))
    cells = np.arange(lo, hi, dtype=np.float64)
    weights = np.minimum(cells + 1, a1) - np.maximum(cells, a0)
    return lo, hi, np.clip(weights, 0.0, None)


def mask_fraction(
    mask: np.ndarray, width: int, height: int, x0: float, y0: float, extent: float
) -> float:
    """Area fraction of the level-0 square [x0, x0+extent)^2 that a slide-wide mask calls tissue."""
    mask_h, mask_w = mask.shape
    sx, sy = width / mask_w, height / mask_h
    xlo, xhi, wx = _overlap(x0 / sx, (x0 + extent) / sx, mask_w)
    ylo, yhi, wy = _overlap(y0 / sy, (y0 + extent) / sy, mask_h)
    if xlo >= xhi or ylo >= yhi:
        return 0.0
    covered = wy @ mask[ylo:yhi, xlo:xhi].astype(np.float64) @ wx
    return float(covered / ((extent / sx) * (extent / sy)))

"""Tissue masks from slide thumbnails (HSV saturation threshold, as in eva and CLAM)."""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import openslide

from pathfm.data import slides as slides_lib

WHITE_LEVEL = 220  # a pixel with every channel >= this is background (glass)
BLACK_LEVEL = 30  # a pixel with every channel <= this is background (black borders, pen, holes)
OTSU_FLOOR = 8  # Otsu's threshold is never below CLAM's fixed saturation threshold
_STRIP_PIXELS = 1 << 24  # read thumbnails in strips of at most this many level pixels


@dataclasses.dataclass(frozen=True)
class TissueConfig:
    """Tissue detection on a thumbnail at `mask_mpp` um/px; patches need `min_tissue_fraction`."""

    mask_mpp: float = 8.0
    saturation_threshold: int = 20
    use_otsu: bool = False
    median_blur: int = 7
    close_kernel: int = 5
    min_tissue_fraction: float = 0.35


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

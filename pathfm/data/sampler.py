"""Slide index (resolution + tissue mask per slide) and a random tissue patch sampler."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import os
from collections.abc import Sequence

import cv2
import numpy as np
import openslide

from pathfm.data import slides as slides_lib
from pathfm.data import tissue as tissue_lib
from pathfm.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# What reading a bad slide raises: OpenSlide errors, I/O errors, bad values, failed decodes.
READ_ERRORS = (openslide.OpenSlideError, OSError, ValueError, cv2.error)
_MAX_LISTED = 20


@dataclasses.dataclass(frozen=True, eq=False)
class SlideInfo:
    """A usable slide: level-0 size and um/px, per-level um/px, tissue mask bool [h, w]."""

    path: str
    mpp: float
    width: int
    height: int
    level_mpps: tuple[float, ...]
    mask: np.ndarray
    mask_mpp: float


def _inspect(
    record: slides_lib.SlideRecord, tissue: tissue_lib.TissueConfig, max_mpp: float | None
) -> SlideInfo | str:
    """The SlideInfo of a slide, or the reason it cannot be used."""
    if not os.path.isfile(record.path):
        return "file not found; check the path (or remove it from the manifest)"
    try:
        with openslide.OpenSlide(record.path) as slide:
            mpp = record.mpp_override
            mpp = slides_lib.slide_mpp(slide.properties) if mpp is None else mpp
            reason = _mpp_problem(mpp, max_mpp)
            if reason:
                return reason
            thumb, mask_mpp = tissue_lib.read_thumbnail(slide, mpp, tissue.mask_mpp)
            mask = tissue_lib.tissue_mask(thumb, tissue)
            if not mask.any():
                return (
                    f"no tissue found in its {thumb.shape[1]}x{thumb.shape[0]} px thumbnail at "
                    f"{mask_mpp:.3g} um/px; check the slide or lower the saturation threshold"
                )
            width, height = slide.dimensions
            mpps = tuple(slides_lib.level_mpps(slide, mpp))
            return SlideInfo(record.path, mpp, width, height, mpps, mask, mask_mpp)
    except READ_ERRORS as e:
        return f"unreadable ({type(e).__name__}: {e}); check or re-export the file"


def _mpp_problem(mpp: float | None, max_mpp: float | None) -> str:
    """Why a level-0 resolution is unusable, or '' if it is fine."""
    lo, hi = slides_lib.MPP_RANGE
    if mpp is None:
        return (
            "unknown resolution (no openslide.mpp-x, TIFF resolution or objective power); "
            "give its mpp in a CSV manifest"
        )
    if not lo <= mpp <= hi:
        return (
            f"implausible resolution {mpp:.4g} um/px (plausible: {lo}-{hi}); "
            "fix the file's metadata or give its mpp in a CSV manifest"
        )
    if max_mpp is not None and mpp > max_mpp * (1 + slides_lib.LEVEL_TOLERANCE):
        return f"too coarse for training: {mpp:.4g} um/px at level 0 > {max_mpp:.4g} um/px"
    return ""


def _reasons(rejected: Sequence[tuple[str, str]]) -> str:
    """Up to _MAX_LISTED 'path: reason' lines."""
    lines = [f"  {path}: {reason}" for path, reason in rejected[:_MAX_LISTED]]
    if len(rejected) > _MAX_LISTED:
        lines.append(f"  ... and {len(rejected) - _MAX_LISTED} more")
    return "\n".join(lines)


class SlideIndex:
    """Usable slides (with tissue masks) and rejected ones (path, reason)."""

    def __init__(self, slides: list[SlideInfo], rejected: list[tuple[str, str]]):
        """Wrap already inspected slides; use SlideIndex.build to make one from records."""
        self.slides = slides
        self.rejected = rejected

    def __len__(self) -> int:
        """Number of usable slides."""
        return len(self.slides)

    @classmethod
    def build(
        cls,
        records: Sequence[slides_lib.SlideRecord],
        tissue: tissue_lib.TissueConfig,
        max_mpp_for_training: float | None = None,
        on_bad_slide: str = "skip",
        num_threads: int = 1,
    ) -> SlideIndex:
        """Open every slide, resolve its mpp and tissue mask; skip (or raise on) bad ones."""
        if on_bad_slide not in ("skip", "error"):
            raise ConfigError(f"on_bad_slide must be 'skip' or 'error', got {on_bad_slide!r}")
        inspect = lambda r: _inspect(r, tissue, max_mpp_for_training)
        slides, rejected = [], []
        with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
            results = map(inspect, records) if num_threads <= 1 else pool.map(inspect, records)
            for record, result in zip(records, results, strict=True):
                if isinstance(result, SlideInfo):
                    slides.append(result)
                    continue
                if on_bad_slide == "error":
                    pool.shutdown(cancel_futures=True)
                    raise DataError(f"Slide {record.path} is unusable: {result}.")
                logger.warning("Skipping slide %s: %s", record.path, result)
                rejected.append((record.path, result))
        if not slides:
            raise DataError(
                f"None of the {len(records)} slide(s) is usable; fix or replace them:\n"
                + _reasons(rejected)
            )
        return cls(slides, rejected)


def _overlap(a0: float, a1: float, n: int) -> tuple[int, int, np.ndarray]:
    """Cells [lo, hi) of a length-n axis overlapping [a0, a1), and each one's overlap length."""
    lo, hi = max(0, math.floor(a0)), min(n, math.ceil(a1))
    cells = np.arange(lo, hi, dtype=np.float64)
    weights = np.minimum(cells + 1, a1) - np.maximum(cells, a0)
    return lo, hi, np.clip(weights, 0.0, None)


def tissue_fraction(info: SlideInfo, x0: float, y0: float, extent: float) -> float:
    """Area fraction of the level-0 square [x0, x0+extent)^2 that the mask calls tissue."""
    mask_h, mask_w = info.mask.shape
    sx, sy = info.width / mask_w, info.height / mask_h
    xlo, xhi, wx = _overlap(x0 / sx, (x0 + extent) / sx, mask_w)
    ylo, yhi, wy = _overlap(y0 / sy, (y0 + extent) / sy, mask_h)
    if xlo >= xhi or ylo >= yhi:
        return 0.0
    covered = wy @ info.mask[ylo:yhi, xlo:xhi].astype(np.float64) @ wx
    return float(covered / ((extent / sx) * (extent / sy)))


def _flat_tissue(mask: np.ndarray) -> np.ndarray:
    """Flat indices of the True pixels of a bool [h, w] mask (int32 when they fit)."""
    dtype = np.int32 if mask.size < 2**31 else np.int64
    return np.flatnonzero(mask).astype(dtype)


class PatchSampler:
    """Draws random tissue patches at random resolutions; picklable, opens slides lazily."""

    def __init__(
        self,
        index: SlideIndex,
        patch_size: int,
        mpps: Sequence[float],
        mpp_weights: Sequence[float] | None = None,
        min_tissue_fraction: float = 0.35,
        max_tries: int = 16,
        max_open: int = 64,
        cache_bytes: int = 256 << 20,
    ):
        """Sample patch_size px patches at um/px drawn from `mpps` (with `mpp_weights`)."""
        if patch_size < 1 or not mpps or min(mpps) <= 0 or max_tries < 1:
            raise ConfigError(
                f"need patch_size >= 1, positive mpps and max_tries >= 1; got patch_size="
                f"{patch_size}, mpps={list(mpps)}, max_tries={max_tries}"
            )
        weights = np.ones(len(mpps)) if mpp_weights is None else np.asarray(mpp_weights, float)
        if weights.shape != (len(mpps),) or weights.min() < 0 or weights.sum() <= 0:
            raise ConfigError(
                f"mpp_weights {mpp_weights} must be {len(mpps)} weights >= 0, sum > 0"
            )
        self.index = index
        self.patch_size = int(patch_size)
        self.mpps = tuple(float(m) for m in mpps)
        self._cum_weights = np.cumsum(weights / weights.sum())
        self.min_tissue_fraction = float(min_tissue_fraction)
        self.max_tries = int(max_tries)
        self._check_resolutions()
        # Flat indices of tissue mask pixels per slide, so drawing a tissue pixel is O(1).
        self._tissue = [_flat_tissue(s.mask) for s in index.slides]
        self._handles_args = (max_open, cache_bytes)
        self._handles: slides_lib.SlideHandles | None = None

    def _check_resolutions(self) -> None:
        """Every slide must provide the finest requested mpp without upscaling."""
        finest = min(self.mpps)
        too_coarse = [
            f"  {s.path}: {s.mpp:.4g} um/px"
            for s in self.index.slides
            if s.level_mpps[0] > finest * (1 + slides_lib.LEVEL_TOLERANCE)
        ]
        if too_coarse:
            raise DataError(
                f"{len(too_coarse)} slide(s) are coarser than the finest requested "
                f"{finest} um/px:\n"
                + "\n".join(too_coarse[:_MAX_LISTED])
                + f"\nDrop that mpp or build the index with max_mpp_for_training={finest}."
            )

    def __getstate__(self) -> dict:
        """Pickle without open slide handles (they are reopened lazily in each process)."""
        state = self.__dict__.copy()
        state["_handles"] = None
        return state

    @property
    def handles(self) -> slides_lib.SlideHandles:
        """This process's LRU of open slides, created on first use."""
        if self._handles is None:
            self._handles = slides_lib.SlideHandles(*self._handles_args)
        return self._handles

    def _draw(self, rng: np.random.Generator) -> tuple[int, float, tuple[float, float]]:
        """(slide index, mpp, level-0 centre) of a patch that is mostly tissue if possible."""
        slide = int(rng.integers(len(self.index.slides)))
        choice = int(np.searchsorted(self._cum_weights, rng.random(), side="right"))
        mpp = self.mpps[min(choice, len(self.mpps) - 1)]
        info, tissue = self.index.slides[slide], self._tissue[slide]
        mask_w = info.mask.shape[1]
        sx, sy = info.width / mask_w, info.height / info.mask.shape[0]
        extent = self.patch_size * mpp / info.mpp
        for _ in range(self.max_tries):
            row, col = divmod(int(tissue[rng.integers(len(tissue))]), mask_w)
            cx, cy = (col + rng.random()) * sx, (row + rng.random()) * sy
            frac = tissue_fraction(info, cx - extent / 2, cy - extent / 2, extent)
            if frac >= self.min_tissue_fraction:
                break
        return slide, mpp, (cx, cy)

    def __call__(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One sample: image uint8 [P, P, 3], slide, level-0 top-left x/y, mpp, read_errors."""
        errors = 0
        while True:
            slide, mpp, center = self._draw(rng)
            info = self.index.slides[slide]
            _, x0, y0, _ = slides_lib.patch_window(info.level_mpps, center, self.patch_size, mpp)
            try:
                handle = self.handles.get(info.path)
                image = slides_lib.read_patch(handle, center, self.patch_size, mpp, info.mpp)
            except READ_ERRORS as e:
                errors += 1
                self.handles.discard(info.path)
                logger.warning(
                    "Read error %d in slide %s: %s: %s", errors, info.path, type(e).__name__, e
                )
                if errors >= self.max_tries:
                    raise DataError(
                        f"{errors} patch reads failed in a row (last: slide {info.path}: {e}); "
                        "check that the slide files are still readable"
                    ) from e
                continue
            return {
                "image": image,
                "slide": np.int32(slide),
                "x": np.int32(x0),
                "y": np.int32(y0),
                "mpp": np.float32(mpp),
                "read_errors": np.int32(errors),
            }

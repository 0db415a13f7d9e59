"""Slide index (resolution + tissue mask per slide) and a random tissue patch sampler.

The sampler reads a TissueIndex (columns, usually memory-mapped from a prepared directory); an
in-memory SlideIndex of SlideInfos is converted to one."""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import threading
from collections.abc import Sequence

import cv2
import numpy as np
import openslide

from pathfm.data import mask_cache, tissue_runs
from pathfm.data import slides as slides_lib
from pathfm.data import tissue as tissue_lib
from pathfm.data.mask_cache import SlideInfo
from pathfm.data.tissue_index import TissueIndex, too_coarse
from pathfm.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# What reading a bad slide raises: OpenSlide errors, I/O errors, bad values, failed decodes.
READ_ERRORS = (openslide.OpenSlideError, OSError, ValueError, cv2.error)
_MAX_LISTED = 20
UNREADABLE = "unreadable"  # how a reason from an I/O or decode error starts (maybe passing)
SLIDE_WEIGHTINGS = ("uniform", "tissue_area")
_BUDGET_STREAM = 0x9A7C4B  # salts the pool's seed stream apart from the samples' [seed, index]


def inspect_slide(
    record: slides_lib.SlideRecord,
    tissue: tissue_lib.TissueConfig,
    max_mpp: float | None,
    cache_dir: str | None = None,
) -> SlideInfo | str:
    """The SlideInfo of a slide (from the mask cache if there), or the reason it is unusable."""
    if not os.path.isfile(record.path):
        return "file not found; check the path (or remove it from the manifest)"
    if cache_dir is None:
        return _open_and_mask(record, tissue, max_mpp)
    try:
        key = mask_cache.cache_key(record.path, record.mpp_override, tissue)
    except OSError as e:
        return f"{UNREADABLE} ({type(e).__name__}: {e}); check the file"
    cached = mask_cache.load(cache_dir, key, record.path)
    if cached is not None:
        return mpp_problem(cached.mpp, max_mpp) or cached
    result = _open_and_mask(record, tissue, max_mpp)
    if isinstance(result, SlideInfo):
        mask_cache.store(cache_dir, key, result)
    return result


def _open_and_mask(
    record: slides_lib.SlideRecord, tissue: tissue_lib.TissueConfig, max_mpp: float | None
) -> SlideInfo | str:
    """Open a slide, check its mpp and compute its tissue mask from a thumbnail."""
    try:
        with openslide.OpenSlide(record.path) as slide:
            mpp = record.mpp_override
            mpp = slides_lib.slide_mpp(slide.properties) if mpp is None else mpp
            reason = mpp_problem(mpp, max_mpp)
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
        return f"{UNREADABLE} ({type(e).__name__}: {e}); check or re-export the file"


def mpp_problem(mpp: float | None, max_mpp: float | None) -> str:
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
    return too_coarse(mpp, max_mpp)


def list_reasons(rejected: Sequence[tuple[str, str]]) -> str:
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
        cache_dir: str | None = None,
        max_bad_fraction: float = 1.0,
    ) -> SlideIndex:
        """Resolve mpps and masks (cached in cache_dir); skip bad slides up to max_bad_fraction."""
        if on_bad_slide not in ("skip", "error"):
            raise ConfigError(f"on_bad_slide must be 'skip' or 'error', got {on_bad_slide!r}")
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ConfigError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        inspect = lambda r: inspect_slide(r, tissue, max_mpp_for_training, cache_dir)
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
                log.warning("Skipping slide %s: %s", record.path, result)
                rejected.append((record.path, result))
        if not slides:
            raise DataError(
                f"None of the {len(records)} slide(s) is usable; fix or replace them:\n"
                + list_reasons(rejected)
            )
        if len(rejected) > max_bad_fraction * len(records):
            raise DataError(
                f"{len(rejected)} of {len(records)} slides are unusable, more than "
                f"max_bad_fraction={max_bad_fraction:g} allows; fix or remove them (or raise "
                "max_bad_fraction):\n" + list_reasons(rejected)
            )
        return cls(slides, rejected)


def tissue_fraction(info: SlideInfo, x0: float, y0: float, extent: float) -> float:
    """Area fraction of the level-0 square [x0, x0+extent)^2 that the slide's mask calls tissue."""
    return tissue_lib.mask_fraction(info.mask, info.width, info.height, x0, y0, extent)


class PatchSampler:
    """Draws random tissue patches at random resolutions; picklable, opens slides lazily.

    Pickles as its settings plus the index, which a prepared (memory-mapped) index carries as its
    directory: a few KB at any number of slides. Per-slide tables are rebuilt in each process."""

    def __init__(
        self,
        index: SlideIndex | TissueIndex,
        patch_size: int,
        mpps: Sequence[float],
        mpp_weights: Sequence[float] | None = None,
        min_tissue_fraction: float = 0.35,
        max_tries: int = 16,
        max_open: int = 64,
        cache_bytes: int = 256 << 20,
        slide_weighting: str = "uniform",
        patch_budget: int = 0,
        budget_seed: int = 0,
        budget_cache_items: int | None = None,
    ):
        """Sample patch_size px patches at um/px drawn from `mpps` (with `mpp_weights`)."""
        # slide_weighting: 'uniform' or 'tissue_area' (slide probability proportional to um^2 of
        # tissue). patch_budget N > 0: draw uniformly from a fixed pool of N locations; location k
        # is a pure function of (index, settings, budget_seed, k), so every process and host has
        # the same pool. Each process keeps budget_cache_items (default min(N, 4096)) decoded
        # pool patches in an LRU.
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
        if slide_weighting not in SLIDE_WEIGHTINGS or patch_budget < 0:
            raise ConfigError(
                f"need slide_weighting in {SLIDE_WEIGHTINGS} and patch_budget >= 0 (0 = unlimited);"
                f" got {slide_weighting!r} and {patch_budget}"
            )
        if isinstance(index, SlideIndex):
            index = TissueIndex.from_slide_infos(index.slides, index.rejected)
        self.index = index
        self.patch_size = int(patch_size)
        self.mpps = tuple(float(m) for m in mpps)
        self._weights = weights / weights.sum()
        self.min_tissue_fraction = float(min_tissue_fraction)
        self.max_tries = int(max_tries)
        self.slide_weighting = slide_weighting
        self.patch_budget = int(patch_budget)
        self.budget_seed = int(budget_seed)
        items = min(self.patch_budget, 4096) if budget_cache_items is None else budget_cache_items
        self.budget_cache_items = max(0, int(items))
        self._handles_args = (max_open, cache_bytes)
        self._build_tables()
        self._reset_process_state()

    def _build_tables(self) -> None:
        """Per-slide tables (O(S) floats, vectorised): slide and resolution probabilities."""
        self._check_resolutions()
        self.tissue_areas = self.index.tissue_areas()  # um^2 of tissue per slide
        areas = self.tissue_areas
        probs = areas if self.slide_weighting == "tissue_area" else np.ones(len(areas))
        self.slide_probs = probs / probs.sum()
        self._cum_slides = (
            None if self.slide_weighting == "uniform" else np.cumsum(self.slide_probs)
        )

    def _reset_process_state(self) -> None:
        """Empty per-process state: slide handles, the LRU of decoded pool patches and the read
        errors already warned about."""
        self._handles: slides_lib.SlideHandles | None = None
        self._warned: set[tuple[str, str]] = set()  # (slide, error type): one warning each
        self._patches: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()

    def _check_resolutions(self) -> None:
        """Per slide, the cumulative weights of the mpps it can serve without upscaling.

        A 20x slide (0.5 um/px) asked for (0.25, 0.5, 1, 2) serves the last three, with their
        weights renormalised; a slide that serves none of them is an error."""
        limit = 1 + slides_lib.LEVEL_TOLERANCE
        index = self.index
        finest = np.asarray(index.level_mpps)[np.asarray(index.level_lo)]  # [S]
        serves = np.asarray(self.mpps)[None, :] * limit >= finest[:, None]  # [S, M]
        weights = np.where(serves, self._weights, 0.0)
        coarse = np.flatnonzero(weights.sum(axis=1) == 0)
        if len(coarse):
            listed = [f"  {index.path(i)}: {index.mpp[i]:.4g} um/px" for i in coarse[:_MAX_LISTED]]
            raise DataError(
                f"{len(coarse)} slide(s) are coarser than every requested mpp "
                f"{self.mpps}:\n"
                + "\n".join(listed)
                + f"\nAdd a coarser mpp or build the index with max_mpp_for_training="
                f"{max(self.mpps)}."
            )
        self._cum_weights = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)

    _PROCESS_STATE = ("_handles", "_patches", "_lock", "_warned")
    _TABLES = ("_cum_weights", "tissue_areas", "slide_probs", "_cum_slides")

    def __getstate__(self) -> dict:
        """Pickle settings and the index only: no handles, patch LRU, lock or per-slide tables."""
        skip = self._PROCESS_STATE + self._TABLES
        return {k: v for k, v in self.__dict__.items() if k not in skip}

    def __setstate__(self, state: dict) -> None:
        """Restore the settings, rebuild the per-slide tables, start with empty process state."""
        self.__dict__.update(state)
        self._build_tables()
        self._reset_process_state()

    @property
    def handles(self) -> slides_lib.SlideHandles:
        """This process's LRU of open slides, created on first use."""
        if self._handles is None:
            self._handles = slides_lib.SlideHandles(*self._handles_args)
        return self._handles

    def _draw(self, rng: np.random.Generator) -> tuple[int, float, tuple[float, float], float]:
        """(slide, mpp, level-0 centre, tissue fraction) of a patch: a slide (by slide_weighting),
        a resolution (by mpp_weights), then `location` in that slide."""
        index = self.index
        if self._cum_slides is None:
            slide = int(rng.integers(len(index)))
        else:
            slide = int(self._cum_slides.searchsorted(rng.random(), side="right"))
            slide = min(slide, len(index) - 1)
        choice = int(self._cum_weights[slide].searchsorted(rng.random(), side="right"))
        mpp = self.mpps[min(choice, len(self.mpps) - 1)]
        return (slide, mpp, *self.location(slide, mpp, rng))

    def location(
        self, slide: int, mpp: float, rng: np.random.Generator
    ) -> tuple[tuple[float, float], float]:
        """(level-0 centre, tissue fraction) of a patch at `mpp` in `slide`, mostly tissue if
        possible: a uniform tissue pixel of the mask, a uniform point in it, kept once the patch
        around it has min_tissue_fraction (max_tries candidates at most; the last one otherwise)."""
        index = self.index
        runs, tissue_pixels = index.runs(slide), int(index.tissue_pixels[slide])
        shape = int(index.mask_h[slide]), int(index.mask_w[slide])
        size = int(index.width[slide]), int(index.height[slide])
        sx, sy = size[0] / shape[1], size[1] / shape[0]
        extent = self.patch_size * mpp / float(index.mpp[slide])
        for _ in range(self.max_tries):
            row, col = tissue_runs.pixel_of_ordinal(runs, int(rng.integers(tissue_pixels)))
            cx, cy = (col + rng.random()) * sx, (row + rng.random()) * sy
            x0, y0 = cx - extent / 2, cy - extent / 2
            frac = tissue_runs.box_fraction(runs, shape, size, x0, y0, extent)
            if frac >= self.min_tissue_fraction:
                break
        return (cx, cy), frac

    def budget_location(self, k: int) -> tuple[int, float, tuple[float, float], float]:
        """Pool entry k (slide, mpp, centre, tissue): recomputed from (budget_seed, k) each time."""
        return self._draw(np.random.default_rng([_BUDGET_STREAM, self.budget_seed, k]))

    def budget_pool(self) -> list[tuple[int, float, int, int]]:
        """(slide, mpp, level-0 x, y) of every pool location (empty without a budget)."""
        pool = []
        for k in range(self.patch_budget):
            slide, mpp, center, _ = self.budget_location(k)
            level_mpps = self.index.levels(slide)
            _, x0, y0, _ = slides_lib.patch_window(level_mpps, center, self.patch_size, mpp)
            pool.append((slide, mpp, x0, y0))
        return pool

    def _read(
        self, slide: int, mpp: float, center: tuple[float, float], k: int | None
    ) -> np.ndarray:
        """The uint8 [P, P, 3] patch; pool entry k's comes from (and goes to) the patch LRU."""
        lru = k is not None and self.budget_cache_items > 0
        with self._lock:
            image = self._patches.get(k) if lru else None
            if image is not None:
                self._patches.move_to_end(k)
                return image.copy()  # callers may modify their patch in place
        path, base_mpp = self.index.path(slide), float(self.index.mpp[slide])
        image = slides_lib.read_patch(
            self.handles.get(path), center, self.patch_size, mpp, base_mpp
        )
        if lru:
            with self._lock:
                self._patches[k] = image
                while len(self._patches) > self.budget_cache_items:
                    self._patches.popitem(last=False)
            image = image.copy()
        return image

    def _warn_once(self, path: str, error: Exception) -> None:
        """A warning for the first read error of each kind in each slide (per process); later
        ones are only counted (the `read_errors` of each sample, summed by the training log)."""
        key = (path, type(error).__name__)
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        log.warning(
            "Read error in slide %s: %s: %s (further %s errors of this slide are counted in "
            "read_errors_total, not printed)", path, key[1], error, key[1],
        )  # fmt: skip

    def draw(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Sample `index` of the stream (the pipeline's `SampleSource`): all of it from `rng`."""
        del index
        return self(rng)

    def __call__(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One sample: image uint8 [P, P, 3], slide, level-0 x/y, mpp, tissue, read_errors."""
        errors = 0
        while True:
            k = int(rng.integers(self.patch_budget)) if self.patch_budget else None
            slide, mpp, center, frac = self._draw(rng) if k is None else self.budget_location(k)
            path, level_mpps = self.index.path(slide), self.index.levels(slide)
            _, x0, y0, _ = slides_lib.patch_window(level_mpps, center, self.patch_size, mpp)
            try:
                image = self._read(slide, mpp, center, k)
            except READ_ERRORS as e:
                errors += 1
                self.handles.discard(path)
                self._warn_once(path, e)
                if errors >= self.max_tries:
                    raise DataError(
                        f"{errors} patch reads failed in a row (last: slide {path}: {e}); "
                        "check that the slide files are still readable"
                    ) from e
                continue
            return {
                "image": image,
                "slide": np.int32(slide),
                "x": np.int32(x0),
                "y": np.int32(y0),
                "mpp": np.float32(mpp),
                "tissue": np.float32(frac),
                "read_errors": np.int32(errors),
            }

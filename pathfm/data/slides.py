"""Whole slide images via OpenSlide: discovery, resolution (mpp), level choice, patch reading.

JPEG-tiled TIFF / Aperio SVS slides are read by :class:`TiffJpegSlide` (no cairo) when eligible.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import glob
import math
import os
import threading
from collections.abc import Mapping, Sequence

import cv2
import numpy as np
import openslide

from pathfm.data.tiff_reader import DECODE_SCALES, TiffJpegSlide, TileCache
from pathfm.errors import DataError

SLIDE_EXTENSIONS = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".svslide",
    ".bif",
    ".vms",
    ".vmu",
)
MPP_RANGE = (0.05, 20.0)  # plausible um/px
LEVEL_TOLERANCE = 0.05  # a level within 5% of the target mpp counts as matching it
_LISTED = 20  # missing files named in an error, at most

Slide = openslide.AbstractSlide | TiffJpegSlide  # what SlideHandles.get returns

_SOURCE_HINT = (
    "pass a directory of slides, a glob pattern (e.g. 'slides/*.svs') "
    "or a .csv manifest with a 'path' column"
)


@dataclasses.dataclass(frozen=True)
class SlideRecord:
    """One slide file, with an optional resolution (um/px) that overrides the file's metadata."""

    path: str
    mpp_override: float | None = None


def find_slides(source: str, root: str = "") -> list[SlideRecord]:
    """List slides from a directory (non-recursive), a glob pattern (`**` recurses), a .csv
    manifest or one slide file.

    With `root`, a relative source and a manifest's relative paths are resolved against it
    (data mounted elsewhere: change the root, keep the manifest); without, a manifest's relative
    paths are resolved against its own folder."""
    root = os.path.expanduser(str(root)) if root else ""
    source = os.path.join(root, os.path.expanduser(str(source)))
    if source.lower().endswith(".csv") and os.path.isfile(source):
        return _read_manifest(source, root)
    if os.path.isdir(source):
        names = sorted(os.listdir(source))
        paths = [os.path.join(source, n) for n in names if n.lower().endswith(SLIDE_EXTENSIONS)]
        paths = [p for p in paths if os.path.isfile(p)]
        if not paths:
            raise DataError(
                f"Directory {source} holds no slide files (extensions: "
                f"{', '.join(SLIDE_EXTENSIONS)}); {_SOURCE_HINT}."
            )
        return [SlideRecord(p) for p in paths]
    if os.path.isfile(source):  # one slide
        return [SlideRecord(source)]
    if not glob.has_magic(source):
        raise DataError(f"Slide source {source} does not exist; {_SOURCE_HINT}.")
    paths = sorted(p for p in glob.glob(source, recursive=True) if os.path.isfile(p))  # ** recurses
    if not paths:
        raise DataError(f"Glob pattern {source} matches no files; {_SOURCE_HINT}.")
    return [SlideRecord(p) for p in paths]


def duplicates(records: Sequence[SlideRecord]) -> list[int]:
    """Positions of records whose slide (by absolute, normalised path) came earlier in the list:
    a manifest that names a slide twice would draw it twice as often."""
    seen: set[str] = set()
    repeated = []
    for i, record in enumerate(records):
        key = os.path.normcase(os.path.abspath(record.path))
        if key in seen:
            repeated.append(i)
        seen.add(key)
    return repeated


def _manifest_rows(csv_path: str, columns: Sequence[str] = ("path",)) -> list[tuple[int, dict]]:
    """(line number, row) of each CSV row with a non-empty `path`; DataError if a column is
    missing from the header."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [(name or "").strip() for name in (reader.fieldnames or [])]
        absent = [c for c in columns if c not in fields]
        if absent:
            raise DataError(
                f"Manifest {csv_path} has no {', '.join(map(repr, absent))} column (header: "
                f"{fields}); add a header line with 'path', optionally 'mpp', and "
                f"{', '.join(map(repr, columns))}."
            )
        reader.fieldnames = fields
        rows = list(enumerate(reader, start=2))
    return [(line, row) for line, row in rows if (row.get("path") or "").strip()]


def manifest_column(csv_path: str, column: str) -> list[str]:
    """The stripped `column` values of a manifest, one per slide in `find_slides(csv_path)`
    order (e.g. slide labels for MIL); DataError naming the line of an empty value."""
    values = []
    for line, row in _manifest_rows(csv_path, ("path", column)):
        value = (row.get(column) or "").strip()
        if not value:
            raise DataError(f"Manifest {csv_path} line {line}: empty {column!r}; fill it in.")
        values.append(value)
    return values


def _read_manifest(csv_path: str, root: str = "") -> list[SlideRecord]:
    """Read a CSV manifest with a `path` column and an optional `mpp` column."""
    folder = root or os.path.dirname(os.path.abspath(csv_path))
    rows = _manifest_rows(csv_path)
    records = []
    for line, row in rows:
        raw = row["path"].strip()
        path = os.path.join(folder, os.path.expanduser(raw))
        records.append(SlideRecord(path, _parse_manifest_mpp(row.get("mpp"), csv_path, line)))
    missing = [r.path for r in records if not os.path.isfile(r.path)]  # 423k rows: about 1 s
    if missing:
        listing = "\n  ".join(missing[:_LISTED])
        more = f"\n  ... and {len(missing) - _LISTED} more" if len(missing) > _LISTED else ""
        raise DataError(
            f"Manifest {csv_path} names {len(missing)} missing file(s); fix or remove these rows"
            f" (or set data.root to the folder they are relative to):\n  {listing}{more}"
        )
    if not records:
        raise DataError(f"Manifest {csv_path} lists no slides; add rows with a 'path'.")
    return records


def _parse_manifest_mpp(value: str | None, csv_path: str, line: int) -> float | None:
    """Parse an optional `mpp` cell of a manifest; empty means unknown."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        mpp = float(value)
    except ValueError:
        mpp = math.nan
    if not (math.isfinite(mpp) and mpp > 0):
        raise DataError(
            f"Manifest {csv_path} line {line}: mpp {value!r} is not a positive number "
            "(um/px); fix it or leave it empty."
        )
    return mpp


def _float_or_none(value: str | None) -> float | None:
    """A positive finite float from a property string, else None."""
    try:
        x = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return x if math.isfinite(x) and x > 0 else None


_UNIT_MICRONS = {"centimeter": 1e4, "inch": 25400.0}


def slide_mpp(properties: Mapping[str, str]) -> float | None:
    """Level-0 um/px (x) from OpenSlide properties: mpp, TIFF resolution, objective; else None."""
    mpp = _float_or_none(properties.get(openslide.PROPERTY_NAME_MPP_X))
    if mpp is None:
        mpp = _float_or_none(properties.get(openslide.PROPERTY_NAME_MPP_Y))
    if mpp is not None:
        return mpp
    unit = str(properties.get("tiff.ResolutionUnit", "")).strip().lower()
    resolution = _float_or_none(properties.get("tiff.XResolution"))
    if unit in _UNIT_MICRONS and resolution is not None:
        return _UNIT_MICRONS[unit] / resolution
    power = _float_or_none(properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))
    if power is not None:
        return 10.0 / power
    return None


def level_mpps(slide: Slide, base_mpp: float) -> list[float]:
    """um/px of each pyramid level: base_mpp * level downsample."""
    return [base_mpp * float(d) for d in slide.level_downsamples]


def choose_level(
    level_mpps: Sequence[float], target_mpp: float, tolerance: float = LEVEL_TOLERANCE
) -> int:
    """Coarsest level with mpp <= target*(1+tol); ValueError if even level 0 is too coarse."""
    limit = target_mpp * (1.0 + tolerance)
    candidates = [i for i, m in enumerate(level_mpps) if m <= limit]
    if not candidates:
        raise ValueError(
            f"target {target_mpp:.4g} um/px is finer than level 0 ({level_mpps[0]:.4g} um/px) "
            f"beyond the {tolerance:.0%} tolerance; refusing to upscale"
        )
    return max(candidates, key=lambda i: (level_mpps[i], -i))


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """uint8 [h, w, 3] from uint8 RGBA [h, w, 4] composited onto white (outside slide = white)."""
    rgb = cv2.cvtColor(np.ascontiguousarray(rgba), cv2.COLOR_RGBA2RGB)  # much faster than numpy
    alpha = rgba[..., 3:]
    if alpha.min() == 255:
        return rgb
    a = alpha.astype(np.uint16)
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def read_rgb(slide: Slide, xy: tuple[int, int], level: int, wh: tuple[int, int]) -> np.ndarray:
    """uint8 [h, w, 3] region at `level`, top-left `xy` in level-0 px, composited on white."""
    fast = getattr(slide, "read_rgb", None)  # TiffJpegSlide: decoded tiles, already RGB
    if fast is not None:
        return fast(xy, level, wh)
    region = slide.read_region((int(xy[0]), int(xy[1])), level, (int(wh[0]), int(wh[1])))
    return composite_on_white(np.asarray(region))


def resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize uint8 [h, w, 3]: INTER_AREA when shrinking, INTER_LINEAR when (slightly) enlarging."""
    if rgb.shape[1] == width and rgb.shape[0] == height:
        return rgb
    shrink = width <= rgb.shape[1] and height <= rgb.shape[0]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(rgb, (width, height), interpolation=interp)


def decode_scale(read: int, size: int) -> int:
    """The JPEG DCT scale 1/s (s in 1, 2, 4, 8) to decode a `read` px window at before its area
    downscale to `size` px: the largest s that decodes it straight to the output size (read/s
    rounds to size: pyramids and targets a power of two apart), else the largest that leaves a
    downscale of >= 4x, else 1.

    Decoding at 1/s is close to an area downscale by s (0.1-0.2 grey levels of mean difference on
    H&E), but a second, fractional area step after it blurs unlike a single one: 1.3-2.1 grey
    levels after a 2-2.5x step, up to 6 after 98 -> 96 px, 0.65 after 4.5x (docs/data.md)."""
    for s in reversed(DECODE_SCALES[1:]):
        if round(read / s) == size:
            return s
    return max(s for s in DECODE_SCALES if read >= 4 * s * size or s == 1)


def patch_window(
    level_mpps: Sequence[float],
    center_xy: tuple[float, float],
    size: int,
    target_mpp: float,
    tolerance: float = LEVEL_TOLERANCE,
) -> tuple[int, int, int, int]:
    """(level, x0, y0, read): read a read x read px square at `level` from level-0 (x0, y0).

    Where the window can be decoded at a JPEG scale 1/s > 1 (`decode_scale`), `read` is a
    multiple of s and (x0, y0) a whole decoded pixel (a multiple of s level px; at s = 1, any
    level-0 px, as OpenSlide): the window moves by less than half a decoded pixel (< half an
    output pixel), so that every reader covers the same microns whether it decodes at 1/s or at
    full size."""
    level = choose_level(level_mpps, target_mpp, tolerance)
    read = max(1, round(size * target_mpp / level_mpps[level]))
    scale = decode_scale(read, size)
    read = scale * size if round(read / scale) == size else scale * (read // scale)
    # Level-0 px per decoded pixel; a full-size decode keeps level-0 px precision (as OpenSlide).
    step0 = scale * level_mpps[level] / level_mpps[0] if scale > 1 else 1.0
    extent0 = read * level_mpps[level] / level_mpps[0]  # level-0 px covered by the read
    x0 = round(math.floor((center_xy[0] - extent0 / 2) / step0 + 0.5) * step0)
    y0 = round(math.floor((center_xy[1] - extent0 / 2) / step0 + 0.5) * step0)
    return level, x0, y0, read


def read_patch(
    slide: Slide,
    center_xy: tuple[float, float],
    size: int,
    target_mpp: float,
    base_mpp: float,
    tolerance: float = LEVEL_TOLERANCE,
) -> np.ndarray:
    """uint8 [size, size, 3]: size*target_mpp microns centred at a level-0 point, white outside.

    A `TiffJpegSlide` decodes a window of >= 2x the output size at 1/2, 1/4 or 1/8
    (`decode_scale`) before the area downscale; other slides read it whole."""
    mpps = level_mpps(slide, base_mpp)
    level, x0, y0, read = patch_window(mpps, center_xy, size, target_mpp, tolerance)
    scale = decode_scale(read, size)
    if scale > 1 and isinstance(slide, TiffJpegSlide):
        region = slide.read_rgb((x0, y0), level, (read // scale, read // scale), scale=scale)
    else:
        region = read_rgb(slide, (x0, y0), level, (read, read))
    return resize(region, size, size)


class SlideHandles:
    """Per-process LRU of open slides (TiffJpegSlide when eligible, else OpenSlide); pickles empty.

    Handles of each kind share one tile cache of `cache_bytes` (OpenSlideCache / TileCache).
    """

    def __init__(self, max_open: int = 64, cache_bytes: int = 256 << 20, fast_tiff: bool = True):
        """Keep at most `max_open` slides open; `fast_tiff` reads JPEG-tiled TIFFs without cairo."""
        if max_open < 1:
            raise ValueError(f"max_open must be >= 1, got {max_open}")
        self.max_open = int(max_open)
        self.cache_bytes = int(cache_bytes)
        self.fast_tiff = bool(fast_tiff)
        self._reset()

    def _reset(self) -> None:
        """Start with no open slides and no caches (made on first use) owned by this process."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._open: collections.OrderedDict[str, Slide] = collections.OrderedDict()
        self._cache: openslide.OpenSlideCache | None = None
        self._tile_cache: TileCache | None = None

    def __getstate__(self) -> dict:
        """Only the settings travel; handles and caches are reopened lazily in the new process."""
        return {
            "max_open": self.max_open,
            "cache_bytes": self.cache_bytes,
            "fast_tiff": self.fast_tiff,
        }

    def __setstate__(self, state: dict) -> None:
        """Rebuild an empty LRU with the pickled settings."""
        self.max_open = state["max_open"]
        self.cache_bytes = state["cache_bytes"]
        self.fast_tiff = state.get("fast_tiff", True)
        self._reset()

    def __len__(self) -> int:
        """Number of open handles."""
        return len(self._open)

    def _open_slide(self, path: str) -> Slide:
        """A new handle for `path`, attached to this process's cache of its kind."""
        slide = TiffJpegSlide.open(path) if self.fast_tiff else None
        with self._lock:
            if self.cache_bytes > 0 and slide is not None and self._tile_cache is None:
                self._tile_cache = TileCache(self.cache_bytes)
            if self.cache_bytes > 0 and slide is None and self._cache is None:
                self._cache = openslide.OpenSlideCache(self.cache_bytes)
        if slide is not None:
            slide.set_cache(self._tile_cache)
            return slide
        slide = openslide.OpenSlide(path)
        if self._cache is not None:
            slide.set_cache(self._cache)
        return slide

    def get(self, path: str) -> Slide:
        """The open handle for `path`; opens it (dropping the least recently used) if needed."""
        if os.getpid() != self._pid:  # forked: never share file handles with the parent
            self._reset()
        with self._lock:
            slide = self._open.get(path)
            if slide is not None:
                self._open.move_to_end(path)
                return slide
        slide = self._open_slide(path)
        with self._lock:
            self._open[path] = slide
            while len(self._open) > self.max_open:
                # Dropped, not closed: another thread may still read it; GC closes it after.
                self._open.popitem(last=False)
        return slide

    def discard(self, path: str) -> None:
        """Forget `path` (e.g. after a read error left its handle in an error state)."""
        with self._lock:
            self._open.pop(path, None)

    def close(self) -> None:
        """Close every open handle."""
        with self._lock:
            slides = list(self._open.values())
            self._open.clear()
        for slide in slides:
            slide.close()

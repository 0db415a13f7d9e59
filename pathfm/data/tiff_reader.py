"""Fast region reads from JPEG-tiled TIFF slides (generic tiled TIFF, Aperio SVS) without cairo.

OpenSlide's ``read_region`` composites every tile with cairo/pixman; this reader ``os.pread``s only
the JPEG tiles a region needs, decodes them with libjpeg-turbo (simplejpeg, JPEGTables spliced
in) and pastes them into a white canvas. A coarser read decodes the tiles at 1/2, 1/4 or 1/8 of
their size in the DCT domain (``read_rgb(..., scale=s)``): libjpeg-turbo then skips most of the
inverse DCT and the chroma upsampling, and the caller's area resize has 1/s^2 of the pixels left.
A tile the region uses only the top part of is decoded down to the last row it uses
(`decode_tile` ``rows``): the frame height in the tile's SOF header is lowered, so libjpeg-turbo
stops after those MCU rows, and the rows it returns are bit-identical to a full decode.
It follows OpenSlide 4's conventions:
JPEG colour space from the TIFF photometric tag (YCbCr is converted, RGB is not: Aperio's
RGB-in-JPEG quirk), edge tiles cropped to the image, missing (zero-length) tiles and everything
outside the level white, a negative level-0 origin skips ``int(-x / downsample)`` output pixels,
and a fractional level origin (``x / downsample`` not an integer) is resampled bilinearly.

Agreement with OpenSlide 4.0.1 ``read_region`` composited on white (tests/data/test_tiff_reader.py):
pixel-identical wherever the level origin is an integer (level 0 always; CMU-1-Small-Region.svs,
small.svs, synthetic YCbCr generic TIFFs). At fractional level origins OpenSlide resamples with
cairo's GOOD filter; our rounded bilinear differs from it by a mean of 0.1-0.35 grey levels per
region of >= 30x30 px (max 2). Unlike OpenSlide, damaged entropy-coded data inside an otherwise
well-formed tile decodes to garbage instead of failing (libjpeg warnings are not errors here);
missing end-of-image markers, bad headers, wrong frame sizes and short reads do raise.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import threading
import weakref
from collections.abc import Mapping

import cv2
import numpy as np
import openslide
import simplejpeg
import tifffile

VENDORS = ("aperio", "generic-tiff")  # OpenSlide drivers whose levels are plain tiled TIFF pages
_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
_JPEG, _RGB, _YCBCR = 7, 2, 6
DECODE_SCALES = (1, 2, 4, 8)  # libjpeg-turbo's DCT-domain scales 1/s for 8x8 blocks
# APP14 "Adobe" marker with transform 0: tells libjpeg the three components are RGB, not YCbCr.
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
_SEQUENTIAL_SOF = (0xC0, 0xC1)  # baseline and extended sequential DCT, Huffman-coded
_OTHER_SOF = frozenset(range(0xC2, 0xD0)) - {0xC4, 0xC8, 0xCC}  # C4 DHT, C8 JPG, CC DAC
_SOS = 0xDA
# Rows decoded below the last one a read uses: libjpeg-turbo's fancy chroma upsampling (h2v2,
# h1v2) blends the chroma row below each output row, and at a frame's bottom edge it repeats the
# last one instead, so the last row a read uses needs one more row under it.
ROW_MARGIN = 1
_local = threading.local()


@dataclasses.dataclass(frozen=True, eq=False)
class _Level:
    """One pyramid level: a tiled JPEG TIFF page (tile offsets / byte counts in row-major order)."""

    width: int
    height: int
    tile_w: int
    tile_h: int
    across: int
    offsets: np.ndarray
    counts: np.ndarray
    tables: bytes | None
    colorspace: str


def _level_of(page: tifffile.TiffPage) -> _Level | None:
    """The _Level of a tiled 8-bit RGB/YCbCr JPEG page, else None."""
    ok = (
        page.is_tiled
        and page.compression == _JPEG
        and page.photometric in (_RGB, _YCBCR)
        and page.planarconfig == 1
        and page.bitspersample == 8
        and page.samplesperpixel == 3
        and page.imagedepth == 1
        and page.tiledepth == 1
    )
    if not ok:
        return None
    across = -(-page.imagewidth // page.tilewidth)
    down = -(-page.imagelength // page.tilelength)
    offsets = np.asarray(page.dataoffsets, np.int64)
    counts = np.asarray(page.databytecounts, np.int64)
    if offsets.shape != (across * down,) or counts.shape != offsets.shape:
        return None
    space = "YCbCr" if page.photometric == _YCBCR else "RGB"
    return _Level(
        page.imagewidth, page.imagelength, page.tilewidth, page.tilelength, across,
        offsets, counts, page.jpegtables or None, space,
    )  # fmt: skip


def _is_tiff(path: str) -> bool:
    """Whether the file starts with a TIFF or BigTIFF header."""
    try:
        with open(path, "rb") as f:
            return f.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def _axis(origin0: int, downsample: float) -> tuple[int, int, int]:
    """(output offset, first level pixel, bilinear weight /256) along one axis, like OpenSlide."""
    if origin0 < 0:  # OpenSlide skips int(-x / ds) output pixels, then reads from level pixel 0
        return int(-origin0 / downsample), 0, 0
    pos = origin0 / downsample
    first = math.floor(pos)
    weight = round((pos - first) * 256)
    return (0, first + 1, 0) if weight == 256 else (0, first, weight)


def _bilinear(src: np.ndarray, wx: int, wy: int) -> np.ndarray:
    """Shift uint8 [h(+1), w(+1), 3] left/up by (wx, wy)/256 px: bilinear, rounded per pass."""
    if wx:
        src = cv2.addWeighted(src[:, :-1], 1 - wx / 256, src[:, 1:], wx / 256, 0.0)
    if wy:
        src = cv2.addWeighted(src[:-1], 1 - wy / 256, src[1:], wy / 256, 0.0)
    return src


def _tile_buffer(height: int, width: int) -> np.ndarray:
    """This thread's reusable uint8 [height, width, 3] buffer to decode tiles into."""
    buffers = _local.__dict__.setdefault("buffers", {})
    buf = buffers.get((height, width))
    if buf is None:
        buf = buffers[(height, width)] = np.empty((height, width, 3), np.uint8)
    return buf


def jpeg_stream(data: bytes, tables: bytes | None, colorspace: str) -> bytes:
    """A self-contained JPEG of one TIFF tile: the level's JPEGTables (SOI ... EOI) spliced in
    after the tile's SOI and, for RGB photometric, an Adobe APP14 marker with transform 0 (a JFIF
    APP0 would override it and is dropped), so that libjpeg leaves the components as they are:
    OpenSlide sets ``jpeg_color_space = JCS_RGB`` for Aperio's RGB-in-JPEG tiles likewise."""
    body = data[2:]
    head = b"\xff\xd8"
    if colorspace == "RGB":
        if body[:2] == b"\xff\xe0":  # JFIF APP0: drop the segment (2 + its length)
            body = body[2 + int.from_bytes(body[2:4], "big") :]
        head += _ADOBE_RGB
    if tables:
        head += tables[2:-2]
    return head + body


def frame_height_at(stream: bytes) -> int | None:
    """Byte offset of the 16-bit frame height in a JPEG's SOF header, where decoding only the top
    of the frame is exact: a baseline or extended sequential Huffman frame (SOF0 / SOF1) with a
    height, whose first scan interleaves every component. None otherwise (progressive, lossless,
    arithmetic-coded or multi-scan frames, a height given by a DNL marker, a stream it cannot
    parse): there a decoder told a smaller height would misread the scans that follow."""
    i, at, components = 2, None, None
    while i + 4 <= len(stream) and stream[i] == 0xFF:
        marker = stream[i + 1]
        if marker == 0xFF:  # a fill byte before a marker
            i += 1
            continue
        if marker in _SEQUENTIAL_SOF:  # FF Cn, length (2), precision (1), height (2), width (2), Nf
            if int.from_bytes(stream[i + 5 : i + 7], "big") == 0:
                return None
            at, components = i + 5, stream[i + 9 : i + 10]
        elif marker in _OTHER_SOF:
            return None
        elif marker == _SOS:  # FF DA, length (2), Ns
            return at if at is not None and stream[i + 4 : i + 5] == components else None
        i += 2 + int.from_bytes(stream[i + 2 : i + 4], "big")
    return None


def decode_tile(
    stream: bytes, tile_w: int, tile_h: int, scale: int = 1, out=None, rows: int | None = None
) -> np.ndarray:
    """uint8 [tile_h / scale, tile_w / scale, 3] RGB of a `jpeg_stream`, decoded by libjpeg-turbo
    at 1/`scale` in the DCT domain (scale in DECODE_SCALES; tile sides are multiples of 16).

    `rows`: only the first `rows` rows (at 1/scale) are needed. Where `frame_height_at` allows, the
    frame height is lowered to them plus ROW_MARGIN so libjpeg-turbo decodes only the MCU rows
    above; the result then has fewer rows (at least `rows`), each bit-identical to the full decode.
    `out`: a buffer of the full shape; the result is its first rows. ValueError on a stream libjpeg
    cannot read."""
    w, h = tile_w // scale, tile_h // scale
    at = frame_height_at(stream) if rows is not None and rows + ROW_MARGIN < h else None
    if at is not None and int.from_bytes(stream[at : at + 2], "big") == tile_h:  # else decode all
        height = (rows + ROW_MARGIN) * scale  # source rows; 1/scale of them are decoded
        stream = b"".join((stream[:at], height.to_bytes(2, "big"), stream[at + 2 :]))
        h = -(-height // scale)
        out = None if out is None else out[:h]
    return simplejpeg.decode_jpeg(
        stream, "RGB", min_width=w, min_height=h, buffer=out, strict=False
    )


class TileCache:
    """Thread-safe LRU of decoded tiles, bounded in bytes; may be shared by many slides."""

    def __init__(self, max_bytes: int):
        """Keep at most `max_bytes` of decoded tiles."""
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._lock = threading.Lock()
        self._tiles: collections.OrderedDict[tuple, np.ndarray] = collections.OrderedDict()

    def __len__(self) -> int:
        """Number of cached tiles."""
        return len(self._tiles)

    def get(self, key: tuple) -> np.ndarray | None:
        """The cached (read-only) tile for `key`, or None."""
        with self._lock:
            tile = self._tiles.get(key)
            if tile is not None:
                self._tiles.move_to_end(key)
            return tile

    def put(self, key: tuple, tile: np.ndarray) -> None:
        """Cache `tile` (made read-only), dropping the least recently used beyond max_bytes."""
        if tile.nbytes > self.max_bytes:
            return
        tile.flags.writeable = False
        with self._lock:
            old = self._tiles.pop(key, None)
            self.nbytes += tile.nbytes - (0 if old is None else old.nbytes)
            self._tiles[key] = tile
            while self.nbytes > self.max_bytes:
                self.nbytes -= self._tiles.popitem(last=False)[1].nbytes


class TiffJpegSlide:
    """A JPEG-tiled TIFF slide read tile by tile: the OpenSlide subset pathfm uses; thread-safe."""

    def __init__(
        self,
        path: str,
        levels: list[_Level],
        downsamples: tuple[float, ...],
        properties: Mapping[str, str],
    ):
        """Wrap already validated levels; use TiffJpegSlide.open(path) to make one."""
        self.path = str(path)
        self._levels = levels
        self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._closer = weakref.finalize(self, os.close, self._fd)  # close() or GC closes it
        self._cache: TileCache | None = None
        self.level_count = len(levels)
        self.level_dimensions = tuple((lv.width, lv.height) for lv in levels)
        self.level_downsamples = tuple(float(d) for d in downsamples)
        self.dimensions = self.level_dimensions[0]
        self.properties = dict(properties)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> TiffJpegSlide | None:
        """A reader for `path` if OpenSlide sees it as plain JPEG-tiled TIFF levels, else None."""
        path = os.fspath(path)
        if not _is_tiff(path):
            return None
        try:
            with tifffile.TiffFile(path) as tif:
                levels = [_level_of(p) for p in tif.pages if p.is_tiled]
        except Exception:  # whatever tifffile cannot parse: leave it (and its errors) to OpenSlide
            return None
        try:
            with openslide.OpenSlide(path) as slide:
                vendor = slide.properties.get(openslide.PROPERTY_NAME_VENDOR)
                dims, downsamples = slide.level_dimensions, slide.level_downsamples
                properties = dict(slide.properties)
        except (openslide.OpenSlideError, OSError, ValueError):
            return None
        if vendor not in VENDORS or not levels or any(lv is None for lv in levels):
            return None
        levels.sort(key=lambda lv: (-lv.width, -lv.height))
        if tuple((lv.width, lv.height) for lv in levels) != tuple(dims):
            return None  # OpenSlide's levels are not exactly the tiled pages: not ours to read
        return cls(path, levels, downsamples, properties)

    def __repr__(self) -> str:
        """Class and path."""
        return f"TiffJpegSlide({self.path!r})"

    def __enter__(self) -> TiffJpegSlide:
        """Context manager: returns self."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Context manager: closes the file."""
        self.close()

    def close(self) -> None:
        """Close the file; later reads raise OSError."""
        self._fd = -1
        self._closer()

    def set_cache(self, cache: TileCache | None) -> None:
        """Keep decoded tiles in `cache` (shared LRU) from now on; None disables caching."""
        self._cache = cache

    def _tile(
        self, level: int, col: int, row: int, scale: int = 1, rows: int | None = None
    ) -> np.ndarray | None:
        """Tile decoded at 1/scale (maybe a per-thread buffer: use before the next call), at least
        its first `rows` rows (all by default; see `decode_tile`), None if it has no data. A cached
        tile serves every read it has the rows for; a read needing more replaces it."""
        lv = self._levels[level]
        index = row * lv.across + col
        key = (self.path, level, index, scale)
        cache = self._cache
        if cache is not None and (tile := cache.get(key)) is not None:
            if tile.shape[0] >= (lv.tile_h // scale if rows is None else rows):
                return tile
        offset, count = int(lv.offsets[index]), int(lv.counts[index])
        if count == 0:
            return None
        data = os.pread(self._fd, count, offset)
        if len(data) != count:
            raise OSError(f"{self.path}: tile {index} truncated ({len(data)} of {count} bytes)")
        if data.rfind(b"\xff\xd9", max(0, count - 64)) < 0:  # libjpeg would warn, OpenSlide fail
            raise ValueError(f"{self.path}: JPEG tile {index} has no end-of-image marker")
        shape = (lv.tile_h // scale, lv.tile_w // scale, 3)
        buf = None if cache is not None else _tile_buffer(*shape[:2])
        try:
            stream = jpeg_stream(data, lv.tables, lv.colorspace)
            tile = decode_tile(stream, lv.tile_w, lv.tile_h, scale, out=buf, rows=rows)
        except Exception as e:  # simplejpeg's ValueError, or a frame larger than the buffer
            raise ValueError(f"{self.path}: cannot decode JPEG tile {index}: {e}") from e
        if tile.shape[1:] != shape[1:] or not (rows or shape[0]) <= tile.shape[0] <= shape[0]:
            raise ValueError(f"{self.path}: JPEG tile {index} decodes to shape {tile.shape}")
        if cache is not None:
            cache.put(key, tile)
        return tile

    def tiles_covering(self, level: int, x: int, y: int, w: int, h: int) -> list[int]:
        """Row-major indices of the tiles holding level pixels [x, x+w) x [y, y+h)."""
        lv = self._levels[level]
        x_lo, x_hi = max(x, 0), min(x + w, lv.width)
        y_lo, y_hi = max(y, 0), min(y + h, lv.height)
        if x_lo >= x_hi or y_lo >= y_hi:
            return []
        rows = range(y_lo // lv.tile_h, (y_hi - 1) // lv.tile_h + 1)
        cols = range(x_lo // lv.tile_w, (x_hi - 1) // lv.tile_w + 1)
        return [r * lv.across + c for r in rows for c in cols]

    def tile_size(self, level: int) -> tuple[int, int]:
        """(width, height) of the level's tiles."""
        lv = self._levels[level]
        return lv.tile_w, lv.tile_h

    def tile_stream(self, level: int, index: int) -> bytes:
        """One tile as a self-contained JPEG (`jpeg_stream`), undecoded (for decode benchmarks)."""
        lv = self._levels[level]
        data = os.pread(self._fd, int(lv.counts[index]), int(lv.offsets[index]))
        return jpeg_stream(data, lv.tables, lv.colorspace)

    def _window(self, level: int, x: int, y: int, w: int, h: int, scale: int = 1) -> np.ndarray:
        """uint8 [h, w, 3] of pixels [x, x+w) x [y, y+h) of the level decoded at 1/scale, white
        outside the image."""
        lv = self._levels[level]
        tw, th = lv.tile_w // scale, lv.tile_h // scale
        out = np.empty((h, w, 3), np.uint8)  # every pixel is written once below
        x_lo, x_hi = max(x, 0), min(x + w, -(-lv.width // scale))
        y_lo, y_hi = max(y, 0), min(y + h, -(-lv.height // scale))
        if (x_lo, y_lo, x_hi, y_hi) != (x, y, x + w, y + h):  # partly or wholly outside
            out.fill(255)
        if x_lo >= x_hi or y_lo >= y_hi:
            return out
        for row in range(y_lo // th, (y_hi - 1) // th + 1):
            ty = row * th
            a, b = max(y_lo, ty), min(y_hi, ty + th)
            for col in range(x_lo // tw, (x_hi - 1) // tw + 1):
                tile = self._tile(level, col, row, scale, rows=b - ty)
                tx = col * tw
                c, d = max(x_lo, tx), min(x_hi, tx + tw)
                if tile is None:  # a tile without data (sparse TIFF) reads as white
                    out[a - y : b - y, c - x : d - x] = 255
                else:
                    out[a - y : b - y, c - x : d - x] = tile[a - ty : b - ty, c - tx : d - tx]
        return out

    def read_rgb(
        self, xy: tuple[int, int], level: int, wh: tuple[int, int], scale: int = 1
    ) -> np.ndarray:
        """uint8 [h, w, 3] at `level`, top-left `xy` in level-0 px, white outside the slide.

        With `scale` s in (2, 4, 8) the level is decoded at 1/s in the DCT domain and (w, h) count
        pixels of that scaled level; the origin is rounded to the nearest scaled pixel (callers
        such as `pathfm.data.slides.patch_window` align it to whole ones)."""
        w, h = int(wh[0]), int(wh[1])
        if w < 0 or h < 0:
            raise ValueError(f"negative region size {w}x{h}")
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.path}: level {level} not in [0, {self.level_count})")
        if scale not in DECODE_SCALES:
            raise ValueError(f"decode scale {scale} not in {DECODE_SCALES}")
        if w == 0 or h == 0:
            return np.full((h, w, 3), 255, np.uint8)
        ds = self.level_downsamples[level]
        if scale > 1:
            step = ds * scale  # level-0 px per decoded pixel
            sx, sy = round(int(xy[0]) / step), round(int(xy[1]) / step)
            return self._window(level, sx, sy, w, h, scale)
        ox, lx, wx = _axis(int(xy[0]), ds)
        oy, ly, wy = _axis(int(xy[1]), ds)
        if ox == 0 and oy == 0:
            return _bilinear(self._window(level, lx, ly, w + (wx > 0), h + (wy > 0)), wx, wy)
        out = np.full((h, w, 3), 255, np.uint8)
        if w > ox and h > oy:
            src = self._window(level, lx, ly, w - ox + (wx > 0), h - oy + (wy > 0))
            out[oy:, ox:] = _bilinear(src, wx, wy)
        return out

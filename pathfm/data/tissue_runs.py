"""Tissue masks as row runs: a lossless, compact form that draws tissue pixels and measures patch
tissue fractions exactly as the full bool mask does.

A mask bool [h, w] becomes its runs of consecutive True pixels in row-major order, each inside one
row: `start` int32 [R] (flat index row * w + col of the first pixel), `length` int32 [R] and
`cum` int32 [R] (pixels in runs 0..j, inclusive). A blob-shaped tissue mask of a 40x slide at
8 um/px (2500 x 3125 px) has a few thousand runs (tens of KB) where its bitmap takes 977 KB.
"""

from __future__ import annotations

import math

import numpy as np


def mask_to_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, length, cum) int32 [R] of the True runs of a bool [h, w] mask (h * w < 2**31)."""
    h, w = mask.shape
    if h * (w + 1) >= 2**31:
        raise ValueError(f"a {h}x{w} tissue mask is too large for int32 runs; raise mask_mpp")
    padded = np.zeros((h, w + 1), bool)  # a False column ends every row: runs stay in their row
    padded[:, :w] = mask
    flat = padded.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # first pixel after each change
    if flat[0]:
        change = np.concatenate(([0], change))
    begin, end = change[0::2], change[1::2]  # alternate: False->True, then True->False
    rows = begin // (w + 1)
    start = (begin - rows).astype(np.int32)  # row * (w + 1) + col -> row * w + col
    length = (end - begin).astype(np.int32)
    return start, length, np.cumsum(length, dtype=np.int32)


def runs_to_mask(start: np.ndarray, length: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The bool [h, w] mask of runs (inverse of mask_to_runs)."""
    flat = np.zeros(shape[0] * shape[1] + 1, np.int8)
    np.add.at(flat, start.astype(np.int64), 1)
    np.add.at(flat, start.astype(np.int64) + length, -1)
    return np.cumsum(flat[:-1], dtype=np.int64).reshape(shape) > 0


def pixel_of_ordinal(start: np.ndarray, length: np.ndarray, cum: np.ndarray, k: int) -> int:
    """Flat index of the k-th True pixel in row-major order (what flatnonzero(mask)[k] gives)."""
    j = int(cum.searchsorted(k, side="right"))
    return int(start[j]) + k - (int(cum[j]) - int(length[j]))


def _clipped(a0: float, a1: float, n: int) -> tuple[int, int]:
    """Cells [lo, hi) of a length-n axis that overlap [a0, a1)."""
    return max(0, math.floor(a0)), min(n, math.ceil(a1))


def box_fraction(
    start: np.ndarray,
    length: np.ndarray,
    mask_shape: tuple[int, int],
    size: tuple[int, int],
    x0: float,
    y0: float,
    extent: float,
) -> float:
    """Area fraction of the level-0 square [x0, x0+extent)^2 that the mask calls tissue.

    `size` is the slide's level-0 (width, height); mask pixels cover width/w x height/h level-0
    px. Equals tissue.mask_fraction on the full mask (up to float rounding)."""
    mask_h, mask_w = mask_shape
    sx, sy = size[0] / mask_w, size[1] / mask_h
    a0, a1 = x0 / sx, (x0 + extent) / sx
    b0, b1 = y0 / sy, (y0 + extent) / sy
    xlo, xhi = _clipped(a0, a1, mask_w)
    ylo, yhi = _clipped(b0, b1, mask_h)
    if xlo >= xhi or ylo >= yhi:
        return 0.0
    p0, p1 = start.searchsorted((ylo * mask_w, yhi * mask_w))  # the runs of rows ylo..yhi-1
    if p0 == p1:
        return 0.0
    rows, cols = np.divmod(start[p0:p1], mask_w)
    inside = np.minimum(cols + length[p0:p1], a1) - np.maximum(cols, a0)  # run overlap in x
    row_weight = np.minimum(rows + 1.0, b1) - np.maximum(rows, b0)  # row overlap in y
    covered = np.dot(np.maximum(inside, 0.0), row_weight)
    return float(covered / ((extent / sx) * (extent / sy)))

"""SlideInfo (slide geometry + tissue mask) and its on-disk cache keyed by slide and settings."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import zipfile

import numpy as np

from pathfm.atomic import atomic_path
from pathfm.data import tissue as tissue_lib

log = logging.getLogger(__name__)

# Bump when the mask or the stored fields change meaning (e.g. a new thumbnail reader).
FORMAT_VERSION = 1
_LOAD_ERRORS = (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile)


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


def cache_key(path: str, mpp_override: float | None, tissue: tissue_lib.TissueConfig) -> str:
    """JSON of what determines a slide's cached entry: file identity, mpp override, settings."""
    stat = os.stat(path)
    return json.dumps(
        {
            "version": FORMAT_VERSION,
            "path": os.path.abspath(path),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "mpp_override": None if mpp_override is None else float(mpp_override),
            "tissue": tissue.mask_key(),
        },
        sort_keys=True,
    )


def entry_path(cache_dir: str, key: str) -> str:
    """The file of the entry for `key` in `cache_dir`."""
    return os.path.join(cache_dir, hashlib.sha256(key.encode()).hexdigest()[:32] + ".npz")


def load(cache_dir: str, key: str, path: str) -> SlideInfo | None:
    """The cached SlideInfo of `path` under `key`, or None (missing or unreadable entry)."""
    file = entry_path(cache_dir, key)
    if not os.path.exists(file):
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            if str(z["key"]) != key:
                raise ValueError("key mismatch (hash collision or foreign file)")
            h, w = (int(v) for v in z["mask_shape"])
            bits = z["mask_bits"]
            if bits.size != -(-h * w // 8):
                raise ValueError(f"{bits.size} mask bytes for a {h}x{w} mask")
            mask = np.unpackbits(bits, count=h * w).reshape(h, w).astype(bool)
            width, height = (int(v) for v in z["size"])
            level_mpps = tuple(float(m) for m in z["level_mpps"])
            mpp, mask_mpp = float(z["mpp"]), float(z["mask_mpp"])
            return SlideInfo(path, mpp, width, height, level_mpps, mask, mask_mpp)
    except _LOAD_ERRORS as e:
        log.debug("Ignoring unreadable mask cache entry %s: %s: %s", file, type(e).__name__, e)
        return None


def store(cache_dir: str, key: str, info: SlideInfo) -> None:
    """Write an entry atomically (temp file + os.replace); failures are logged, not raised."""
    mask = np.asarray(info.mask, dtype=bool)
    arrays = {
        "key": np.array(key),
        "mask_bits": np.packbits(mask, axis=None),
        "mask_shape": np.array(mask.shape, np.int64),
        "mask_mpp": np.float64(info.mask_mpp),
        "mpp": np.float64(info.mpp),
        "size": np.array((info.width, info.height), np.int64),
        "level_mpps": np.array(info.level_mpps, np.float64),
    }
    try:
        os.makedirs(cache_dir, exist_ok=True)
        with atomic_path(entry_path(cache_dir, key)) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
    except OSError as e:
        log.warning("Could not write the mask cache entry in %s: %s", cache_dir, e)

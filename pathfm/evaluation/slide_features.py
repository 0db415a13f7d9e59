"""Whole-slide features for slide-level MIL: frozen features of every tissue tile of each slide.

Campanella et al.'s protocol: non-overlapping `tile_size` px tiles at `mpp` um/px (224 px at 0.5)
over the tissue grid of each slide, read with the training reader (`read_patch`, `SlideHandles`).

On disk (`extract_slide_features`): one `<out_dir>/<name>.npz` per slide with `cls` [n, D] and
`mean_patch` [n, D] float32, `coords` [n, 2] int64 (level-0 top-left x, y of each tile), `mpp`,
`tile_size`, `slide` (absolute path), `step` and `which` (the checkpoint), plus `summary.json` of
the last run. `<name>` is the slide's file stem, or `<stem>-<8 hex of sha1(absolute path)>` when
another slide of the run (or an existing file in `out_dir` from another slide) has the same stem.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pathfm.atomic import atomic_path, write_atomic
from pathfm.data import sampler
from pathfm.data import slides as slides_lib
from pathfm.data import tissue as tissue_lib
from pathfm.data.mask_cache import SlideInfo
from pathfm.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
ARRAYS = ("cls", "mean_patch", "coords")

Extractor = Callable[[np.ndarray], dict[str, np.ndarray]]  # uint8 [B, H, W, 3] -> {'cls', ...}
SlideSource = str | os.PathLike | slides_lib.SlideRecord


def _record(slide: SlideSource) -> slides_lib.SlideRecord:
    """A SlideRecord of a path (records pass through, keeping their mpp override)."""
    return (
        slide if isinstance(slide, slides_lib.SlideRecord) else slides_lib.SlideRecord(str(slide))
    )


def slide_info(
    slide: SlideSource,
    mpp: float,
    tissue: tissue_lib.TissueConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> SlideInfo:
    """Geometry and thumbnail tissue mask of a slide, as SlideIndex builds them (mask cache in
    `cache_dir`); DataError naming the reason when the slide is unusable or coarser than `mpp`."""
    record = _record(slide)
    tissue = tissue or tissue_lib.TissueConfig()
    cache = None if cache_dir is None else str(cache_dir)
    # SlideIndex.build's per-slide step; its reason strings are what the summary reports.
    result = sampler.inspect_slide(record, tissue, mpp, cache)
    if isinstance(result, str):
        raise DataError(f"Slide {record.path} is unusable: {result}.")
    return result


def read_extent(level_mpps: Sequence[float], tile_size: int, mpp: float) -> float:
    """Level-0 px that `read_patch` reads for a tile_size px tile at `mpp` (whole level px)."""
    level = slides_lib.choose_level(level_mpps, mpp)
    read = max(1, round(tile_size * mpp / level_mpps[level]))
    return read * level_mpps[level] / level_mpps[0]


def tile_centers(coords: np.ndarray, info: SlideInfo, tile_size: int, mpp: float) -> np.ndarray:
    """float [n, 2] level-0 centres whose `read_patch` window starts exactly at `coords` [n, 2]."""
    return np.asarray(coords, np.float64) + read_extent(info.level_mpps, tile_size, mpp) / 2


def tissue_grid(
    slide: SlideInfo | SlideSource,
    mpp: float = 0.5,
    tile_size: int = 224,
    min_tissue_fraction: float | None = None,
    tissue: tissue_lib.TissueConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """int64 [n, 2] level-0 (x, y) top-lefts of the slide's non-overlapping tissue tiles.

    Tile i, j sits at (round(i * s), round(j * s)), s = tile_size * mpp / base_mpp level-0 px, is
    kept when it lies within the slide and the thumbnail mask calls at least `min_tissue_fraction`
    (default: `tissue.min_tissue_fraction`, eva's 0.35) of its s x s footprint tissue. Row-major.
    """
    tissue = tissue or tissue_lib.TissueConfig()
    threshold = tissue.min_tissue_fraction if min_tissue_fraction is None else min_tissue_fraction
    if tile_size < 1 or not (math.isfinite(mpp) and mpp > 0) or not 0 <= threshold <= 1:
        raise ConfigError(
            f"need tile_size >= 1, mpp > 0 and min_tissue_fraction in [0, 1]; got tile_size="
            f"{tile_size}, mpp={mpp}, min_tissue_fraction={threshold}"
        )
    info = slide if isinstance(slide, SlideInfo) else slide_info(slide, mpp, tissue, cache_dir)
    stride = tile_size * mpp / info.mpp
    footprint = max(stride, read_extent(info.level_mpps, tile_size, mpp))  # must fit the slide

    def starts(length: int) -> np.ndarray:
        xs = np.rint(np.arange(math.ceil(length / stride) + 1) * stride).astype(np.int64)
        return xs[xs + footprint <= length]

    kept = [
        (x, y)
        for y in starts(info.height)
        for x in starts(info.width)
        if tissue_lib.mask_fraction(info.mask, info.width, info.height, x, y, stride) >= threshold
    ]
    return np.array(kept, np.int64).reshape(-1, 2)


def _read_batches(
    handles: slides_lib.SlideHandles,
    info: SlideInfo,
    coords: np.ndarray,
    tile_size: int,
    mpp: float,
    batch_size: int,
    num_threads: int,
) -> Iterator[np.ndarray]:
    """uint8 [<=batch_size, tile_size, tile_size, 3] tiles in `coords` order; the next batch is
    read by `num_threads` threads while the caller works on the current one."""
    slide = handles.get(info.path)
    centers = tile_centers(coords, info, tile_size, mpp)
    read = lambda c: slides_lib.read_patch(slide, tuple(c), tile_size, mpp, info.mpp)
    chunks = [centers[i : i + batch_size] for i in range(0, len(centers), batch_size)]
    with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
        pending = [pool.submit(read, c) for c in chunks[0]] if chunks else []
        for k in range(len(chunks)):
            try:
                images = np.stack([f.result() for f in pending])
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
            pending = [pool.submit(read, c) for c in chunks[k + 1]] if k + 1 < len(chunks) else []
            yield images


def _extract(
    extractor: Extractor, batches: Iterator[np.ndarray], batch_size: int, total: int, desc: str
) -> dict[str, np.ndarray]:
    """{'cls', 'mean_patch'}: float32 [total, D] features of the tile batches, concatenated.

    A short last batch is padded to `batch_size` (and cut back), so a jitted extractor compiles
    one shape for the whole run instead of one per slide's remainder."""
    parts: dict[str, list[np.ndarray]] = {"cls": [], "mean_patch": []}
    with tqdm(
        total=total, unit="tile", desc=desc, leave=False, disable=not sys.stderr.isatty()
    ) as bar:
        for images in batches:
            n = len(images)
            if n < batch_size:
                images = np.concatenate([images, np.repeat(images[-1:], batch_size - n, axis=0)])
            out = extractor(images)
            for key, values in parts.items():
                values.append(np.asarray(out[key][:n], np.float32))
            bar.update(n)
    return {key: np.concatenate(values) for key, values in parts.items()}


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez, atomically: never a partial `path`."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _stored_slide(file: Path) -> str | None:
    """The `slide` path stored in a feature file, None if the file is missing or unreadable."""
    try:
        with np.load(file, allow_pickle=False) as z:
            return str(z["slide"])
    except (OSError, ValueError, KeyError, EOFError):
        return None


def output_names(paths: Sequence[str], out_dir: str | os.PathLike) -> list[str]:
    """File names (no suffix) for absolute slide `paths`: the stem, or `<stem>-<sha1[:8]>` when
    another path has the same stem (case-insensitively) or `<stem>.npz` holds another slide."""
    stems = [Path(p).stem for p in paths]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem.casefold()] = counts.get(stem.casefold(), 0) + 1
    names = []
    for path, stem in zip(paths, stems, strict=True):
        hashed = f"{stem}-{hashlib.sha1(path.encode()).hexdigest()[:8]}"
        plain = Path(out_dir) / f"{stem}.npz"
        taken = plain.exists() and _stored_slide(plain) != path
        resumed = (Path(out_dir) / f"{hashed}.npz").exists()  # a past run had a collision
        names.append(hashed if counts[stem.casefold()] > 1 or taken or resumed else stem)
    return names


@dataclasses.dataclass(frozen=True)
class _Settings:
    """What a feature file was computed with; a resumed run must match it."""

    mpp: float
    tile_size: int
    step: int
    which: str

    def check(self, file: Path) -> None:
        """DataError when an existing feature file was computed with other settings."""
        try:
            with np.load(file, allow_pickle=False) as z:
                found = _Settings(
                    float(z["mpp"]), int(z["tile_size"]), int(z["step"]), str(z["which"])
                )
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise DataError(
                f"{file} is not a slide feature file ({type(e).__name__}: {e}); move it away."
            ) from e
        if found != self:
            raise DataError(
                f"{file} holds features computed with {found}, not {self}; use another out_dir "
                "or delete the old files."
            )


def extract_slide_features(
    extractor: Extractor,
    slides: str | os.PathLike | Sequence[SlideSource],
    out_dir: str | os.PathLike,
    mpp: float = 0.5,
    tile_size: int = 224,
    batch_size: int = 256,
    min_tissue_fraction: float | None = None,
    tissue: tissue_lib.TissueConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    num_threads: int = 4,
) -> dict:
    """Features of every tissue tile of every slide, one `<out_dir>/<name>.npz` per slide.

    `slides`: paths or SlideRecords, or a directory / glob / CSV manifest (`find_slides`).
    Resumable: a slide whose file exists is skipped. A slide that cannot be opened, has no tissue
    tile or fails to read is skipped and listed; nothing half-written is left. Returns the summary
    also written to `<out_dir>/summary.json`: counts, `written` / `existing` ({slide, file,
    n_tiles}) and `failed` ({slide, reason}).
    """
    if isinstance(slides, str | os.PathLike):
        slides = slides_lib.find_slides(str(slides))
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    tissue = tissue or tissue_lib.TissueConfig()
    threshold = tissue.min_tissue_fraction if min_tissue_fraction is None else min_tissue_fraction
    records, seen = [], set()
    for slide in slides:
        record = _record(slide)
        record = dataclasses.replace(record, path=os.path.abspath(record.path))
        if record.path not in seen:
            seen.add(record.path)
            records.append(record)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = output_names([r.path for r in records], out_dir)
    settings = _Settings(
        float(mpp),
        int(tile_size),
        int(getattr(extractor, "step", -1)),
        str(getattr(extractor, "which", "")),
    )
    existing = [out_dir / f"{name}.npz" for name in names]
    for file in existing:
        if file.exists():
            settings.check(file)  # before any work: a mismatch is the caller's mistake
    summary = {"written": [], "existing": [], "failed": []}
    handles = slides_lib.SlideHandles(max_open=4)
    quiet = not sys.stderr.isatty()  # a redirected log gets one line per slide, not bars
    slides = tqdm(existing, unit="slide", desc="slides", disable=quiet)
    for i, (record, file) in enumerate(zip(records, slides, strict=True), 1):
        if quiet:
            log.info("slide %d/%d: %s", i, len(records), record.path)
        if file.exists():
            log.info("Skipping %s: its features are in %s", record.path, file)
            summary["existing"].append({"slide": record.path, "file": file.name})
            continue
        try:
            info = slide_info(record, mpp, tissue, cache_dir)
            coords = tissue_grid(info, mpp, tile_size, threshold)
            if not len(coords):
                raise DataError(f"no tile with a tissue fraction >= {threshold:g}")
            batches = _read_batches(handles, info, coords, tile_size, mpp, batch_size, num_threads)
            features = _extract(extractor, batches, batch_size, len(coords), file.stem)
        except (DataError, *sampler.READ_ERRORS) as e:
            reason = str(e) if isinstance(e, DataError) else f"{type(e).__name__}: {e}"
            log.warning("Skipping slide %s: %s", record.path, reason)
            summary["failed"].append({"slide": record.path, "reason": reason})
            continue
        finally:
            handles.discard(record.path)
        meta = {
            "coords": coords,
            "mpp": np.float64(mpp),
            "tile_size": np.int64(tile_size),
            "slide": np.array(record.path),
            "step": np.int64(settings.step),
            "which": np.array(settings.which),
        }
        _write_npz(file, {**features, **meta})
        summary["written"].append({"slide": record.path, "file": file.name, "n_tiles": len(coords)})
    handles.close()
    summary = {
        "out_dir": str(out_dir.resolve()),
        "mpp": float(mpp),
        "tile_size": int(tile_size),
        "min_tissue_fraction": float(threshold),
        "n_slides": len(records),
        **{f"n_{key}": len(summary[key]) for key in ("written", "existing", "failed")},
        "n_tiles_written": sum(item["n_tiles"] for item in summary["written"]),
        **summary,
    }
    write_atomic(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2))
    return summary


def load_slide_features(
    out_dir: str | os.PathLike, arrays: Sequence[str] = ARRAYS
) -> dict[str, dict[str, np.ndarray]]:
    """{absolute slide path: {name: array}} of every feature file in `out_dir` (sorted by file).

    For MIL: `bags = [f["cls"] for f in features.values()]` is what `mil.cross_validate` takes,
    with labels in the same order (look them up by slide path).
    """
    files = sorted(Path(out_dir).glob("*.npz"))
    if not files:
        raise DataError(
            f"{out_dir} holds no slide feature files (*.npz); run extract_slide_features"
        )
    features = {}
    for file in files:
        with np.load(file, allow_pickle=False) as z:
            features[str(z["slide"])] = {key: z[key] for key in arrays}
    return features

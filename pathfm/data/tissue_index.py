"""The slide index as columns: per slide its geometry, level um/px and tissue runs, in flat arrays
that every process memory-maps from one directory (or holds in memory for small sets).

A directory holds one raw little-endian file per column (`<name>.bin`, dtypes in `index.json`),
`rejected.json` (path, reason) and `index.json` (format version, key, counts). Pickling a loaded
index carries only its directory, so grain workers map the same pages instead of receiving copies.

Columns, S slides, H mask rows, R runs, L levels in all:
- width, height, mask_w, mask_h, tissue_pixels int64 [S]; mpp, mask_mpp float64 [S]
- row_offset, run_offset, level_offset, path_offset int64 [S + 1]: slide i's part of the flat
  columns below
- row_ptr, row_cum uint32 [H + S] and run_begin, run_end uint16 [R]: each slide's tissue runs
  (tissue_runs.Runs, relative to the slide)
- level_mpps float64 [L]; path_bytes uint8 (UTF-8 paths, relative to `root` when it is set)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Iterable, Sequence

import numpy as np

from pathfm.data import slides as slides_lib
from pathfm.data import tissue_runs
from pathfm.data.mask_cache import SlideInfo

FORMAT_VERSION = 2  # 2: runs by row (uint16 columns)
SLIDE_COLUMNS = {
    "width": np.int64,
    "height": np.int64,
    "mpp": np.float64,
    "mask_w": np.int64,
    "mask_h": np.int64,
    "mask_mpp": np.float64,
    "tissue_pixels": np.int64,
}
OFFSET_COLUMNS = ("row_offset", "run_offset", "level_offset", "path_offset")
FLAT_COLUMNS = {
    "row_ptr": np.uint32,
    "row_cum": np.uint32,
    "run_begin": np.uint16,
    "run_end": np.uint16,
    "level_mpps": np.float64,
    "path_bytes": np.uint8,
}
DTYPES = {**SLIDE_COLUMNS, **dict.fromkeys(OFFSET_COLUMNS, np.int64), **FLAT_COLUMNS}
INDEX_FILE = "index.json"
_TOL = slides_lib.LEVEL_TOLERANCE


@dataclasses.dataclass(frozen=True)
class SlideGeometry:
    """What the sampler needs of a slide besides its tissue runs."""

    width: int
    height: int
    mpp: float  # level 0
    level_mpps: tuple[float, ...]
    mask_shape: tuple[int, int]  # (h, w) of the tissue mask
    mask_mpp: float

    @classmethod
    def of(cls, info: SlideInfo) -> SlideGeometry:
        """The geometry of an inspected slide."""
        shape = tuple(int(n) for n in info.mask.shape)
        return cls(info.width, info.height, info.mpp, tuple(info.level_mpps), shape, info.mask_mpp)


def resolve(root: str, path: str) -> str:
    """A stored path made usable: joined to `root` when it is relative and a root is set."""
    return os.path.join(root, path) if root and not os.path.isabs(path) else path


def too_coarse(mpp: float, max_mpp: float | None) -> str:
    """Why a slide of level-0 `mpp` cannot serve training up to `max_mpp`, or ''."""
    if max_mpp is not None and mpp > max_mpp * (1 + slides_lib.LEVEL_TOLERANCE):
        return f"too coarse for training: {mpp:.4g} um/px at level 0 > {max_mpp:.4g} um/px"
    return ""


class TissueIndex:
    """Usable slides as columns, plus rejected (path, reason) pairs; see the module docstring.

    With `max_mpp`, slides coarser than it at level 0 are left out (and listed as rejected). The
    per-slide columns are held in memory (about 80 bytes a slide); runs, levels and paths stay
    mapped."""

    def __init__(
        self,
        columns: dict[str, np.ndarray],
        rejected: Sequence[tuple[str, str]] = (),
        root: str = "",
        directory: str | None = None,
        max_mpp: float | None = None,
    ):
        """Wrap columns; use from_slide_infos, IndexWriter or load to make one."""
        missing = sorted(set(DTYPES) - set(columns))
        if missing:
            raise ValueError(f"slide index lacks columns {missing}")
        self.columns = columns
        self.root = root
        self.directory = directory
        self.max_mpp = max_mpp
        rejected = [tuple(r) for r in rejected]
        for name in FLAT_COLUMNS:
            setattr(self, name, columns[name])
        bounds = {}
        for name in OFFSET_COLUMNS:
            offsets = columns[name]
            bounds[name[: -len("offset")] + "lo"] = offsets[:-1]
            bounds[name[: -len("offset")] + "hi"] = offsets[1:]
        slide_columns = {**{n: columns[n] for n in SLIDE_COLUMNS}, **bounds}
        mpp = np.asarray(columns["mpp"])
        keep = None if max_mpp is None else np.flatnonzero(~(mpp > max_mpp * (1 + _TOL)))
        self.too_coarse_mpps = np.zeros(0)  # level-0 um/px of the slides left out by max_mpp
        if keep is not None and len(keep) < len(mpp):
            dropped = np.setdiff1d(np.arange(len(mpp)), keep)
            self.too_coarse_mpps = mpp[dropped].astype(np.float64)
            rejected += [
                (self._path(columns, int(i)), too_coarse(mpp[i], max_mpp)) for i in dropped
            ]
            slide_columns = {n: np.asarray(v)[keep] for n, v in slide_columns.items()}
        for name, values in slide_columns.items():
            # Private copies (80 bytes a slide): a draw reads them for a random slide, and
            # mapped pages would fault in one by one; the runs (KBs a slide) stay mapped.
            setattr(self, name, np.array(values))
        self.rejected = rejected

    def _path(self, columns: dict[str, np.ndarray], row: int) -> str:
        lo, hi = int(columns["path_offset"][row]), int(columns["path_offset"][row + 1])
        return resolve(self.root, bytes(columns["path_bytes"][lo:hi]).decode())

    def __len__(self) -> int:
        """Number of usable slides."""
        return len(self.width)

    # ---- Per-slide views -----------------------------------------------------------------------
    def stored_path(self, i: int) -> str:
        """Slide i's path as stored (relative to root when the index was built with one)."""
        return bytes(self.path_bytes[int(self.path_lo[i]) : int(self.path_hi[i])]).decode()

    def path(self, i: int) -> str:
        """Slide i's path, joined to this index's root."""
        return resolve(self.root, self.stored_path(i))

    def paths(self) -> list[str]:
        """Every usable slide's path (materialises S strings: for reports, not the hot path)."""
        return [self.path(i) for i in range(len(self))]

    def levels(self, i: int) -> tuple[float, ...]:
        """um/px of slide i's pyramid levels, finest first."""
        return tuple(
            float(m) for m in self.level_mpps[int(self.level_lo[i]) : int(self.level_hi[i])]
        )

    def runs(self, i: int) -> tissue_runs.Runs:
        """Slide i's tissue runs (views of the mapped columns, no copy)."""
        rows = slice(int(self.row_lo[i]), int(self.row_hi[i]))
        runs = slice(int(self.run_lo[i]), int(self.run_hi[i]))
        return tissue_runs.Runs(
            self.row_ptr[rows], self.row_cum[rows], self.run_begin[runs], self.run_end[runs]
        )

    def mask(self, i: int) -> np.ndarray:
        """Slide i's tissue mask bool [mask_h, mask_w], rebuilt from its runs."""
        return tissue_runs.runs_to_mask(self.runs(i), (int(self.mask_h[i]), int(self.mask_w[i])))

    def tissue_areas(self) -> np.ndarray:
        """float64 [S]: um^2 of tissue per slide (tissue pixels x mask pixel area)."""
        return self.tissue_pixels * np.asarray(self.mask_mpp, np.float64) ** 2

    # ---- Construction, files, pickling ----------------------------------------------------------
    @classmethod
    def from_slide_infos(
        cls, slides: Iterable[SlideInfo], rejected: Sequence[tuple[str, str]] = ()
    ) -> TissueIndex:
        """An in-memory index of already inspected slides (paths kept as given)."""
        writer = IndexWriter()
        for info in slides:
            runs = tissue_runs.mask_to_runs(np.asarray(info.mask, bool))
            writer.add(info.path, SlideGeometry.of(info), runs)
        return writer.finish(rejected)

    def save(self, directory: str, key: str = "") -> None:
        """Write the index to `directory` atomically (a temporary sibling, then a rename)."""
        if self.max_mpp is not None:
            raise ValueError("save the full index, not one filtered by max_mpp")
        tmp = f"{directory}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for name, dtype in DTYPES.items():
            np.ascontiguousarray(self.columns[name], dtype).tofile(os.path.join(tmp, name + ".bin"))
        runs = int(self.columns["run_offset"][-1])
        write_meta(tmp, self.rejected, self.root, key, len(self), runs)
        publish(tmp, directory)

    @classmethod
    def load(
        cls, directory: str, root: str | None = None, max_mpp: float | None = None
    ) -> TissueIndex:
        """Memory-map an index directory; `root` (if given) replaces the root it was built with;
        `max_mpp` leaves out the slides too coarse to serve it."""
        meta = read_meta(directory)
        columns = {}
        for name, dtype in DTYPES.items():
            file = os.path.join(directory, name + ".bin")
            empty = os.path.getsize(file) == 0  # mmap refuses empty files
            columns[name] = np.empty(0, dtype) if empty else np.memmap(file, dtype, mode="r")
            columns[name] = np.asarray(columns[name])  # plain ndarray views: cheap indexing
        with open(os.path.join(directory, "rejected.json")) as f:
            rejected = json.load(f)
        root = meta.get("root", "") if root is None else root
        return cls(columns, rejected, root, os.path.abspath(directory), max_mpp)

    def __getstate__(self) -> dict:
        """A mapped index pickles as its directory (KB at any size); an in-memory one as columns."""
        if self.directory is not None:
            return {"directory": self.directory, "root": self.root, "max_mpp": self.max_mpp}
        return {
            "columns": self.columns,
            "rejected": self.rejected,
            "root": self.root,
            "max_mpp": self.max_mpp,
        }

    def __setstate__(self, state: dict) -> None:
        """Re-map the directory (the pages are shared with every other process) or re-wrap."""
        if "directory" in state:
            other = TissueIndex.load(state["directory"], state["root"], state["max_mpp"])
            self.__dict__.update(other.__dict__)
        else:
            self.__init__(
                state["columns"], state["rejected"], state["root"], None, state["max_mpp"]
            )


def read_meta(directory: str) -> dict:
    """index.json of an index directory; ValueError for another format version."""
    with open(os.path.join(directory, INDEX_FILE)) as f:
        meta = json.load(f)
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"slide index {directory} has format {meta.get('version')}, this pathfm reads "
            f"{FORMAT_VERSION}; delete it to rebuild"
        )
    return meta


def write_meta(
    directory: str, rejected: Sequence, root: str, key: str, slides: int, runs: int
) -> None:
    """rejected.json and index.json (format version, key, root, counts, dtypes) of an index."""
    meta = {
        "version": FORMAT_VERSION,
        "key": key,
        "root": root,
        "slides": slides,
        "runs": runs,
        "rejected": len(rejected),
        "dtypes": {name: np.dtype(d).str for name, d in DTYPES.items()},
    }
    for name, value in (("rejected.json", [list(r) for r in rejected]), (INDEX_FILE, meta)):
        with open(os.path.join(directory, name), "w") as f:
            json.dump(value, f)


def publish(tmp: str, directory: str) -> None:
    """Move a finished index from `tmp` to `directory` in one rename; if another process published
    it first, keep theirs (both were built from the same entries)."""
    try:
        os.rename(tmp, directory)
    except OSError:
        if not os.path.exists(os.path.join(directory, INDEX_FILE)):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


class IndexWriter:
    """Collects slides one by one (in memory, or streaming the flat columns to a directory)."""

    def __init__(self, directory: str | None = None):
        """`directory`: stream runs and levels to files there (for indexes larger than memory)."""
        self.directory = directory
        self._slide = {name: [] for name in SLIDE_COLUMNS}
        self._counts = {name: [0] for name in OFFSET_COLUMNS}
        self._flat: dict[str, list[np.ndarray]] = {name: [] for name in FLAT_COLUMNS}
        self._files = None
        if directory is not None:
            os.makedirs(directory, exist_ok=True)
            self._files = {n: open(os.path.join(directory, n + ".bin"), "wb") for n in FLAT_COLUMNS}

    def add(
        self,
        stored_path: str,
        geometry: SlideGeometry,
        runs: tissue_runs.Runs,
    ) -> None:
        """Append one usable slide: its stored path, geometry and tissue runs."""
        mask_h, mask_w = geometry.mask_shape
        values = {
            "width": geometry.width,
            "height": geometry.height,
            "mpp": geometry.mpp,
            "mask_w": mask_w,
            "mask_h": mask_h,
            "mask_mpp": geometry.mask_mpp,
            "tissue_pixels": int(runs.row_cum[-1]),
        }
        for name, value in values.items():
            self._slide[name].append(value)
        path_bytes = np.frombuffer(stored_path.encode(), np.uint8)
        flat = {
            "row_ptr": runs.row_ptr,
            "row_cum": runs.row_cum,
            "run_begin": runs.begin,
            "run_end": runs.end,
            "level_mpps": np.asarray(geometry.level_mpps),
            "path_bytes": path_bytes,
        }
        sizes = {
            "row_offset": len(runs.row_ptr),
            "run_offset": len(runs.begin),
            "level_offset": len(geometry.level_mpps),
            "path_offset": len(path_bytes),
        }
        for name, size in sizes.items():
            self._counts[name].append(self._counts[name][-1] + size)
        for name, array in flat.items():
            array = np.ascontiguousarray(array, FLAT_COLUMNS[name])
            if self._files is None:
                self._flat[name].append(array)
            else:
                self._files[name].write(array.tobytes())

    def _slide_columns(self) -> dict[str, np.ndarray]:
        columns = {n: np.asarray(v, SLIDE_COLUMNS[n]) for n, v in self._slide.items()}
        columns.update({n: np.asarray(v, np.int64) for n, v in self._counts.items()})
        return columns

    def finish(self, rejected: Sequence[tuple[str, str]] = (), root: str = "") -> TissueIndex:
        """The in-memory index of the added slides."""
        if self._files is not None:
            raise ValueError("a streaming IndexWriter completes its directory with write()")
        columns = self._slide_columns()
        for name, parts in self._flat.items():
            columns[name] = np.concatenate(parts) if parts else np.empty(0, FLAT_COLUMNS[name])
        return TissueIndex(columns, rejected, root)

    def write(
        self, rejected: Sequence[tuple[str, str]] = (), root: str = "", key: str = ""
    ) -> None:
        """Complete a streaming writer's directory (then publish it and TissueIndex.load it)."""
        if self._files is None:
            raise ValueError("an in-memory IndexWriter has no directory; use finish()")
        for f in self._files.values():
            f.close()
        columns = self._slide_columns()
        for name in (*SLIDE_COLUMNS, *OFFSET_COLUMNS):
            columns[name].tofile(os.path.join(self.directory, name + ".bin"))
        runs = int(columns["run_offset"][-1])
        write_meta(self.directory, rejected, root, key, len(columns["width"]), runs)

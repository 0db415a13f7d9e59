"""Preparing the slide index: sharded over processes and local cores, resumable per slide.

1. Each process takes records[process_index::process_count]. For every slide it owns without a
   valid entry, a worker (a process pool over local cores) opens the slide, computes its tissue
   mask and writes `entries/<hash>.entry` atomically: geometry, level um/px and tissue runs, or the
   reason the slide is unusable. The hash keys the file's identity (stored path, size, mtime), its
   mpp override and the tissue settings, so a killed job resumes without recomputing a finished
   slide and a changed file or setting is recomputed.
2. Each process lists its slides' entries in `work-<key>/shard-<p>-of-<P>.json`.
3. After a barrier, process 0 merges the shards in record order into `index-<key>/` (a
   TissueIndex directory, published with one rename); after a second barrier every process maps it.

`<key>` hashes the format version, tissue settings and the slide list (paths relative to the
root), so a change in any of them builds a new index (from the same entries where slides are
unchanged). Which resolutions a run trains at only filters the mapped index (`max_mpp` of
TissueIndex.load).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from pathfm.atomic import atomic_path, write_atomic
from pathfm.data import sampler as sampler_lib
from pathfm.data import tissue_runs
from pathfm.data.slides import SlideRecord
from pathfm.data.tissue import TissueConfig
from pathfm.data.tissue_index import (
    FORMAT_VERSION,
    INDEX_FILE,
    IndexWriter,
    SlideGeometry,
    TissueIndex,
    publish,
)
from pathfm.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ENTRY_VERSION = 2  # bump when an entry's fields change meaning (2: runs by row)
_RUN_DTYPES = ("<u4", "<u4", "<u2", "<u2")  # row_ptr, row_cum, begin, end
SLIDES_PER_WORKER = 8  # small jobs use fewer workers: starting one costs about a second
_LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError)  # json.JSONDecodeError is a ValueError
Inspect = Callable[[SlideRecord], "sampler_lib.SlideInfo | str"]
Barrier = Callable[[str], None]


def stored_path(path: str, root: str) -> str:
    """`path` as the index stores it: relative to `root` when it lies under it, else absolute."""
    path = os.path.abspath(path)
    if root:
        rel = os.path.relpath(path, os.path.abspath(root))
        if not rel.startswith(os.pardir + os.sep) and rel != os.pardir:
            return rel
    return path


def index_key(records: Sequence[SlideRecord], tissue: TissueConfig, root: str) -> str:
    """Hex digest of what the merged index depends on; the slide list is hashed, not statted.
    Paths under `root` enter relative to it, so the same data mounted elsewhere keeps its index."""
    digest = hashlib.sha256()
    for r in records:
        digest.update(f"{stored_path(r.path, root)}\t{r.mpp_override}\n".encode())
    key = {
        "version": FORMAT_VERSION,
        "entry_version": ENTRY_VERSION,
        "tissue": tissue.mask_key(),
        "slides": digest.hexdigest(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def entry_key(record: SlideRecord, tissue: TissueConfig, root: str) -> str:
    """JSON of what determines a slide's entry (OSError if the file cannot be statted)."""
    stat = os.stat(record.path)
    return json.dumps(
        {
            "version": ENTRY_VERSION,
            "path": stored_path(record.path, root),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "mpp_override": None if record.mpp_override is None else float(record.mpp_override),
            "tissue": tissue.mask_key(),
        },
        sort_keys=True,
    )


def entry_name(key: str) -> str:
    """The file name of the entry for `key`."""
    return hashlib.sha256(key.encode()).hexdigest()[:32] + ".entry"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One slide's prepared entry: `reason` is '' for a usable slide."""

    reason: str
    geometry: SlideGeometry | None = None
    runs: tissue_runs.Runs | None = None
    made_by: str = ""


def write_entry(file: str, key: str, result: sampler_lib.SlideInfo | str, made_by: str) -> None:
    """Write a slide's entry atomically (temporary file, then os.replace).

    Format: one line of JSON (key, made_by, reason or geometry and run count), then the runs'
    row_ptr and row_cum (uint32, h + 1 each) and begin and end (uint16, R each), little-endian:
    one read and no archive parsing when merging."""
    header = {"key": key, "made_by": made_by, "reason": ""}
    body = b""
    if isinstance(result, str):
        header["reason"] = result
    else:
        runs = tissue_runs.mask_to_runs(np.asarray(result.mask, bool))
        header["geometry"] = dataclasses.asdict(SlideGeometry.of(result))
        header["runs"] = len(runs.begin)
        body = b"".join(
            np.ascontiguousarray(a, dtype).tobytes()
            for a, dtype in zip(runs, _RUN_DTYPES, strict=True)
        )
    with atomic_path(file) as tmp, open(tmp, "wb") as f:  # shared by every user of the index
        f.write(json.dumps(header).encode() + b"\n")
        f.write(body)


def _body_size(header: dict) -> int:
    """Bytes of the runs an entry's header announces (0 for an unusable slide)."""
    if header.get("reason"):
        return 0
    rows = int(header["geometry"]["mask_shape"][0]) + 1
    return 8 * rows + 4 * int(header["runs"])


def read_entry(file: str, key: str) -> Entry | None:
    """The entry stored in `file` for `key`, or None if missing, foreign or damaged."""
    try:
        with open(file, "rb") as f:
            header = json.loads(f.readline())
            body = f.read()
        if header.get("key") != key:
            return None
        if header["reason"]:
            return Entry(header["reason"], made_by=header["made_by"])
        if len(body) != _body_size(header):
            raise ValueError(
                f"{len(body)} bytes of runs, the header announces {_body_size(header)}"
            )
        g = header["geometry"]
        geometry = SlideGeometry(
            int(g["width"]),
            int(g["height"]),
            float(g["mpp"]),
            tuple(float(m) for m in g["level_mpps"]),
            tuple(int(n) for n in g["mask_shape"]),
            float(g["mask_mpp"]),
        )
        rows, n = geometry.mask_shape[0] + 1, int(header["runs"])
        parts, at = [], 0
        for count, dtype in zip((rows, rows, n, n), _RUN_DTYPES, strict=True):
            parts.append(np.frombuffer(body, dtype, count, at))
            at += count * np.dtype(dtype).itemsize
        return Entry("", geometry, tissue_runs.Runs(*parts), header["made_by"])
    except FileNotFoundError:
        return None
    except _LOAD_ERRORS as e:
        log.warning("Ignoring damaged index entry %s (%s: %s)", file, type(e).__name__, e)
        return None


def entry_is_complete(file: str, key: str) -> bool:
    """Whether `file` holds a whole entry for `key`: its header, then exactly the runs it announces
    (reads one line, not the runs; merge still reads and checks everything)."""
    try:
        with open(file, "rb") as f:
            line = f.readline()
            header = json.loads(line)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as e:
        log.warning("Recomputing damaged index entry %s (%s: %s)", file, type(e).__name__, e)
        return False
    try:
        return header.get("key") == key and size == len(line) + _body_size(header)
    except (KeyError, TypeError, ValueError):
        return False


def inspect_with_cache(record: SlideRecord, tissue: TissueConfig, cache_dir: str | None):
    """Open and mask a slide (mask cache in `cache_dir`); no mpp limit (applied at merge)."""
    return sampler_lib.inspect_slide(record, tissue, None, cache_dir)


def _compute(task: tuple[SlideRecord, str, str, Inspect, str]) -> str:
    """Worker: inspect one slide and write its entry; returns the reason ('' if usable).

    A slide that could not be read (I/O or decode error, maybe passing, e.g. a network file
    system's hiccup) gets no entry, so the next run tries it again; other reasons (no tissue, no
    resolution) are final for this file and settings and are stored."""
    record, key, file, inspect, made_by = task
    result = inspect(record)
    if isinstance(result, str) and result.startswith(sampler_lib.UNREADABLE):
        return result
    write_entry(file, key, result, made_by)
    return result if isinstance(result, str) else ""


@dataclasses.dataclass
class PrepareReport:
    """What a prepare call did in this process."""

    directory: str  # the merged index
    owned: int = 0  # slides this process was responsible for
    computed: int = 0  # entries this process computed now
    reused: int = 0  # entries found from an earlier (possibly killed) run
    built: bool = False  # whether this call merged the index (False: it existed already)
    seconds: float = 0.0


def _pool_size(workers: int, jobs: int) -> int:
    """Worker processes for `jobs` slides: `workers` (0 = local cores), fewer for small jobs."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(workers or cores or 1, -(-jobs // SLIDES_PER_WORKER)))


def compute_entries(
    records: Sequence[SlideRecord],
    owned: Sequence[int],
    entries_dir: str,
    tissue: TissueConfig,
    root: str,
    inspect: Inspect,
    workers: int,
    made_by: str,
) -> tuple[list, int, int]:
    """Entries for records[i], i in `owned`: (shard rows [i, entry key or None, reason], computed,
    reused). A slide that cannot be statted gets no entry, only its reason."""
    rows, tasks = [], []
    for i in owned:
        record = records[i]
        if not os.path.isfile(record.path):
            rows.append([i, None, "file not found; check the path (or remove it from the list)"])
            continue
        try:
            key = entry_key(record, tissue, root)
        except OSError as e:
            reason = f"{sampler_lib.UNREADABLE} ({type(e).__name__}: {e}); check the file"
            rows.append([i, None, reason])
            continue
        file = os.path.join(entries_dir, entry_name(key))
        rows.append([i, key, ""])
        if not entry_is_complete(file, key):
            tasks.append((len(rows) - 1, (record, key, file, inspect, made_by)))
    pool_size = _pool_size(workers, len(tasks))
    log.info(
        "%s: %d slides owned, %d to compute on %d worker(s), %d prepared earlier",
        made_by, len(owned), len(tasks), pool_size, len(owned) - len(tasks),
    )  # fmt: skip
    work = [task for _, task in tasks]
    if pool_size <= 1:
        reasons = _drain(map(_compute, work), len(tasks))
    else:
        context = multiprocessing.get_context("spawn")  # no fork of a process that started JAX
        chunk = max(1, min(8, len(tasks) // (4 * pool_size)))  # fewer round trips
        try:
            with concurrent.futures.ProcessPoolExecutor(pool_size, mp_context=context) as pool:
                reasons = _drain(pool.map(_compute, work, chunksize=chunk), len(tasks))
        except concurrent.futures.process.BrokenProcessPool as e:
            raise DataError(
                f"A slide preparation worker died ({e}), e.g. a slide reader crashed or memory ran "
                "out; every slide it finished is kept. Rerun to resume; if it dies again, one of "
                "the slides still to prepare crashes its reader: check them with openslide-show-"
                "properties and remove the culprit from the list."
            ) from e
    for (row, _), reason in zip(tasks, reasons, strict=True):
        if reason.startswith(sampler_lib.UNREADABLE):  # no entry: retried by the next run
            rows[row] = [rows[row][0], None, reason]
    return rows, len(tasks), len(owned) - len(tasks)


def _drain(results, total: int) -> list[str]:
    """Collect per-slide results, logging progress about every 10%."""
    step, collected = max(1, total // 10), []
    for done, result in enumerate(results, start=1):
        collected.append(result)
        if done % step == 0 or done == total:
            log.info("prepared %d/%d slides", done, total)
    return collected


def merge(
    records: Sequence[SlideRecord],
    shards: Sequence[str],
    entries_dir: str,
    directory: str,
    key: str,
    root: str,
) -> None:
    """Merge the shard lists' entries, in record order, into the index `directory`."""
    rows = {}
    for shard in shards:
        if not os.path.exists(shard):
            raise DataError(
                f"The slide list {shard} of another process is missing: put data.index_dir on "
                "storage every process sees (a shared file system), then rerun"
            )
        with open(shard) as f:
            rows.update({int(i): (key, reason) for i, key, reason in json.load(f)})
    missing = [records[i].path for i in range(len(records)) if i not in rows]
    if missing:
        raise DataError(
            f"{len(missing)} slide(s) have no prepared entry (first: {missing[0]}): a process "
            "did not finish; rerun the preparation job"
        )
    tmp = f"{directory}.tmp-{os.getpid()}"
    writer = IndexWriter(tmp)
    rejected = []
    for i, record in enumerate(records):
        entry_id, reason = rows[i]
        entry = None
        if entry_id is not None:
            entry = read_entry(os.path.join(entries_dir, entry_name(entry_id)), entry_id)
            if entry is None:
                raise DataError(
                    f"The prepared entry of {record.path} is missing or damaged; rerun the "
                    "preparation job to recompute it"
                )
            reason = entry.reason
        if reason:
            rejected.append((record.path, reason))
            continue
        writer.add(stored_path(record.path, root), entry.geometry, entry.runs)
    writer.write(rejected, root=os.path.abspath(root) if root else "", key=key)
    publish(tmp, directory)


def shard_file(work_dir: str, process_index: int, process_count: int) -> str:
    """The list of process `process_index`'s slides and their entries."""
    return os.path.join(work_dir, f"shard-{process_index}-of-{process_count}.json")


def prepare_index(
    records: Sequence[SlideRecord],
    tissue: TissueConfig,
    index_dir: str,
    *,
    root: str = "",
    workers: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    barrier: Barrier = lambda name: None,
    mask_cache_dir: str | None = None,
    inspect: Inspect | None = None,
) -> PrepareReport:
    """Build (or find) the index of `records` in `index_dir`; every process must call it.

    `inspect` maps a record to its SlideInfo or a reason (default: open the slide, mask its
    thumbnail, using the mask cache); it must be picklable for the worker pool."""
    t0 = time.perf_counter()
    key = index_key(records, tissue, root)
    directory = os.path.join(index_dir, f"index-{key}")
    report = PrepareReport(directory)
    if os.path.exists(os.path.join(directory, INDEX_FILE)):
        report.seconds = time.perf_counter() - t0
        return report
    entries_dir = os.path.join(index_dir, "entries")
    work_dir = os.path.join(index_dir, f"work-{key}")
    os.makedirs(entries_dir, exist_ok=True)
    os.makedirs(work_dir, exist_ok=True)
    inspect = inspect or functools.partial(
        inspect_with_cache, tissue=tissue, cache_dir=mask_cache_dir
    )
    owned = range(process_index, len(records), process_count)
    made_by = f"process {process_index} of {process_count}"
    rows, report.computed, report.reused = compute_entries(
        records, owned, entries_dir, tissue, root, inspect, workers, made_by
    )
    report.owned = len(owned)
    shard = shard_file(work_dir, process_index, process_count)
    write_atomic(shard, json.dumps(rows))
    barrier(f"pathfm-index-entries-{key}")
    if process_index == 0:
        shards = [shard_file(work_dir, p, process_count) for p in range(process_count)]
        merge(records, shards, entries_dir, directory, key, root)
        report.built = True
    barrier(f"pathfm-index-merged-{key}")
    report.seconds = time.perf_counter() - t0
    return report


def check_usable(
    index: TissueIndex, n_records: int, on_bad_slide: str, max_bad_fraction: float
) -> None:
    """DataError when no slide is usable, a slide is bad under on_bad_slide='error', or more
    than max_bad_fraction of the slides are bad."""
    rejected = index.rejected
    reasons = sampler_lib.list_reasons(rejected)
    if rejected and on_bad_slide == "error":
        path, reason = rejected[0]
        raise DataError(f"Slide {path} is unusable: {reason}.")
    coarse = index.too_coarse_mpps
    if len(index) == 0 and len(coarse) and len(coarse) == len(rejected):
        values, counts = np.unique(np.round(coarse, 3), return_counts=True)
        listed = ", ".join(
            f"{v:g} um/px ({n} slide{'s' if n > 1 else ''})"
            for v, n in zip(values, counts, strict=True)
        )
        raise ConfigError(
            f"config.data.mpps: every requested resolution is finer than the slides scanned "
            f"(up to {index.max_mpp:g} um/px asked; the slides' level-0 resolutions: {listed}). "
            f"Use data.mpps of {values.min():g} um/px or coarser, or add slides scanned finer"
        )
    if len(index) == 0:
        raise DataError(
            f"None of the {n_records} slide(s) is usable; fix or replace them:\n" + reasons
        )
    if len(rejected) > max_bad_fraction * n_records:
        raise DataError(
            f"{len(rejected)} of {n_records} slides are unusable, more than "
            f"max_bad_fraction={max_bad_fraction:g} allows; fix or remove them (or raise "
            "max_bad_fraction):\n" + reasons
        )

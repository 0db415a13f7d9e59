"""How many grain worker processes read the input, and how many threads each: `data.num_workers`,
where "auto" means one per host core but one (the main process feeds the accelerator), capped by
the host memory the workers' bounded read-ahead needs; `data.read_threads`, where "auto" spreads
the host's cores over the reading processes (none in one-per-core workers: each reads in its own
loop, and its process is the read-ahead).

A DINO ViT-S/16 step on an H100 consumes about 3,000 samples/s and one process reads a few
hundred, so the paper configs need every core; the quick start and the tests read in the main
process (0).
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections

from pathfm.data.batch_ring import SLOTS

AUTO = "auto"
MAX_READ_THREADS = 4  # "auto" read threads in one process, at most
WORKER_BASE_BYTES = 400 << 20  # a worker's own footprint: Python, NumPy, OpenCV, open slides
MEMORY_SHARE = 0.5  # of the memory available when the run starts, at most, for the workers


@dataclasses.dataclass(frozen=True)
class WorkerChoice:
    """The resolved worker count and why (logged by the training loop)."""

    num_workers: int
    reason: str


@dataclasses.dataclass(frozen=True)
class ThreadChoice:
    """The resolved read threads per reading process and why (logged with the workers)."""

    threads: int
    reason: str


def host_cores() -> int:
    """Cores this process may run on (its CPU affinity: SLURM and containers restrict it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable, lowered by a cgroup v2 limit."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    limit = _read_int("/sys/fs/cgroup/memory.max")
    used = _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        room = max(limit - used, 0)
        available = room if available is None else min(available, room)
    return available


def batch_bytes(config: ml_collections.ConfigDict, process_count: int = 1) -> int:
    """Bytes of one host batch of uint8 crops (DINO/DINOv2 multi-crop or MAE's single view), or
    of the patches they are cut from (`crops.geometry_on_device`)."""
    cr, local_batch = config.crops, config.batch_size // max(process_count, 1)
    if cr.geometry_on_device:
        return local_batch * 3 * config.data.patch_size**2
    per_sample = 3 * cr.global_size**2 * (1 if config.method == "mae" else 2)
    if config.method != "mae":
        per_sample += 3 * cr.n_local * cr.local_size**2
    return local_batch * per_sample


def resolve_num_workers(
    config: ml_collections.ConfigDict,
    process_count: int = 1,
    cores: int | None = None,
    memory: int | None = None,
) -> WorkerChoice:
    """`data.num_workers` as a number: itself when it is one, else (AUTO) cores - 1 capped so
    that the workers' buffers (`data.prefetch_batches` batches read ahead and the `SLOTS` of their
    shared-memory ring (`pathfm.data.batch_ring`) each, their tile cache of
    `data.tile_cache_mb` and their own footprint) fit in MEMORY_SHARE of the available memory.
    `cores`/`memory` default to this host's."""
    setting = config.data.num_workers
    if setting != AUTO:
        return WorkerChoice(int(setting), f"data.num_workers={setting}")
    cores = host_cores() if cores is None else cores
    memory = available_memory() if memory is None else memory
    wanted = max(cores - 1, 0)
    per_worker = (config.data.prefetch_batches + SLOTS) * batch_bytes(config, process_count)
    per_worker += WORKER_BASE_BYTES + (config.data.tile_cache_mb << 20)
    if memory is None:
        return WorkerChoice(wanted, f"auto: {cores} cores, 1 for the main process")
    fit = int(memory * MEMORY_SHARE // per_worker)
    reason = (
        f"auto: {cores} cores, 1 for the main process; {memory / 2**30:.1f} GiB available, "
        f"{per_worker / 2**30:.2f} GiB per worker ({config.data.prefetch_batches} + {SLOTS} "
        f"batches of {batch_bytes(config, process_count) / 2**20:.0f} MiB, a "
        f"{config.data.tile_cache_mb} MiB tile cache)"
    )
    if fit < wanted:
        reason += f": memory allows {fit}"
    return WorkerChoice(min(wanted, fit), reason)


def resolve_read_threads(
    config: ml_collections.ConfigDict, num_workers: int, cores: int | None = None
) -> ThreadChoice:
    """`data.read_threads` as a number: itself when it is one, else (AUTO) the host's cores
    spread over the processes that read: the main process alone may use them all, workers share
    all cores but the main process's; 1 to MAX_READ_THREADS threads a process, at most
    `data.prefetch_batches`, and 0 in a worker with at most one core to itself. 0 threads: the
    worker reads each batch in its own loop (grain's synchronous path) while its finished batch
    waits in the queue to the main process. Thread hand-offs cost CPU under the GIL: on 2 cores,
    one worker made 6-8% more samples per CPU second with 0 threads than with 1, and 1 thread
    spent 1/1.5 the CPU per sample of 4 (docs/benchmarks.md). Slow storage (network file
    systems) hides its latency with more threads: set the number."""
    setting = config.data.read_threads
    if setting != AUTO:
        return ThreadChoice(int(setting), f"data.read_threads={setting}")
    cores = host_cores() if cores is None else cores
    if num_workers == 0:
        share, where = cores, f"{cores} cores, the main process reads"
    else:
        share = max(cores - 1, 1) // num_workers
        where = f"{cores} cores, 1 for the main process, {num_workers} worker(s)"
        if share <= 1:
            return ThreadChoice(0, f"auto: {where}, each reading in its own loop")
    threads = max(1, min(share, MAX_READ_THREADS, config.data.prefetch_batches))
    return ThreadChoice(threads, f"auto: {where}")

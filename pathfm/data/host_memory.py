"""glibc malloc settings for the processes that read the input, and for the training process
that copies the workers' batches out of shared memory: keep freed buffers for reuse.

Every sample allocates and frees blocks of 0.1-0.5 MB (decoded JPEG tiles, crops) and every batch
one of 16-270 MB. With glibc's defaults such blocks go back to the kernel when freed (blocks over
the mmap threshold are unmapped, the heap's free top is trimmed), so the next ones are faulted in
again page by page: 116 page faults a sample, a third of the pipeline's CPU time, on the 2-core
VM of docs/benchmarks.md. Raising both thresholds keeps freed blocks in the heap for the next
sample, as TCMalloc (which Cloud TPU's docs suggest preloading) does by design. Memory stays
bounded by the pipeline's own read-ahead (`data.prefetch_batches`).
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 1 << 30  # free heap top kept before trimming
# Blocks up to this size come from the heap: a whole batch if glibc allows it, else glibc's
# largest allowed threshold (32 MiB on 64-bit: half its 64 MiB per-thread heap).
MMAP_THRESHOLDS = (1 << 30, 32 << 20)


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds in this process (idempotent). False where the C
    library has no `mallopt` (not glibc, e.g. macOS), which then keeps its own policy."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if not any(mallopt(M_MMAP_THRESHOLD, size) == 1 for size in MMAP_THRESHOLDS):
        return False
    return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1

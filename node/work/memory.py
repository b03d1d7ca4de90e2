"""A worker process keeps its memory from one job to the next.

glibc hands a freed block larger than its mmap threshold (at most 32 MB: a volume, a
whole-volume mask) straight back to the operating system, and trims the top of its heap
when that is free; the next job faults the same amount in again. On a virtual machine
that reclaims the guest's free memory (free page reporting, balloon drivers: most cloud
machines, Firecracker) every such page is then a trip to the host: the analysis of a
300-slice series took 0.25-0.4 s longer in a fresh worker, or after one idle for 10 s,
than back to back (`bench/held_memory.py`).

So a worker process keeps what it allocates (no mmap for large blocks, no trimming) and,
at start, touches `workers.held_memory_mb` of heap once, so that the first series after
a start is not slowed either. Its resident memory is that, or the largest job's peak,
and stays there between jobs: flat, bounded by the largest series it analysed.
0 leaves glibc as it is. Other C libraries (musl) have no mallopt: nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

import numpy as np

log = logging.getLogger("trauma_node.worker")

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
KEEP_TOP = 2**31 - 1  # the largest trim threshold mallopt takes (an int): never trim
PAGE = 4096


def hold_memory(reserve_mb: int) -> bool:
    """Keep freed memory in this process and touch reserve_mb of it now. Call in the
    thread that runs the jobs (the main thread: other threads have their own arenas),
    before the first job. False where it cannot be done (not glibc) or reserve_mb is 0."""
    if reserve_mb <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        log.info("worker memory: this C library has no mallopt; memory is returned as usual")
        return False
    if not (mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, KEEP_TOP)):
        log.warning("worker memory: mallopt refused; memory is returned as usual")
        return False
    reserve = np.empty(reserve_mb * 2**20, dtype=np.uint8)
    reserve[::PAGE] = 1  # one write per page faults it in; freed, it stays in the heap
    del reserve
    log.info("worker memory: %d MB held for the analysis (workers.held_memory_mb)", reserve_mb)
    return True

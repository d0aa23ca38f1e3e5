"""A trial's worker process as torch needs it: glibc's malloc without the thresholds Dask's nanny fixes."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# glibc's mallopt parameters, and the ceilings its dynamic thresholds grow to on 64-bit machines.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_CEILING = 32 * 2**20


def restore_allocator() -> bool:
    """Undo, in a trial's worker process, what MALLOC_TRIM_THRESHOLD_ in its environment did to glibc's malloc;
    True when it did. Dask's nanny sets that variable for every worker it starts (`dask worker` included);
    it fixes glibc's mmap threshold at 128 KiB, so every activation and gradient buffer torch allocates is a
    fresh mmap, zeroed page by page, and the same training ran markedly slower in such a worker than in a plain
    process (docs/benchmarks.md, section 7 (d)). The thresholds are set to the ceilings glibc's dynamic
    ones grow to, and the variable leaves the environment, so that the processes a trial starts (DDP ranks,
    DataLoader workers) begin with glibc's dynamic thresholds. Nothing happens without the variable (nor a
    second time), or without glibc."""
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc: the variable meant nothing to it either
        return False
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_CEILING) and
                mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_CEILING))
    del os.environ["MALLOC_TRIM_THRESHOLD_"]
    return done

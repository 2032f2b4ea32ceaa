"""Keep freed tensor memory in the process instead of handing it back to the kernel.

torch's CPU allocator is glibc malloc. A block of 32 MB or more (the most glibc's dynamic
threshold reaches) is mmap-ed on every allocation and munmap-ed on every free, so every
tensor of that size, and an iteration makes dozens (a radon factor at K=10 is 40 MB),
comes back as fresh pages the kernel must fault in and zero: on a 2-core VM `a + b` on
8.5M floats takes 26 ms that way and 6 ms into memory already mapped. Raising the mmap
and trim thresholds makes glibc reuse those pages, iteration after iteration; the price
is that the process keeps its high-water memory. Linux/glibc only; KN_MALLOC_TUNE=0
(in the environment before the first program is built) turns it off.

The library applies it when the first `Program` is built (every sample, fit and view
builds one), so that a notebook or a script gets the speed `kn` gets: the gallery radon's
MP VI step at K=10 took 1.5x to 4x longer from Python than from `kn` before (4x on a
quiet machine, where page faults are most of the difference). mallopt settings are the
process's: calling this again is a no-op.
"""
from __future__ import annotations

import ctypes
import os
import sys

_done = False
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def tune_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = (1 << 31) - 1) -> bool:
    """Once per process; True if glibc took the settings."""
    global _done
    if _done or os.environ.get("KN_MALLOC_TUNE", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    _done = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                            trim_threshold))
    except (OSError, AttributeError):   # not glibc (musl, macOS)
        return False

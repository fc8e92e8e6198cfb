"""CPU heap settings: keep freed tensor memory for reuse instead of returning it.

A predictive-coding step allocates and frees a set of activation-sized tensors
(values, errors, feedback) at every inference tick. With glibc's default settings
a freed block of a few megabytes goes back to the operating system (``munmap``, or
trimming the heap's top), and the next tick's tensor of the same size faults in
fresh zeroed pages: on a CNN the page faults cost about as much as the errors'
arithmetic. PyTorch's CPU tuning guide gives the same reason for preloading
jemalloc or tcmalloc; this is the setting that needs neither.

:func:`retain_freed_memory` raises glibc's mmap threshold to its maximum and its
trim threshold far above a training step's working set, so freed blocks stay in
the heap and are reused. The process keeps its peak heap instead of shrinking
after each step (:func:`heap_info` reads glibc's counters, as the memory benchmark
does). It is process-wide, so ``pclab train``, the lab's commands and the
benchmarks call it once at start; a library user calls it the same way:

    >>> import pclab.allocator
    >>> pclab.allocator.retain_freed_memory()  # False off Linux/glibc
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 1 << 30


class HeapInfo(ctypes.Structure):
    """glibc's ``struct mallinfo2``: ``uordblks`` bytes in use inside the heap,
    ``fordblks`` free bytes kept there, ``hblkhd`` bytes in mmapped blocks."""

    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
        libc.gnu_get_libc_version  # musl and others lack it: their mallopt differs
        if hasattr(libc, "mallinfo2"):  # glibc 2.33+
            libc.mallinfo2.restype = HeapInfo
    except (OSError, AttributeError):
        return None
    return libc


def heap_info() -> HeapInfo | None:
    """The heap's counters now (glibc's ``mallinfo2``); ``None`` off glibc 2.33+."""
    libc = _glibc()
    return libc.mallinfo2() if libc is not None and hasattr(libc, "mallinfo2") else None


def retain_freed_memory(trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Keep freed blocks up to 32 MiB in the heap, and up to ``trim_threshold``
    bytes of free heap before any is returned to the system.

    Returns whether the settings took effect: ``False`` off Linux/glibc, where
    nothing is changed. Calling it again is harmless.
    """
    if not isinstance(trim_threshold, int) or trim_threshold <= 0 or trim_threshold >= 2 ** 31:
        raise ValueError(f"trim_threshold must be a positive int below 2**31 bytes; got {trim_threshold!r}")
    libc = _glibc()
    if libc is None:
        return False
    # mallopt returns 1 on success; setting the mmap threshold also turns off
    # glibc's dynamic adjustment of both thresholds.
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and \
        bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold))

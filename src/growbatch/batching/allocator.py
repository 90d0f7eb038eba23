"""CPU memory allocator tuning: keep freed memory in the process, so large batches reuse their pages.

glibc returns every block above its mmap threshold (at most 32 MB by default) to the kernel when
freed, so a loop that allocates a 39 MB batch per step (CIFAR-10 at 3,200 as float32) pays for
fresh, zeroed pages at every step. Raising the mmap and trim thresholds keeps those pages for the
next batch, as CUDA's caching allocator does on a GPU. ``TensorLoader`` on the CPU calls
:func:`keep_freed_memory` once; ``GROWBATCH_MALLOC_TUNING=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory", "THRESHOLD_BYTES", "ENV_SWITCH"]

THRESHOLD_BYTES = 1 << 30  # blocks up to 1 GiB come from (and go back to) the heap, not mmap
ENV_SWITCH = "GROWBATCH_MALLOC_TUNING"
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3

_applied: bool | None = None


def keep_freed_memory(threshold_bytes: int = THRESHOLD_BYTES) -> bool:
    """Raise glibc's mmap and trim thresholds to ``threshold_bytes``, once per process.

    Returns True when the thresholds are in force (now or from an earlier call); False where
    this is not glibc on Linux, where ``GROWBATCH_MALLOC_TUNING=0``, or where the user already set
    ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` (their choice wins).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV_SWITCH, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(_M_TRIM_THRESHOLD, threshold_bytes)) and bool(mallopt(_M_MMAP_THRESHOLD, threshold_bytes))
    return _applied

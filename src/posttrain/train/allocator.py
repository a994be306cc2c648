"""Keep glibc's malloc from handing a training step's memory back to the kernel between steps.

A CPU training step allocates and frees the same few gigabytes every step (activations, the
gradients ``zero_grad(set_to_none=True)`` drops, optimiser temporaries). With glibc's default
settings many of these blocks are ``mmap``-ed and unmapped, or trimmed off the heap, so every
step faults the same pages in again: on Qwen2.5-0.5B's shape that was 85,000-500,000 page faults
and 0.6-3.8 s of kernel time per SFT step on 2 CPU threads (docs/performance.md has the
measurements). Raising the mmap and trim thresholds keeps freed blocks in the process for the
next step; the peak resident set grew 2% in the measured run (7.41 -> 7.56 GB).

Nothing is changed where the user chose for themselves: ``MALLOC_*_`` environment variables
set, or another allocator (jemalloc, tcmalloc) preloaded. Other C libraries (musl, macOS):
nothing to do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit: larger blocks are always mmap-ed
TRIM_THRESHOLD = 1 << 30  # give memory back only when over 1 GiB is free at the heap's top
TOP_PAD = 64 << 20

_done = False


def user_chose_allocator(environ=os.environ) -> bool:
    preload = environ.get("LD_PRELOAD", "")
    return any(k.startswith("MALLOC_") for k in environ) or any(
        name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")
    )


def keep_freed_memory() -> bool:
    """Set glibc's thresholds once per process; True when they were set."""
    global _done
    if _done or not sys.platform.startswith("linux") or user_chose_allocator():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (M_TOP_PAD, TOP_PAD),
    ))
    return _done

"""Allocator settings for descartes_fast's own processes (the server and the CLI), not the library's.

Output moves in buffers of hundreds of KiB. glibc serves allocations of 128 KiB and more with
fresh ``mmap`` pages and returns them at once, so every such buffer costs a page fault per 4 KiB
(expensive in a VM): measured here, a 512 KiB output_read took 2.9 ms, 1.0 ms with buffers of up
to 4 MiB kept in the heap. Up to 16 MiB of freed heap is kept before it is given back to the OS.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["keep_big_buffers"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 4 << 20
_TRIM_THRESHOLD = 16 << 20


def keep_big_buffers() -> bool:
    """Tune glibc's malloc as above; False where it is not glibc (nothing changes then)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own symbols: libc's, where it is glibc
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))

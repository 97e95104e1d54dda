"""Allocator settings for descartes_fast's own processes (the server and the CLI), not the library's.

Output moves in buffers of hundreds of KiB. glibc serves allocations of 128 KiB and more with
fresh ``mmap`` pages and returns them at once, so every such buffer costs a page fault per 4 KiB
(expensive in a VM): measured here, a 512 KiB output_read took 2.9 ms, 1.0 ms with buffers of up
to 4 MiB kept in the heap. Up to 16 MiB of freed heap is kept before it is given back to the OS; :func:`release_freed`
gives all of it back at once (the server calls it when a subscriber has left: the events queued
for it were freed in libzmq's thread, whose heap otherwise keeps them).
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

__all__ = ["keep_big_buffers", "release_freed"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 4 << 20
_TRIM_THRESHOLD = 16 << 20


def _glibc(name: str) -> Any:
    """The process's own symbol *name* (libc's, where it is glibc), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def keep_big_buffers() -> bool:
    """Tune glibc's malloc as above; False where it is not glibc (nothing changes then)."""
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def release_freed() -> bool:
    """Give the memory freed in every malloc arena back to the OS (``malloc_trim(0)``); False
    where it is not glibc."""
    trim = _glibc("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True

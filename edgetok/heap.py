"""The C heap of a long-running process (glibc): few arenas, big blocks given back.

glibc's malloc gives threads that allocate at once arenas of their own (up to 8 per
core) and, once a big block mmapped for one call is freed, raises its mmap threshold up
to 32 MiB, so later blocks of that size come from the arenas and stay resident when
freed. A server whose decode threads allocate arrays of tens of MiB per call (a decoder's
cross-attention keys and values) ends up holding each thread's peak. ``bound`` (once,
before the threads start) caps the arenas and fixes the threshold, so blocks from
``mmap_threshold`` up are mapped per call and unmapped when freed; ``trim`` gives back the
free memory the heap holds (after loading models). Both do nothing off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

__all__ = ["bound", "trim"]

# mallopt(3) parameters.
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has ``mallopt`` and ``malloc_trim``)."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def bound(arenas: int = 2, mmap_threshold: int | None = None) -> bool:
    """At most ``arenas`` malloc arenas; with ``mmap_threshold``, blocks of that many
    bytes or more mapped per call (each such call then costs a map and page faults).
    Whether it took effect (False off glibc)."""
    if arenas < 1 or (mmap_threshold is not None and mmap_threshold < 1):
        raise ValueError("arenas and mmap_threshold must be >= 1")
    libc = _glibc()
    if libc is None:
        return False
    done = bool(libc.mallopt(_M_ARENA_MAX, arenas))
    if mmap_threshold is not None:
        done = done and bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
    return done


def trim() -> bool:
    """Give the heap's free memory back to the system; whether any was (False off glibc)."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))

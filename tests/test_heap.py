"""edgetok.heap on this machine's C library (glibc), in child processes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgetok import heap


def test_heap_bound_and_trim_on_glibc() -> None:
    """In a child: bounding the arenas takes effect on glibc, and a freed block of
    64 MiB that the heap kept is given back by ``trim``."""
    code = (
        "import ctypes, sys\n"
        "from edgetok import heap\n"
        "def rss():\n"
        "    return int(open('/proc/self/statm').read().split()[1]) * 4096 >> 20\n"
        "assert heap.bound(arenas=1), 'not glibc?'\n"
        "libc = ctypes.CDLL('libc.so.6')\n"
        "libc.malloc.restype = ctypes.c_void_p\n"
        "libc.mallopt(-1, 1 << 30)\n"  # M_TRIM_THRESHOLD: free() keeps the heap's top
        "blocks = [libc.malloc(1 << 16) for _ in range(1024)]\n"
        "for b in blocks: ctypes.memset(b, 1, 1 << 16)\n"
        "for b in blocks: libc.free(ctypes.c_void_p(b))\n"
        "kept = rss()\n"
        "heap.trim()\n"
        "print(kept - rss())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 60
    with pytest.raises(ValueError, match="must be >= 1"):
        heap.bound(arenas=0)

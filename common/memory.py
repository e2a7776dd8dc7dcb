"""Give large freed buffers back to the operating system at once (glibc malloc).

glibc serves an allocation from mmap only above a threshold that it raises, after each freed
mmap'd block, up to that block's size (at most 32 MiB). After the first 22 MiB image body is
freed, the next ones come from the heap, and a heap rarely shrinks: measured on the gateway, 40
concurrent /v1 asks with 16.5 MiB images peaked 288 MiB above idle with the default and 137 MiB
with the threshold fixed at 1 MiB, the budgeted bytes being the same. Fixing the threshold
(which also turns off its adjustment) keeps RSS close to what the memory budgets count. The cost
is an mmap/munmap pair per buffer over 1 MiB, negligible next to the work done on such a buffer.

Both services call `return_large_buffers()` as they start; `MALLOC_MMAP_THRESHOLD_` set in the
environment wins (glibc reads it before Python starts). Elsewhere (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
LARGE_BUFFER_BYTES = 1024 * 1024


def return_large_buffers(threshold: int = LARGE_BUFFER_BYTES) -> bool:
    """Serve allocations of `threshold` bytes and more from mmap; True when glibc took the setting."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))

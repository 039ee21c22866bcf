"""glibc's malloc policy and this process's resident memory, for the memory measurements (no torch here).

glibc serves a block above its mmap threshold with a mapping of its own, unmapped when freed, and every
other block from the heap, where a freed block stays resident until it is reused or the heap's top is
trimmed. The threshold is dynamic by default: freeing a mapped block raises it to that block's size (up
to 32 MiB), so after a process has freed large blocks (a model's setup, a precompute) its freed memory of
those sizes stays resident too. :func:`keep_freed_memory` and :func:`return_freed_memory` fix the policy
one way or the other; each returns whether it could (glibc only).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import platform
import re
from pathlib import Path

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # mallopt parameters (malloc.h)


def glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c") if platform.system() == "Linux" else None
    return ctypes.CDLL(name) if name else None


def status_bytes(field: str) -> int | None:
    """``VmRSS``/``VmHWM`` of this process from ``/proc/self/status`` (Linux), in bytes."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def release_free_memory() -> None:
    """Collect garbage and hand free heap pages back to the OS, so that RSS is close to live memory."""
    gc.collect()
    if (libc := glibc()) is not None:
        libc.malloc_trim(0)


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in the process: no ``mmap`` for large blocks, no heap trimming.

    Otherwise a buffer allocated anew every step (per-sample gradients) that glibc maps is page-faulted
    and zeroed by the kernel every step."""
    libc = glibc()
    return (libc is not None and bool(libc.mallopt(_M_MMAP_MAX, 0))
            and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**30)))


def return_freed_memory(threshold: int = 64 * 2**10) -> bool:
    """Make glibc return freed memory to the OS: every block over ``threshold`` bytes gets a mapping of its
    own, unmapped when freed, and free heap above ``2 * threshold`` is trimmed. Setting the threshold also
    turns its dynamic adjustment off, so what stays resident no longer depends on what the process freed
    before the work measured. Call it before that work (and its setup)."""
    libc = glibc()
    return (libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
            and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 * threshold)))

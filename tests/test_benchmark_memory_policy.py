"""The training-cost benchmark's glibc policies do what its memory figures assume (Linux, glibc only).

``return_freed_memory`` must make freed blocks leave the process; under the default policy, once a
large mapped block has been freed (as a model's setup does), freed 1 MiB blocks stay resident. Each
case runs in a fresh interpreter that imports no more than ``benchmarks._malloc`` (no torch: its heap
state is the interpreter's), with glibc's tunables taken out of the environment, since a malloc policy
cannot be undone in a process.
"""

from __future__ import annotations

import ctypes.util
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = 128  # of 1 MiB
CHILD = f"""
import ctypes, sys
from benchmarks._malloc import glibc, return_freed_memory, status_bytes
MiB = 2**20
if sys.argv[1] == "return":
    assert return_freed_memory()
libc = glibc()
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
big = libc.malloc(16 * MiB)  # mapped; under the default policy freeing it raises the mmap threshold to 16 MiB
ctypes.memset(big, 1, 16 * MiB)
libc.free(big)
before = status_bytes("VmRSS")
blocks = [libc.malloc(MiB) for _ in range({BLOCKS})]
pin = libc.malloc(MiB // 4)  # keeps the freed blocks off the top of the heap, which free() would trim
for block in blocks:
    ctypes.memset(block, 1, MiB)
touched = status_bytes("VmRSS") - before
for block in blocks:
    libc.free(block)
print(touched / MiB, (status_bytes("VmRSS") - before) / MiB)
"""

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc"
                                or ctypes.util.find_library("c") is None, reason="glibc's mallopt")


def _resident(policy: str) -> tuple[float, float]:
    """(MiB resident once the blocks are touched, MiB still resident after they are freed)."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("MALLOC_") and key != "GLIBC_TUNABLES"}
    result = subprocess.run([sys.executable, "-c", CHILD, policy], cwd=ROOT, env=env, capture_output=True,
                            text=True, check=True, timeout=60)
    touched, kept = map(float, result.stdout.split())
    return touched, kept


def test_return_freed_memory_hands_freed_blocks_back() -> None:
    touched, kept = _resident("return")
    assert touched > 0.9 * BLOCKS  # the blocks were resident while in use
    assert kept < 0.05 * BLOCKS


def test_default_policy_keeps_freed_blocks_resident() -> None:
    """What the benchmark's "glibc default" column shows, and why the memory target does not use it."""
    touched, kept = _resident("default")
    assert touched > 0.9 * BLOCKS
    assert kept > 0.75 * BLOCKS

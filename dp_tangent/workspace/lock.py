"""The workspace lock: one writer at a time across processes, re-entrant within a process."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

_THREAD_LOCKS: dict[str, threading.RLock] = {}
_HELD: dict[str, tuple[int, int]] = {}  # root -> (fd, depth)
_GUARD = threading.Lock()


@contextlib.contextmanager
def workspace_lock(root: Path) -> Iterator[bool]:
    """Exclusive lock on the workspace at ``root`` across processes (``flock`` on ``workspace.json``);
    re-entrant within this process. Yields True for the outermost acquisition."""
    key = str(root.resolve())
    with _GUARD:
        rlock = _THREAD_LOCKS.setdefault(key, threading.RLock())
    with rlock:
        fd, depth = _HELD.get(key, (-1, 0))
        if depth == 0:
            fd = os.open(root / "workspace.json", os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)
        _HELD[key] = (fd, depth + 1)
        try:
            yield depth == 0
        finally:
            fd, depth = _HELD[key]
            if depth == 1:
                del _HELD[key]
                os.close(fd)  # releases the flock
            else:
                _HELD[key] = (fd, depth - 1)


@contextlib.contextmanager
def workspace_lock_if_free(root: Path) -> Iterator[bool]:
    """The lock if nobody holds it (yields True), else nothing (yields False): never waits, and
    never takes it while any thread of this process holds it."""
    key = str(root.resolve())
    with _GUARD:
        rlock = _THREAD_LOCKS.setdefault(key, threading.RLock())
    if not rlock.acquire(blocking=False):
        yield False
        return
    try:
        if _HELD.get(key, (-1, 0))[1]:
            yield False
            return
        fd = os.open(root / "workspace.json", os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        _HELD[key] = (fd, 1)
        try:
            yield True
        finally:
            del _HELD[key]
            os.close(fd)
    finally:
        rlock.release()

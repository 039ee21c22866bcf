"""Telling whether an SQLite file may have changed since an earlier look, without reading its tables.

SQLite's ``PRAGMA data_version`` on one connection kept open changes whenever any other connection, in this
process or another, commits a change to the file (rollback journal or WAL alike). It sees what SQLite's own
change counter shows, so bytes written into the file by anything else, the counter put back, go unseen: the
mark also holds the file's identity (device and inode: a file put in its place is another file) and the size,
modification and change times of the file and of its journal and WAL files (a write moves the change time,
which no unprivileged program can set back; since Linux 6.13 a write after a look gets a time of its own).
Equal marks mean: nothing was written to these files in between. A read-only connection that is not inside
a transaction holds no lock, so keeping it open never blocks a writer.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

Mark = tuple[int, ...]  # (st_dev, st_ino, data_version, then size, mtime and ctime of the file, journal, WAL)


class ChangeWatch:
    """``mark()``: a value that stays equal while nothing is committed to the SQLite file at ``path``."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None

    def mark(self) -> Mark | None:
        """The file's identity and data version now; None if it cannot be had (then nothing may be reused)."""
        with self._lock:
            try:
                stat = os.stat(self._path)
                identity = (stat.st_dev, stat.st_ino)
                if self._conn is None or identity != self._identity:
                    self.close()
                    # the identity before the connection: a file swapped in between makes the next mark differ
                    self._conn = sqlite3.connect(self._path.as_uri() + "?mode=ro", uri=True, isolation_level=None,
                                                 check_same_thread=False)
                    self._identity = identity
                version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
                return (*identity, version, *_times(self._path), *_times(Path(f"{self._path}-journal")),
                        *_times(Path(f"{self._path}-wal")))
            except (OSError, sqlite3.Error):
                self.close()
                return None

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn, self._identity = self._conn, None, None
            try:
                conn.close()
            except sqlite3.Error:  # closing a broken connection: nothing left to release
                pass


def _times(path: Path) -> tuple[int, int, int]:
    """(size, mtime, ctime) in ns of ``path``; (-1, -1, -1) when there is none."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return (-1, -1, -1)
    return (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)

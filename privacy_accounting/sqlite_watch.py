"""Telling whether an SQLite file may have changed since an earlier look, without reading its tables.

SQLite's ``PRAGMA data_version`` on one connection kept open changes whenever any other connection, in this
process or another, commits a change to the file (rollback journal or WAL alike). :class:`ChangeWatch` keeps
such a connection, and adds the file's identity (device and inode), so that a file put in the ledger's place
is another file. Equal marks mean: nothing was committed to this file in between. A read-only connection that
is not inside a transaction holds no lock, so keeping it open never blocks a writer.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

Mark = tuple[int, int, int]  # (st_dev, st_ino, data_version)


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
                return (*identity, int(self._conn.execute("PRAGMA data_version").fetchone()[0]))
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

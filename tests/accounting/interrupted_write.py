"""A ledger as a writer killed mid-transaction leaves it: its pages partly written, its journal hot."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def leave_hot_journal(path: Path) -> dict[Path, bytes]:
    """Write to the ledger at ``path`` until SQLite spills pages into the file, then leave the file and its journal as
    a kill at that instant would (the transaction is rolled back, then their bytes put back). Returns those bytes."""
    journal = path.with_name(path.name + "-journal")
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA cache_size = 1")  # pages spill to the file before the commit: the journal is hot
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE meta SET value = value || '-edited' WHERE key = 'application'")
    writer.execute("CREATE TABLE filler (x BLOB)")
    for _ in range(50):
        writer.execute("INSERT INTO filler VALUES (randomblob(4000))")
    files = {p: p.read_bytes() for p in (path, journal)}  # as a kill now would leave them
    writer.execute("ROLLBACK")
    writer.close()
    for p, data in files.items():
        p.write_bytes(data)
    assert journal.stat().st_size > 0
    return files

"""A write the ledger's disk cannot take (SQLite's SQLITE_FULL, here from ``max_page_count`` on a real file) names its
cause, inside an ``atomically()`` block too, and leaves the ledger as it was (review 113: SQLITE_FULL rolls the whole
transaction back, so the savepoint rollback after it failed, and "no such savepoint: call" replaced the cause)."""

from __future__ import annotations

from pathlib import Path

import pytest

from privacy_accounting import Ledger, LedgerWriteError, SQLiteStorage


@pytest.fixture
def full(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ledger's file cannot grow from now on (connections opened from now on)."""
    connect = SQLiteStorage._connect

    def no_growth(self):  # noqa: ANN001, ANN202
        conn = connect(self)
        conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
        return conn

    monkeypatch.setattr(SQLiteStorage, "_connect", no_growth)


@pytest.mark.parametrize("grouped", [False, True])
def test_a_write_the_disk_cannot_take_names_the_full_disk_and_changes_nothing(tmp_path: Path, grouped: bool,
                                                                               request) -> None:  # noqa: ANN001
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    ledger.set_data_source("digits", shards=["s0"])
    ledger.set_budget("digits", "s0", 8.0, 1e-5)
    before = ledger.state_digest()
    request.getfixturevalue("full")
    with pytest.raises(LedgerWriteError) as raised:
        if grouped:
            with ledger.atomically():
                ledger.set_budget("digits", "s0", 12.0, 1e-5)  # fits: the file need not grow
                ledger.set_data_source("other", description="x" * 200_000)  # cannot fit
        else:
            ledger.set_data_source("other", description="x" * 200_000)
    message = str(raised.value)
    assert "its disk is full (database or disk is full)" in message and "savepoint" not in message
    assert "the ledger is as it was before this write" in message and "\n" not in message
    assert ledger.state_digest() == before and ledger.budget("digits", "s0").epsilon == 8.0


def test_a_journal_that_cannot_be_created_is_the_disk_not_a_missing_ledger(tmp_path: Path) -> None:
    """Review 115: with the inode table full, SQLite cannot create its journal ("unable to open database file"),
    which read as "cannot open ledger"."""
    import sqlite3

    ledger = SQLiteStorage(tmp_path / "ledger.sqlite")
    with pytest.raises(LedgerWriteError, match=r"SQLite could not create its journal beside it \(unable to open "):
        with ledger._errors(write=True):
            raise sqlite3.OperationalError("unable to open database file")
    with pytest.raises(Exception, match="cannot open ledger") as raised:  # reading: the file itself
        with ledger._errors():
            raise sqlite3.OperationalError("unable to open database file")
    assert not isinstance(raised.value, LedgerWriteError)

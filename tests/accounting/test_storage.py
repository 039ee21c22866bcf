"""SQLite storage: creation, corruption detection (file never touched), busy timeout, protocol."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from accounting.interrupted_write import leave_hot_journal
from privacy_accounting import (
    BudgetExceededError,
    Ledger,
    LedgerBusyError,
    LedgerCorruptError,
    LedgerStorage,
    ReservationRequest,
    SQLiteStorage,
    dp_sgd_event,
)

EVENT = dp_sgd_event(1.2, 0.02, 100)


def reserve(ledger: Ledger, component: str = "c0") -> str:
    return ledger.reserve(data_source="digits", shard="shard-0", event=EVENT, delta=1e-5, purpose="training",
                          operator="alice", component=component)


def assert_refused_untouched(path: Path, match: str) -> None:
    before = path.read_bytes()
    with pytest.raises(LedgerCorruptError, match=match) as info:
        Ledger.open(path)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == before


def test_open_creates_file_and_folder(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "ledger.sqlite"
    ledger = Ledger.open(path)
    assert path.is_file() and ledger.location == str(path)
    assert [p.name for p in path.parent.iterdir()] == ["ledger.sqlite"]  # no temporary files left
    assert isinstance(SQLiteStorage(path), LedgerStorage)


def test_not_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"this is not a database at all, just some text" * 20)
    assert_refused_untouched(path, "not an SQLite database")


def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"")
    assert_refused_untouched(path, "empty file")


def test_other_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE things (x)")
    assert_refused_untouched(path, "not a privacy ledger")


def test_unknown_schema_version_is_refused(ledger: Ledger, ledger_path: Path) -> None:
    reserve(ledger)
    with sqlite3.connect(ledger_path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    assert_refused_untouched(ledger_path, "unknown schema version '99'")


def test_missing_schema_version_is_refused(ledger: Ledger, ledger_path: Path) -> None:
    with sqlite3.connect(ledger_path) as conn:
        conn.execute("DELETE FROM meta WHERE key = 'schema_version'")
    assert_refused_untouched(ledger_path, "no schema version")


def test_damaged_pages_are_detected(ledger: Ledger, ledger_path: Path) -> None:
    for i in range(40):
        reserve(ledger, component=f"component-{i:03d}-" + "x" * 200)
    data = bytearray(ledger_path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    assert len(data) > 4 * page_size
    for offset in range(page_size, len(data), page_size):  # scribble over every page header but the first
        data[offset : offset + 12] = b"\xff" * 12
    ledger_path.write_bytes(bytes(data))
    assert_refused_untouched(ledger_path, "integrity_check|corrupt|cannot be read")


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LedgerCorruptError, match="directory"):
        Ledger.open(tmp_path)


def test_writer_holding_the_lock_gives_busy_error(ledger_path: Path) -> None:
    ledger = Ledger.open(ledger_path, busy_timeout=0.2)
    blocker = sqlite3.connect(ledger_path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(LedgerBusyError, match="locked"):
            reserve(ledger)
        assert ledger.events() == []  # readers are not blocked by a pending writer
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    reserve(ledger)
    assert len(ledger.events()) == 1


def test_digests_without_events_are_the_digests_before_those_events_were_reserved(tmp_path: Path) -> None:
    """What a reservation inserts (its event, the records it read, a new shard's and data source's rows) is left
    out, and only that: the digests equal those taken before it, whatever else stays."""
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    ledger.set_data_source(data_source="people", unit="user", description="kept")
    ledger.set_budget(data_source="digits", shard="shard-1", epsilon=3.0, delta=1e-5)  # a shard no event names
    ledger.complete(reserve(ledger, "c0"))
    before = ledger.state_digest()
    new = ledger.reserve_all([ReservationRequest(source, shard, EVENT, 1e-5, "training", "bob", f"n{i}",
                                                 records=(f"r{i}", f"s{i}"))
                              for i, (source, shard) in enumerate([("digits", "shard-0"), ("digits", "shard-9"),
                                                                   ("fresh", "a")])])
    seqs = [ledger.event(r).seq for r in new]
    after = ledger.state_digest()
    assert {t for t in before if before[t] != after[t]} == {"data_sources", "shards", "events", "event_records"}
    assert ledger.state_digest(without_events=seqs) == before
    assert ledger.state_digest(without_events=seqs[:2]) != before  # the third one's rows still count
    with sqlite3.connect(tmp_path / "ledger.sqlite") as conn:  # an edit of an older row is not hidden
        conn.execute("UPDATE events SET delta = 0.5 WHERE component = 'c0'")
    assert ledger.state_digest(without_events=seqs)["events"] != before["events"]


@pytest.mark.parametrize("sql, what", [
    ("CREATE TRIGGER cheap AFTER INSERT ON events BEGIN UPDATE events SET event_json = '{}' WHERE seq = NEW.seq; END",
     "trigger 'cheap'"),
    ("CREATE VIEW spent AS SELECT * FROM events", "view 'spent'"),
])
def test_a_planted_trigger_or_view_is_refused(tmp_path: Path, sql: str, what: str) -> None:
    """A trigger would rewrite rows as the ledger writes them (an event's step count, a budget), with every table
    digest then matching what the tool itself logs: no ledger has one, so the file is refused."""
    path = tmp_path / "ledger.sqlite"
    reserve(Ledger.open(path))
    with sqlite3.connect(path) as conn:
        conn.execute(sql)
    assert_refused_untouched(path, f"holds {what}, which no privacy ledger has")


def _version_1_ledger(path: Path) -> None:
    """An empty ledger as version 1 of the schema created it (no records_read, no event_records)."""
    from privacy_accounting import sqlite_storage as storage

    version_1 = storage._SCHEMA.replace(",\n    records_read INTEGER\n", "\n")
    version_1 = version_1[:version_1.index("CREATE TABLE event_records")] + \
        version_1[version_1.index("CREATE TABLE audits"):]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA application_id = {storage.APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    conn.executescript(version_1 + "INSERT INTO meta (key, value) VALUES ('application', '{}'), "
                       "('schema_version', '1');".format(storage.APPLICATION_NAME))
    conn.close()


def test_a_version_1_ledger_migrates_and_its_schema_passes_the_check(tmp_path: Path) -> None:
    """The schema check compares definitions without layout: a table altered by the migration reads as a fresh one."""
    path = tmp_path / "ledger.sqlite"
    _version_1_ledger(path)
    ledger = Ledger.open(path)
    reserve(ledger)
    assert [e.component for e in Ledger.open(path).events()] == ["c0"]


def test_a_ledger_table_redefined_is_refused(tmp_path: Path) -> None:
    """Review: rebuilt with ON CONFLICT REPLACE (same rows, so the same digests), the events table deleted earlier
    spends as the tool wrote later ones."""
    path = tmp_path / "ledger.sqlite"
    reserve(Ledger.open(path))
    with sqlite3.connect(path) as conn:
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()[0]
        conn.executescript(
            "ALTER TABLE events RENAME TO old_events;"
            + sql.rstrip().rstrip(")") + ", UNIQUE (data_source, shard, status) ON CONFLICT REPLACE);"
            + "INSERT INTO events SELECT * FROM old_events; DROP TABLE old_events;"
            + "CREATE INDEX IF NOT EXISTS events_by_shard ON events (data_source, shard, seq);"
            + "CREATE INDEX IF NOT EXISTS events_by_component ON events (component, seq);")
    assert_refused_untouched(path, "table 'events' is defined differently, unlike every privacy ledger's schema")


def test_an_atomic_block_commits_every_change_together_or_none(tmp_path: Path) -> None:
    """Reads inside see the block's changes (a state digest recorded before they exist on disk); another reader
    sees them only once the block ends; an exception inside keeps none; a dry run inside undoes only itself."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger.open(path)
    before = ledger.state_digest()
    with ledger.atomically():
        reserve(ledger, "c0")
        ledger.register_model("m", ["c0"])
        inside = ledger.state_digest()
        assert inside != before and Ledger.open(path).state_digest() == before  # not on disk yet
        ledger.set_budget("digits", None, epsilon=0.05, delta=1e-5)
        inside = ledger.state_digest()
        with pytest.raises(BudgetExceededError):  # refused inside the storage's transaction, after its first writes
            ledger.reserve(data_source="digits", shard="shard-1", event=EVENT, delta=1e-5, purpose="training",
                           operator="alice", component="big")
        assert ledger.state_digest() == inside  # a refused call undoes only itself
    assert Ledger.open(path).state_digest() == inside and ledger.models() == {"m": ("c0",)}
    with pytest.raises(RuntimeError, match="stop"):
        with ledger.atomically():
            ledger.set_budget("digits", None, epsilon=20.0, delta=1e-5)
            ledger.register_model("m2", ["c0"])
            raise RuntimeError("stop")
    assert ledger.state_digest() == inside and "m2" not in ledger.models()


def test_an_atomic_block_is_its_own_thread_s(tmp_path: Path) -> None:
    """Review: the block's transaction was the storage's, so another thread's call ran on it (and failed)."""
    import threading

    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    reserve(ledger, "c0")
    before, seen = ledger.state_digest(), []
    with ledger.atomically():
        ledger.register_model("m", ["c0"])

        def read() -> None:
            seen.append(ledger.state_digest())
            seen.append(ledger.models())

        reader = threading.Thread(target=read)
        reader.start()
        reader.join(30)
    assert seen == [before, {}] and ledger.models() == {"m": ("c0",)}


def test_a_ledger_pickles_and_its_copy_opens_the_same_file(tmp_path: Path) -> None:
    """Review: the thread-local state of atomic blocks made a ledger unpicklable (e.g. for another process)."""
    import pickle

    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    reserve(ledger, "c0")
    copy = pickle.loads(pickle.dumps(ledger))
    assert copy.state_digest() == ledger.state_digest() and copy.location == ledger.location
    with copy.atomically():
        copy.register_model("m", ["c0"])
    assert ledger.models() == {"m": ("c0",)}



ODD_CELLS = [
    (1, "src", "plain"), (2, "src", 'a "quoted" record'), (3, "src", "back\\slash"), (4, "src", "tab\there"),
    (5, "src", "new\nline"), (6, "src", "\x01\x1f\x7f"), (7, "src", "caf\u00e9"), (8, "src", "\U0001f600"),
    (9.5, "src", "a real seq"), (10, "src", b"\x00blob"), (11, "src", None), (2**63 - 1, "src", "largest"),
    (-5, 3, "an integer source"), (12, "src", ""),
]


@pytest.mark.parametrize("odd", ODD_CELLS, ids=lambda row: repr(row)[:30])
def test_the_record_table_digest_is_the_same_bytes_whoever_writes_the_json(odd: tuple) -> None:
    """SQLite writes event_records' rows as JSON where that gives the bytes Python's encoder gives (2.2x faster at a
    million rows); a row it would write otherwise (an escape, text beyond ASCII, a cell of another type) falls back."""
    from privacy_accounting import sqlite_storage as storage

    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE event_records (seq, data_source, record)")  # no types: an edit can store anything
    legit = [(s, "digits-train", f"{s:064x}") for s in range(3000)]  # crosses a fetch chunk
    conn.executemany("INSERT INTO event_records VALUES (?, ?, ?)", legit)
    python = storage._rows_digest(conn.execute("SELECT * FROM event_records ORDER BY seq, record"))
    assert storage._sqlite_json_agrees()
    assert storage._sqlite_json_digest(conn, "event_records", "FROM event_records ORDER BY seq, record", ()) == python
    assert storage._table_digest(conn, "event_records", "seq, record") == python
    conn.execute("INSERT INTO event_records VALUES (?, ?, ?)", odd)
    python = storage._rows_digest(conn.execute("SELECT * FROM event_records ORDER BY seq, record"))
    if odd[0] in (1, 12):  # plain printable text: still written by SQLite
        assert storage._sqlite_json_digest(conn, "event_records", "FROM event_records ORDER BY seq, record", ()) \
            == python
    assert storage._table_digest(conn, "event_records", "seq, record") == python
    assert storage._table_digest(conn, "event_records", "seq, record", "WHERE seq NOT IN (?)", [0]) == \
        storage._rows_digest(conn.execute("SELECT * FROM event_records WHERE seq NOT IN (0) ORDER BY seq, record"))


def test_a_generated_column_added_behind_the_tools_back_changes_the_record_table_digest(tmp_path: Path) -> None:
    """``PRAGMA table_info`` hides generated columns, which ``SELECT *`` (the encoder's rows) includes (review 60)."""
    from privacy_accounting import sqlite_storage as storage

    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE event_records (seq INTEGER, data_source TEXT, record TEXT)")
    conn.executemany("INSERT INTO event_records VALUES (?, ?, ?)", [(s, "src", f"r{s}") for s in range(10)])
    plain = storage._table_digest(conn, "event_records", "seq, record")
    other = sqlite3.connect(":memory:")
    other.execute("CREATE TABLE event_records (seq INTEGER, data_source TEXT, record TEXT, note TEXT AS ('x'))")
    other.executemany("INSERT INTO event_records (seq, data_source, record) VALUES (?, ?, ?)",
                      [(s, "src", f"r{s}") for s in range(10)])
    assert storage._sqlite_json_digest(other, "event_records", "FROM event_records ORDER BY seq, record", ()) is None
    assert storage._table_digest(other, "event_records", "seq, record") != plain


def test_a_read_only_open_never_writes_the_file_an_upgrade_or_a_rollback_reads_from_a_copy(tmp_path: Path) -> None:
    """Review 95 (and 75): `audit verify` opened the ledger as writers do, so an older schema was upgraded and an
    interrupted write's journal rolled back in the very file an auditor was checking. Read-only, both happen in a
    private copy that is read instead; the file's bytes stay, and writes fail."""
    from privacy_accounting.errors import PrivacyAccountingError

    old = tmp_path / "old.sqlite"
    _version_1_ledger(old)
    before = old.read_bytes()
    viewed = Ledger.open(old, create=False, read_only=True)
    assert viewed.events() == [] and viewed.state_digest() == Ledger.open(tmp_path / "new.sqlite").state_digest()
    assert old.read_bytes() == before
    with pytest.raises(PrivacyAccountingError):
        reserve(viewed)
    assert old.read_bytes() == before
    # a hot journal, as a writer killed mid-transaction leaves it: copied with the file, rolled back in the copy
    path = tmp_path / "ledger.sqlite"
    reserve(Ledger.open(path))
    committed = Ledger.open(path).events()
    files = leave_hot_journal(path)
    for p in files:
        p.chmod(0o444)  # review 101: the copy kept this mode, and a non-root user's rollback of it failed
    viewed = Ledger.open(path, create=False, read_only=True)
    assert viewed.events() == committed
    copy = Path(viewed._storage._view.name) / path.name
    assert copy.stat().st_mode & 0o200  # the private copy is the process's own, writable
    assert {p: p.read_bytes() for p in files} == files  # neither the file nor its journal touched


def test_a_read_only_open_of_a_ledger_switched_to_wal_mode_creates_no_file_beside_it(tmp_path: Path) -> None:
    """Review 103: a ledger switched to WAL mode with sqlite3 made every check create ledger.sqlite-wal and -shm in
    the workspace, which `audit verify` then reported as files added behind the tool's back. A check reads it, and
    what its -wal holds, from a private copy."""
    import sqlite3

    path = tmp_path / "ws" / "ledger.sqlite"
    reserve(Ledger.open(path))
    committed = Ledger.open(path).events()
    writer = sqlite3.connect(path, isolation_level=None)
    assert writer.execute("PRAGMA journal_mode=wal").fetchone() == ("wal",)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("UPDATE events SET operator = 'edited-in-the-wal' WHERE seq = 1")  # held by -wal, not the file
    files = {p: p.read_bytes() for p in path.parent.iterdir()}
    assert {p.name for p in files} == {"ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm"}
    viewed = Ledger.open(path, create=False, read_only=True)
    assert [e.operator for e in viewed.events()] == ["edited-in-the-wal"] != [e.operator for e in committed]
    assert {p: p.read_bytes() for p in path.parent.iterdir()} == files  # nothing created, nothing changed
    writer.close()  # its last connection: SQLite folds the -wal into the file and removes both
    files = {p: p.read_bytes() for p in path.parent.iterdir()}
    assert list(files) == [path]
    assert [e.operator for e in Ledger.open(path, create=False, read_only=True).events()] == ["edited-in-the-wal"]
    assert {p: p.read_bytes() for p in path.parent.iterdir()} == files

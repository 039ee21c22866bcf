"""SQLite implementation of :class:`~privacy_accounting.storage.LedgerStorage` (stdlib ``sqlite3``).

* One connection per call, closed afterwards: safe across threads and processes.
* Writes run in ``BEGIN IMMEDIATE`` transactions (the write lock is taken before reading), with
  a busy timeout; a reservation's budget check therefore sees every committed reservation.
* A new file is built under a temporary name and hard-linked into place, so a concurrent
  opener sees either no file or a complete ledger, and an existing file is never replaced.
* Opening an existing file checks the SQLite header, ``PRAGMA integrity_check``, the application id,
  the schema version and the tables; any failure raises :class:`LedgerCorruptError` and leaves
  the file untouched.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import uuid
from contextlib import closing, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from privacy_accounting.errors import (
    InvalidParameterError,
    LedgerBusyError,
    LedgerCorruptError,
    LedgerError,
    LedgerWriteError,
    PrivacyAccountingError,
    UnknownReservationError,
)
from privacy_accounting.event_tree import from_json, to_json
from privacy_accounting.records import (
    AuditRecord,
    Budget,
    DataSource,
    Purpose,
    Status,
    StoredEvent,
    Unit,
    utc_now,
)
from privacy_accounting.storage import EventFilter, RecordClass, ReservationCheck

SCHEMA_VERSION = 2
APPLICATION_NAME = "privacy_accounting.ledger"
APPLICATION_ID = 0x44504C47  # "DPLG", stored in the SQLite header (PRAGMA application_id)
#: Bytes 18-19 of the header (file format write and read versions) of a database in WAL journal mode.
_WAL_MODE = b"\x02\x02"
_SQLITE_HEADER = b"SQLite format 3\x00"
_SOURCE_LEVEL = ""  # shard column value of a data-source budget (shard names are non-empty)

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE data_sources (
    name TEXT PRIMARY KEY,
    unit TEXT NOT NULL CHECK (unit IN ('record', 'user')),
    description TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL
);
CREATE TABLE shards (
    data_source TEXT NOT NULL,
    shard TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (data_source, shard)
);
CREATE TABLE budgets (
    data_source TEXT NOT NULL,
    shard TEXT NOT NULL,
    epsilon REAL NOT NULL CHECK (epsilon > 0),
    delta REAL NOT NULL CHECK (delta > 0 AND delta < 1),
    updated_at TEXT NOT NULL,
    PRIMARY KEY (data_source, shard)
);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    reservation_id TEXT NOT NULL UNIQUE,
    data_source TEXT NOT NULL,
    shard TEXT NOT NULL,
    component TEXT NOT NULL,
    purpose TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('reserved', 'completed', 'failed')),
    operator TEXT NOT NULL,
    event_json TEXT NOT NULL,
    delta REAL NOT NULL,
    checkpoints_released INTEGER NOT NULL,
    details_json TEXT NOT NULL,
    failure_reason TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    records_read INTEGER
);
CREATE INDEX events_by_shard ON events (data_source, shard, seq);
CREATE INDEX events_by_component ON events (component, seq);
CREATE TABLE models (
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    component TEXT NOT NULL,
    registered_at TEXT NOT NULL,
    PRIMARY KEY (name, position)
);
CREATE TABLE event_records (
    seq INTEGER NOT NULL,
    data_source TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (seq, record)
);
CREATE INDEX event_records_by_record ON event_records (data_source, record);
CREATE TABLE audits (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    audit_id TEXT NOT NULL UNIQUE,
    component TEXT NOT NULL,
    epsilon_lower_bound REAL NOT NULL,
    delta REAL NOT NULL,
    method TEXT NOT NULL,
    operator TEXT NOT NULL,
    details_json TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""
_TABLES = frozenset({"meta", "data_sources", "shards", "budgets", "events", "event_records", "models", "audits"})
# Version 1 -> 2 adds the records each event read (per-record accounting); old events have none,
# which the ledger reads as "every record of the shard".
_MIGRATIONS: dict[int, tuple[str, ...]] = {1: (
    "ALTER TABLE events ADD COLUMN records_read INTEGER",
    "CREATE TABLE IF NOT EXISTS event_records (seq INTEGER NOT NULL, data_source TEXT NOT NULL, "
    "record TEXT NOT NULL, PRIMARY KEY (seq, record))",
    "CREATE INDEX IF NOT EXISTS event_records_by_record ON event_records (data_source, record)",
)}
# Column order of _event_row(); seq and reservation_id never change after the insert.
_EVENT_FIELDS = (
    "seq", "reservation_id", "data_source", "shard", "component", "purpose", "status", "operator",
    "event_json", "delta", "checkpoints_released", "details_json", "failure_reason", "created_at", "updated_at",
    "records_read",
)
_EVENT_COLUMNS = ", ".join(_EVENT_FIELDS)
_INSERT_EVENT = "INSERT INTO events ({}) VALUES ({})".format(
    ", ".join(_EVENT_FIELDS[1:]), ", ".join("?" * len(_EVENT_FIELDS[1:]))
)
_UPDATE_EVENT = "UPDATE events SET {} WHERE seq = ?".format(", ".join(f"{f} = ?" for f in _EVENT_FIELDS[2:]))


class SQLiteStorage:
    """Ledger storage in one SQLite file; see the module docstring for the guarantees."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 30.0, create: bool = True,
                 read_only: bool = False) -> None:
        if not (isinstance(busy_timeout, (int, float)) and busy_timeout >= 0):
            raise InvalidParameterError(f"busy_timeout must be a number of seconds >= 0, got {busy_timeout!r}")
        self._path = Path(path).expanduser().absolute()
        self._busy_timeout = float(busy_timeout)
        self._local = threading.local()  # .shared: this thread's open transaction of :meth:`atomically`
        # read_only: never written, not even by SQLite (a hot journal rolled back) or an upgrade; what those would
        # change is read from a private copy instead (``_view``), so that a check leaves the evidence as it found it
        self._read_only = read_only
        self._view: tempfile.TemporaryDirectory[str] | None = None
        if not os.path.lexists(self._path):
            if not create or read_only:
                raise LedgerError(f"no ledger file at {self._path}")
            self._create()
        self._verify()

    @property
    def location(self) -> str:
        return str(self._path)

    # -- connections and errors -------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # mode=rw: never let sqlite create (and so silently replace) a missing file.
        if self._view is not None:
            uri = (Path(self._view.name) / self._path.name).as_uri() + "?mode=ro"
        else:
            uri = self._path.as_uri() + ("?mode=ro" if self._read_only else "?mode=rw")
        return sqlite3.connect(uri, uri=True, timeout=self._busy_timeout, isolation_level=None)

    def _open_view(self) -> None:
        """Read from here on a private copy of the file (and its journal, which SQLite then rolls back there) in an
        upgraded schema, as a writing open would leave it: the file itself stays as it is."""
        self._view = tempfile.TemporaryDirectory(prefix="ledger-view-")
        for name in (self._path.name, self._path.name + "-journal", self._path.name + "-wal"):
            if (self._path.parent / name).exists():  # bytes only: a read-only file's mode would stop the rollback
                shutil.copyfile(self._path.parent / name, Path(self._view.name) / name)
        with closing(sqlite3.connect((Path(self._view.name) / self._path.name).as_uri() + "?mode=rw", uri=True,
                                     isolation_level=None)) as conn:
            conn.execute("PRAGMA journal_mode=DELETE")  # a WAL copy's log taken in: read-only opens need no -shm
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version in _MIGRATIONS:
                _migrate(conn, version)

    @contextmanager
    def _errors(self, write: bool = False) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if "locked" in text or "busy" in text:
                raise LedgerBusyError(
                    f"ledger {self._path} stayed locked by another writer for more than "
                    f"{self._busy_timeout:g} s ({exc})"
                ) from exc
            if "unable to open" in text and write and self._path.is_file():  # the journal beside it (review 115)
                raise LedgerWriteError(f"cannot write ledger {self._path}: SQLite could not create its journal beside "
                                       f"it ({exc}): a full disk or inode table, or a folder it may not write to; the "
                                       "ledger is as it was before this write") from exc
            if "unable to open" in text:
                raise LedgerError(f"cannot open ledger {self._path}: {exc}") from exc
            if "full" in text or "disk i/o" in text:  # SQLITE_FULL, SQLITE_IOERR: the disk, not the ledger
                cause = "its disk is full" if "full" in text else "its disk failed to read or write"
                raise LedgerWriteError(f"cannot write ledger {self._path}: {cause} ({exc}); the ledger is as it "
                                       "was before this write") from exc
            raise LedgerCorruptError(f"ledger {self._path} cannot be read: {exc}") from exc
        except sqlite3.IntegrityError as exc:
            raise LedgerError(f"ledger {self._path} rejected a write: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise LedgerCorruptError(f"ledger {self._path} is corrupt: {exc}") from exc

    @contextmanager
    def atomically(self) -> Iterator[None]:
        """Every write of the calls inside commits together when the block ends, or none does (an exception, or a
        process killed meanwhile, leaves the ledger as it was); reads inside see them."""
        if self._shared is not None:
            raise LedgerError("atomically() blocks do not nest")
        with self._errors(write=True):
            conn = self._connect()
            try:
                conn.execute("BEGIN IMMEDIATE")
                self._local.shared = conn
                yield
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
            finally:
                self._local.shared = None
                conn.close()

    def __getstate__(self) -> dict[str, object]:  # a copy in another process opens its own connections
        return {k: v for k, v in self.__dict__.items() if k not in ("_local", "_view")}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._local, self._view = threading.local(), None
        self._verify()  # the file, as any open does (a read-only one makes its own copy where it needs one)

    @property
    def _shared(self) -> sqlite3.Connection | None:
        """This thread's open :meth:`atomically` transaction (another thread's calls run their own)."""
        return getattr(self._local, "shared", None)

    @contextmanager
    def _transaction(self, *, write: bool, commit: bool = True) -> Iterator[sqlite3.Connection]:
        shared = self._shared
        if shared is not None:  # inside atomically(): its transaction, a savepoint for what may be undone
            with self._errors(write=True):
                shared.execute("SAVEPOINT call")
                try:
                    yield shared
                    shared.execute("RELEASE call" if commit else "ROLLBACK TO call")
                    if not commit:
                        shared.execute("RELEASE call")
                except BaseException:
                    if shared.in_transaction:  # SQLITE_FULL and I/O errors roll the whole transaction back themselves
                        shared.execute("ROLLBACK TO call")
                        shared.execute("RELEASE call")
                    raise
            return
        with self._errors(write=write):
            conn = self._connect()
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield conn
                conn.execute("COMMIT" if commit else "ROLLBACK")
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
            finally:
                conn.close()

    # -- creation and verification -----------------------------------------------------------

    def _create(self) -> None:
        parent = self._path.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".{self._path.name}.{uuid.uuid4().hex}.tmp"
        try:
            conn = sqlite3.connect(str(tmp), isolation_level=None)
            try:
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.executescript(
                    "BEGIN;"
                    + _SCHEMA
                    + "INSERT INTO meta (key, value) VALUES ('application', '{}'), "
                    "('schema_version', '{}'), ('created_at', '{}');".format(
                        APPLICATION_NAME, SCHEMA_VERSION, utc_now()
                    )
                    + "COMMIT;"
                )
            finally:
                conn.close()
            try:
                os.link(tmp, self._path)  # atomic, and fails rather than replace an existing file
            except FileExistsError:
                pass  # another process created it first: use theirs (verified next)
            except OSError:
                self._copy_exclusive(tmp)  # file systems without hard links
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
                try:
                    leftover.unlink()
                except FileNotFoundError:
                    pass

    def _copy_exclusive(self, source: Path) -> None:
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())

    def _verify(self) -> None:
        where = str(self._path)
        if self._path.is_dir():
            raise LedgerCorruptError(f"{where} is a directory, not a ledger file")
        try:
            with open(self._path, "rb") as handle:
                header = handle.read(20)
        except OSError as exc:
            raise LedgerError(f"cannot read ledger {where}: {exc}") from exc
        if header[:len(_SQLITE_HEADER)] != _SQLITE_HEADER:
            what = "an empty file" if not header else "not an SQLite database (bad header)"
            raise LedgerCorruptError(f"{where} is {what}; refusing to open or overwrite it")
        journal = self._path.with_name(self._path.name + "-journal")
        hot = journal.exists() and journal.stat().st_size > 0  # an interrupted write's: SQLite would roll it back
        if self._read_only and self._view is None and (hot or header[18:20] == _WAL_MODE):
            self._open_view()  # (in WAL mode, switched to outside this code, a reader would make -wal and -shm)
        with self._errors():
            conn = self._connect()
            try:
                if not self._read_only and header[18:20] == _WAL_MODE:  # back to the rollback journal it was made
                    conn.execute("PRAGMA journal_mode=DELETE")  # with: no -wal or -shm beside it (review 105)
                # integrity_check, not quick_check: only it compares every index with its table, and the queries
                # read through the indexes (a shard's spend, the records an event read) while the digests that bind
                # the ledger to an audit log read the tables: an index edited behind the tool's back (writable_schema,
                # REINDEX) would show other figures than the ones that verify
                check = [row[0] for row in conn.execute("PRAGMA integrity_check(1)")]
                if check != ["ok"]:
                    raise LedgerCorruptError(f"{where} failed PRAGMA integrity_check: "
                                             f"{check[0] if check else 'no result'}")
                tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if "meta" not in tables:
                    raise LedgerCorruptError(
                        f"{where} is an SQLite database but not a privacy ledger (no schema version)"
                    )
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                app_id = conn.execute("PRAGMA application_id").fetchone()[0]
                if meta.get("application") != APPLICATION_NAME or app_id != APPLICATION_ID:
                    raise LedgerCorruptError(
                        f"{where} is an SQLite database but not a privacy ledger (wrong application id)"
                    )
                version = meta.get("schema_version")
                if version is None:
                    raise LedgerCorruptError(f"{where} has no schema version")
                user_version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version.isdigit() and int(version) == user_version and user_version in _MIGRATIONS:
                    if self._read_only and self._view is None:
                        conn.close()
                        self._open_view()  # upgraded in the copy: the file keeps its older schema
                        return self._verify()
                    _migrate(conn, user_version)
                    version, user_version = str(SCHEMA_VERSION), SCHEMA_VERSION
                    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if version != str(SCHEMA_VERSION) or user_version != SCHEMA_VERSION:
                    raise LedgerCorruptError(
                        f"{where} has unknown schema version {version!r} (this code reads version {SCHEMA_VERSION})"
                    )
                missing = sorted(_TABLES - tables)
                if missing:
                    raise LedgerCorruptError(f"{where} lacks ledger tables {missing}")
                foreign = conn.execute("SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view') "
                                       "ORDER BY name").fetchall()
                if foreign:
                    kind, name = foreign[0]
                    raise LedgerCorruptError(
                        f"{where} holds {kind} {name!r}, which no privacy ledger has (a trigger can rewrite rows as "
                        "they are written); refusing to open it: drop it, or restore the ledger from a backup")
                changed = _schema_changes(conn)
                if changed:
                    raise LedgerCorruptError(
                        f"{where}: {changed[0]}, unlike every privacy ledger's schema (a constraint such as ON "
                        "CONFLICT REPLACE can delete rows as the ledger writes); refusing to open it: restore the "
                        "ledger from a backup")
            finally:
                conn.close()

    # -- data sources, shards, budgets -------------------------------------------------------

    def upsert_data_source(self, source: DataSource, shards: Sequence[str] = ()) -> None:
        with self._transaction(write=True) as conn:
            row = conn.execute("SELECT unit FROM data_sources WHERE name = ?", (source.name,)).fetchone()
            if row is not None and row[0] != source.unit.value:
                used = conn.execute("SELECT 1 FROM events WHERE data_source = ? LIMIT 1", (source.name,)).fetchone()
                if used is not None:
                    raise InvalidParameterError(
                        f"the unit of privacy of data source {source.name!r} cannot change from {row[0]!r} "
                        f"to {source.unit.value!r} after events were recorded"
                    )
            conn.execute(
                "INSERT INTO data_sources (name, unit, description, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET unit = excluded.unit, description = excluded.description",
                (source.name, source.unit.value, source.description, source.created_at or utc_now()),
            )
            for shard in shards:
                _ensure_shard(conn, source.name, shard)

    def data_sources(self) -> list[DataSource]:
        with self._transaction(write=False) as conn:
            rows = conn.execute("SELECT name, unit, description, created_at FROM data_sources ORDER BY name").fetchall()
        return [DataSource(name, _parse(Unit, unit, name), text, created) for name, unit, text, created in rows]

    def shards(self) -> list[tuple[str, str]]:
        with self._transaction(write=False) as conn:
            return [tuple(row) for row in conn.execute("SELECT data_source, shard FROM shards ORDER BY 1, 2")]

    def set_budget(self, budget: Budget) -> None:
        with self._transaction(write=True) as conn:
            _ensure_source(conn, budget.data_source)
            if budget.shard is not None:
                _ensure_shard(conn, budget.data_source, budget.shard)
            conn.execute(
                "INSERT INTO budgets (data_source, shard, epsilon, delta, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (data_source, shard) DO UPDATE SET epsilon = excluded.epsilon, "
                "delta = excluded.delta, updated_at = excluded.updated_at",
                (
                    budget.data_source,
                    _SOURCE_LEVEL if budget.shard is None else budget.shard,
                    budget.epsilon,
                    budget.delta,
                    budget.updated_at or utc_now(),
                ),
            )

    def budgets(self) -> list[Budget]:
        with self._transaction(write=False) as conn:
            return [_budget(row) for row in conn.execute(
                "SELECT data_source, shard, epsilon, delta, updated_at FROM budgets ORDER BY 1, 2"
            )]

    # -- events ------------------------------------------------------------------------------

    def reserve(self, events: Sequence[StoredEvent], check: ReservationCheck,
                records: Sequence[frozenset[str]] | None = None, *, dry_run: bool = False) -> list[StoredEvent]:
        records = list(records) if records is not None else [frozenset()] * len(events)
        if len(records) != len(events):
            raise InvalidParameterError("give one record set per event (an empty set: every record of the shard)")
        stored = []
        # one transaction: a refusal rolls back the whole batch, and a dry run rolls back in any case
        with self._transaction(write=True, commit=not dry_run) as conn:
            for event, read in zip(events, records):
                existing = _select_events(conn, EventFilter(data_source=event.data_source, shard=event.shard))
                source_budget = shard_budget = None
                for row in conn.execute(
                    "SELECT data_source, shard, epsilon, delta, updated_at FROM budgets "
                    "WHERE data_source = ? AND shard IN (?, ?)",
                    (event.data_source, _SOURCE_LEVEL, event.shard),
                ):
                    budget = _budget(row)
                    if budget.shard is None:
                        source_budget = budget
                    else:
                        shard_budget = budget
                classes = _touching(conn, event, read) if read else _touching_whole(conn, event, existing)
                check(event, existing, source_budget, shard_budget, classes)
                _ensure_source(conn, event.data_source)
                _ensure_shard(conn, event.data_source, event.shard)
                cursor = conn.execute(_INSERT_EVENT, _event_row(event)[1:])
                seq = int(cursor.lastrowid)
                conn.executemany("INSERT INTO event_records (seq, data_source, record) VALUES (?, ?, ?)",
                                 ((seq, event.data_source, r) for r in sorted(read)))
                stored.append(replace(event, seq=seq))
        return stored

    def record_classes(self, data_source: str, seqs: Sequence[int], *, shared: bool = False) -> list[RecordClass]:
        with self._transaction(write=False) as conn:
            return _record_classes(conn, data_source, seqs, shared)

    def table_digests(self, without_events: Sequence[int] = (), without_audits: Sequence[str] = (),
                      tables: Sequence[str] | None = None) -> dict[str, str]:
        if tables is not None and (without_events or without_audits or set(tables) - set(_DIGESTED)):
            raise InvalidParameterError(f"tables: some of {sorted(_DIGESTED)}, without without_events/without_audits")
        # computed afresh every time: a digest kept while the file looked unchanged (its data_version, size and
        # times) passed an edit written through a shared mapping, which moves no file time, and the next
        # operation then logged the edited ledger as its own (review 57)
        with self._transaction(write=False) as conn:
            digests = ({table: _table_digest(conn, table, order) for table, order in _DIGESTED.items()
                        if tables is None or table in tables}
                       if not without_events else _digests_without(conn, sorted({int(seq) for seq in without_events})))
            if without_audits:
                marks = ", ".join("?" * len(without_audits))
                digests["audits"] = _rows_digest(conn.execute(  # noqa: S608 -- fixed names
                    f"SELECT * FROM audits WHERE audit_id NOT IN ({marks}) ORDER BY {_DIGESTED['audits']}",
                    list(without_audits)))
            return digests

    def update_event(self, reservation_id: str, change: Callable[[StoredEvent], StoredEvent]) -> StoredEvent:
        with self._transaction(write=True) as conn:
            found = _select_events(conn, EventFilter(reservation_id=reservation_id))
            if not found:
                raise UnknownReservationError(f"unknown reservation id {reservation_id!r}")
            current = found[0]
            updated = change(current)
            if (updated.reservation_id, updated.seq) != (current.reservation_id, current.seq):
                raise LedgerError("an event update may not change its reservation id or sequence number")
            conn.execute(_UPDATE_EVENT, (*_event_row(updated)[2:], current.seq))
        return updated

    def events(self, where: EventFilter = EventFilter()) -> list[StoredEvent]:
        with self._transaction(write=False) as conn:
            return _select_events(conn, where)

    # -- models and audits -------------------------------------------------------------------

    def set_model(self, name: str, components: Sequence[str], registered_at: str) -> None:
        with self._transaction(write=True) as conn:
            conn.execute("DELETE FROM models WHERE name = ?", (name,))
            conn.executemany(
                "INSERT INTO models (name, position, component, registered_at) VALUES (?, ?, ?, ?)",
                [(name, i, component, registered_at) for i, component in enumerate(components)],
            )

    def models(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {}
        with self._transaction(write=False) as conn:
            for name, component in conn.execute("SELECT name, component FROM models ORDER BY name, position"):
                out.setdefault(name, []).append(component)
        return {name: tuple(components) for name, components in out.items()}

    def add_audit(self, audit: AuditRecord) -> None:
        with self._transaction(write=True) as conn:
            conn.execute(
                "INSERT INTO audits (audit_id, component, epsilon_lower_bound, delta, method, operator, "
                "details_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    audit.audit_id,
                    audit.component,
                    audit.epsilon_lower_bound,
                    audit.delta,
                    audit.method,
                    audit.operator,
                    json.dumps(audit.details, sort_keys=True, allow_nan=False),
                    audit.created_at,
                ),
            )

    def audits(self) -> list[AuditRecord]:
        with self._transaction(write=False) as conn:
            rows = conn.execute(
                "SELECT audit_id, component, epsilon_lower_bound, delta, method, operator, created_at, "
                "details_json FROM audits ORDER BY seq"
            ).fetchall()
        return [AuditRecord(*row[:7], details=_load_json(row[7], f"audit {row[0]}")) for row in rows]


# -- row helpers ---------------------------------------------------------------------------------


def _ensure_source(conn: sqlite3.Connection, name: str) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO data_sources (name, unit, description, created_at) VALUES (?, 'record', '', ?)",
        (name, utc_now()),
    )


def _ensure_shard(conn: sqlite3.Connection, data_source: str, shard: str) -> None:
    _ensure_source(conn, data_source)
    conn.execute(
        "INSERT OR IGNORE INTO shards (data_source, shard, created_at) VALUES (?, ?, ?)",
        (data_source, shard, utc_now()),
    )


#: The tables whose content :meth:`SQLiteStorage.table_digests` covers, with their row order.
_DIGESTED = {
    "data_sources": "name", "shards": "data_source, shard", "budgets": "data_source, shard",
    "events": "seq", "event_records": "seq, record", "models": "name, position", "audits": "seq",
}


def _table_digest(conn: sqlite3.Connection, table: str, order: str, where: str = "",
                  parameters: Sequence[Any] = ()) -> str:
    """sha256 of the table's rows (those ``where`` selects) in a fixed order, as canonical JSON (floats exact, via
    repr). The largest table's rows are written as JSON by SQLite itself where that gives the same bytes."""
    query = f"FROM {table} {where} ORDER BY {order}"
    fast = _sqlite_json_digest(conn, table, query, parameters) if table in _SQLITE_JSON_ROWS else None
    return fast if fast is not None else _rows_digest(conn.execute(f"SELECT * {query}", parameters))  # noqa: S608


#: The rows of a table SQLite writes as :data:`_ROW_JSON` would (one JSON array per row, NULL where a cell is not of
#: the type the schema gives and the ledger writes): event_records, a row per record per run, holds nearly every row
#: of a ledger that has trained on large shards, and Python's own encoding of them is 60% of a digest's time.
_SQLITE_JSON_ROWS = {
    "event_records": ("(seq, data_source, record)",
                      "CASE WHEN typeof(seq) = 'integer' AND typeof(data_source) = 'text' AND typeof(record) = 'text' "
                      "THEN json_array(seq, data_source, record) END"),
}


def _sqlite_json_digest(conn: sqlite3.Connection, table: str, query: str, parameters: Sequence[Any]) -> str | None:
    """:func:`_rows_digest` of the rows ``query`` selects, from JSON SQLite writes; None where that might differ (a
    cell of another type, text beyond ASCII or with a character JSON escapes, another column layout, an SQLite that
    writes otherwise)."""
    columns, row_json = _SQLITE_JSON_ROWS[table]
    if not _sqlite_json_agrees() or \
            "(" + ", ".join(r[1] for r in conn.execute(f"PRAGMA table_xinfo({table})")) + ")" != columns:  # hidden too
        return None
    digest = hashlib.sha256()
    cursor = conn.execute(f"SELECT {row_json} {query}", parameters)  # noqa: S608 -- fixed names
    while rows := cursor.fetchmany(4096):
        lines = [row[0] for row in rows]
        if None in lines:
            return None
        text = "\n".join(lines) + "\n"
        # Python's encoder escapes a quote, a backslash, control characters, DEL and all beyond ASCII; SQLite escapes
        # the first three (with a backslash) and writes DEL and the rest as they are
        if not text.isascii() or "\\" in text or "\x7f" in text:
            return None
        digest.update(text.encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def _sqlite_json_agrees() -> bool:
    """Whether this SQLite writes integers, and text of printable ASCII that needs no escape, as :data:`_ROW_JSON`
    does."""
    text = "".join(c for c in map(chr, range(32, 127)) if c not in '"\\')
    values = [0, -1, 2**63 - 1, -2**63, text, ""]
    try:
        with closing(sqlite3.connect(":memory:")) as conn:
            written = conn.execute("SELECT json_array(?, ?, ?, ?, ?, ?)", values).fetchone()[0]
    except sqlite3.Error:  # built without JSON
        return False
    return written == _ROW_JSON.encode(values)


def _blob(value: object) -> object:
    """A BLOB cell (the ledger writes none; an edit can) in a digest: tagged, so it never equals a TEXT cell."""
    if isinstance(value, bytes):
        return {"blob": value.hex()}
    raise TypeError(f"unexpected ledger cell of type {type(value).__name__}")


def _rows_digest(rows: Iterable[Sequence[Any]]) -> str:
    digest, encode = hashlib.sha256(), _ROW_JSON.encode  # one encoder: json.dumps would build one per row
    for row in rows:
        digest.update(encode(list(row)).encode() + b"\n")
    return digest.hexdigest()


_ROW_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=True, default=_blob)  # as json.dumps(row, ...) writes


def _seq_list(seqs: Sequence[int]) -> str:
    """Event sequence numbers as SQL integer literals: not bound parameters, of which an SQLite build may take as
    few as 999 in one statement (a shard retrained hundreds of times has as many events)."""
    return ", ".join(str(int(seq)) for seq in seqs)


def _digests_without(conn: sqlite3.Connection, seqs: list[int]) -> dict[str, str]:
    """:func:`_table_digest` of every table as if events ``seqs`` had never been inserted: their rows and records
    left out, and so are the shard and data source rows that only an insert of theirs can have made (created at
    or after the earliest of them, with no other event, budget or shard naming them; a data source's row also
    with the defaults ``_ensure_source`` writes)."""
    marks = _seq_list(seqs)
    gone = conn.execute(f"SELECT data_source, shard, created_at FROM events WHERE seq IN ({marks})"  # noqa: S608
                        ).fetchall()
    if not gone:
        return {table: _table_digest(conn, table, order) for table, order in _DIGESTED.items()}
    since = min(created for _, _, created in gone)
    kept = conn.execute(f"SELECT data_source, shard FROM events WHERE seq NOT IN ({marks})").fetchall()  # noqa: S608
    budgets = conn.execute("SELECT data_source, shard FROM budgets").fetchall()
    named = {tuple(row) for row in kept} | {tuple(row) for row in budgets}
    made = {(source, shard) for source, shard, _ in gone}
    shards = conn.execute(f"SELECT * FROM shards ORDER BY {_DIGESTED['shards']}").fetchall()  # noqa: S608
    shards = [row for row in shards if not ((row[0], row[1]) in made and row[2] >= since
                                            and (row[0], row[1]) not in named)]
    still = {row[0] for row in shards} | {source for source, _ in named}
    sources = conn.execute(f"SELECT * FROM data_sources ORDER BY {_DIGESTED['data_sources']}").fetchall()  # noqa: S608
    sources = [row for row in sources if not (row[0] in {source for source, _ in made} and row[0] not in still
                                              and row[1] == "record" and row[2] == "" and row[3] >= since)]
    digests = {"shards": _rows_digest(shards), "data_sources": _rows_digest(sources)}
    for table in ("events", "event_records"):
        digests[table] = _table_digest(conn, table, _DIGESTED[table], f"WHERE seq NOT IN ({marks})")
    return {table: digests[table] if table in digests else _table_digest(conn, table, order)
            for table, order in _DIGESTED.items()}


def _canonical_sql(sql: str | None) -> str:
    """A schema object's SQL without whitespace or case (a migrated table's text differs from a fresh one's in
    layout only)."""
    return re.sub(r"\s+", "", sql or "").lower()


@functools.lru_cache(maxsize=1)
def _expected_schema() -> dict[tuple[str, str], str]:
    """(type, name) -> canonical SQL of every table and index a ledger made by this code has."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(_SCHEMA)
        return {(kind, name): _canonical_sql(sql) for kind, name, sql in conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}
    finally:
        conn.close()


def _schema_changes(conn: sqlite3.Connection) -> list[str]:
    """What differs between the file's schema and a ledger's (a table or index added, removed or redefined)."""
    expected = _expected_schema()
    found = {(kind, name): _canonical_sql(sql) for kind, name, sql in conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}
    changes = [f"{kind} {name!r} is defined differently" for (kind, name), sql in sorted(found.items())
               if (kind, name) in expected and expected[(kind, name)] != sql]
    changes += [f"it holds {kind} {name!r}" for kind, name in sorted(set(found) - set(expected))]
    changes += [f"it lacks {kind} {name!r}" for kind, name in sorted(set(expected) - set(found))]
    return changes


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    """Upgrade an older ledger in place, one version at a time, in one write transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        while version in _MIGRATIONS:
            for statement in _MIGRATIONS[version]:
                conn.execute(statement)
            version += 1
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
        conn.execute(f"PRAGMA user_version = {version}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise


def _record_classes(conn: sqlite3.Connection, data_source: str, seqs: Sequence[int],
                    shared: bool = False) -> list[RecordClass]:
    """Records read by events ``seqs`` (of ``data_source``), grouped by the set of ALL events, of any
    data source, that read each (``shared``: only records that an event other than ``seqs`` read too)."""
    if not seqs:
        return []
    marks = _seq_list(seqs)
    # A record key names one record whatever the data source: the same record under two source names
    # is still one unit of privacy, charged for both.
    if shared:
        rows = _shared_record_rows(conn, data_source, seqs)
    else:
        rows = conn.execute(
            "SELECT er.record, er.seq FROM event_records er WHERE er.record IN "
            f"(SELECT record FROM event_records WHERE data_source = ? AND seq IN ({marks}))",  # noqa: S608 -- marks
            (data_source,),
        )
    readers: dict[str, set[int]] = {}
    for record, seq in rows:
        readers.setdefault(record, set()).add(int(seq))
    counts: dict[frozenset[int], int] = {}
    for seqs_of_record in readers.values():
        key = frozenset(seqs_of_record)
        counts[key] = counts.get(key, 0) + 1
    return [RecordClass(key, n) for key, n in sorted(counts.items(), key=lambda kv: sorted(kv[0]))]


_LOOKUPS = 500  # records per query (under SQLite's smallest limit on bound parameters, 999)


def _shared_record_rows(conn: sqlite3.Connection, data_source: str, seqs: Sequence[int]) -> Iterable[Sequence[Any]]:
    """(record, seq) of every event reading a record that events ``seqs`` (of ``data_source``) and another event
    read. Usually none: each of the smaller side's rows -- the events' own, or all the others -- is looked up in
    the index by record (``data_source`` first: one lookup per data source), never a big ledger's every record."""
    marks = _seq_list(seqs)
    sources = [row[0] for row in conn.execute("SELECT DISTINCT data_source FROM events")]
    of_sources = ", ".join("?" * len(sources))
    own, every = conn.execute(  # how many rows each side has (records_read counts them), for the direction only
        f"SELECT coalesce(sum(CASE WHEN seq IN ({marks}) THEN records_read END), 0), "  # noqa: S608 -- marks
        "coalesce(sum(records_read), 0) FROM events").fetchone()
    # (``+m.data_source``: not by that index, which would read every row of the data source, but by (seq, record));
    # each record looked up once, however many events read it (a shard retrained 20 times: 20x fewer lookups)
    if own <= every - own:  # look up each of these events' records among every other event's
        found = (f"SELECT m.record FROM (SELECT DISTINCT record FROM event_records WHERE seq IN ({marks}) "  # noqa: S608
                 f"AND +data_source = ?) m WHERE EXISTS (SELECT 1 FROM event_records x WHERE x.data_source IN "
                 f"({of_sources}) AND x.record = m.record AND x.seq NOT IN ({marks}))", (data_source, *sources))
    else:  # look up each other event's records among these events'
        found = (f"SELECT x.record FROM (SELECT DISTINCT record FROM event_records WHERE seq NOT IN ({marks})) x "  # noqa: S608
                 "WHERE EXISTS (SELECT 1 FROM event_records m WHERE m.data_source = ? AND m.record = x.record "
                 f"AND m.seq IN ({marks}))", (data_source,))
    records = sorted({row[0] for row in conn.execute(*found)})
    rows: list[Sequence[Any]] = []
    for start in range(0, len(records), _LOOKUPS):  # each record looked up in the index, a chunk at a time
        chunk = records[start:start + _LOOKUPS]
        rows += conn.execute(f"SELECT record, seq FROM event_records WHERE data_source IN ({of_sources}) "  # noqa: S608
                             f"AND record IN ({', '.join('?' * len(chunk))})", (*sources, *chunk)).fetchall()
    return rows


def _touching(conn: sqlite3.Connection, event: StoredEvent,
              read: frozenset[str]) -> list[tuple[list[StoredEvent], int]]:
    """For the records ``event`` will read: the earlier events that read each (grouped, with counts).

    Events of the shard that recorded no records are taken to have read all of its records (:func:`_with_events`).
    """
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS reading (record TEXT PRIMARY KEY)")
    conn.execute("DELETE FROM reading")
    conn.executemany("INSERT INTO reading (record) VALUES (?)", ((r,) for r in read))
    readers: dict[str, set[int]] = {}
    for record, seq in conn.execute(  # every data source: one record key is one record
        "SELECT er.record, er.seq FROM event_records er JOIN reading n ON n.record = er.record"
    ):
        readers.setdefault(record, set()).add(int(seq))
    counts: dict[frozenset[int], int] = {}
    for record in read:
        key = frozenset(readers.get(record, ()))
        counts[key] = counts.get(key, 0) + 1
    return _with_events(conn, counts, (event.data_source, event.shard))


def _touching_whole(conn: sqlite3.Connection, event: StoredEvent,
                    existing: list[StoredEvent]) -> list[tuple[list[StoredEvent], int]]:
    """For an ``event`` reading its whole shard: the records of the shard (those its earlier events named) that
    other shards' events read too, grouped by the events that read each (review 67: such a run was checked against
    its own shard's events and budget only)."""
    named = [e.seq for e in existing if e.records_read is not None]
    counts = {shared.seqs: shared.count for shared in _record_classes(conn, event.data_source, named, shared=True)}
    return _with_events(conn, counts, (event.data_source, event.shard))


def _with_events(conn: sqlite3.Connection, counts: dict[frozenset[int], int],
                 here: tuple[str, str]) -> list[tuple[list[StoredEvent], int]]:
    """Each group of records (the sequence numbers of the events that named them -> how many) with its events, and
    with every event that named no records on a shard of those or on ``here`` (the new event's shard, which holds
    them): it read every record of its shard (review 69: only ``here``'s were added, so another shard's whole-shard
    run escaped that shard's budget)."""
    if not counts:
        return []
    by_seq = {e.seq: e for e in _select_events_by_seq(conn, sorted(set().union(*counts)))}
    whole: dict[tuple[str, str], set[int]] = {}
    unnamed = conn.execute("SELECT seq, data_source, shard FROM events WHERE records_read IS NULL")
    for seq, data_source, shard in unnamed:
        whole.setdefault((data_source, shard), set()).add(int(seq))
    groups: dict[frozenset[int], int] = {}
    for key, n in counts.items():
        shards = {here} | {(by_seq[q].data_source, by_seq[q].shard) for q in key}
        full = frozenset(key.union(*(whole.get(shard, ()) for shard in shards)))
        groups[full] = groups.get(full, 0) + n
    missing = sorted(set().union(*groups) - set(by_seq))
    by_seq.update((e.seq, e) for e in _select_events_by_seq(conn, missing))
    return [([by_seq[q] for q in sorted(key)], n) for key, n in groups.items()]


def _select_events_by_seq(conn: sqlite3.Connection, seqs: Sequence[int]) -> list[StoredEvent]:
    if not seqs:
        return []
    return [_event_from_row(row) for row in conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq IN ({_seq_list(seqs)}) ORDER BY seq")]  # noqa: S608


def _budget(row: Sequence[Any]) -> Budget:
    data_source, shard, epsilon, delta, updated_at = row
    return Budget(data_source, None if shard == _SOURCE_LEVEL else shard, float(epsilon), float(delta), updated_at)


def _event_row(event: StoredEvent) -> tuple[Any, ...]:
    return (
        event.seq,
        event.reservation_id,
        event.data_source,
        event.shard,
        event.component,
        event.purpose.value,
        event.status.value,
        event.operator,
        event.event_json,
        float(event.delta),
        int(bool(event.checkpoints_released)),
        json.dumps(event.details, sort_keys=True, allow_nan=False),
        event.failure_reason,
        event.created_at,
        event.updated_at,
        event.records_read,
    )


def _select_events(conn: sqlite3.Connection, where: EventFilter) -> list[StoredEvent]:
    clauses, params = [], []
    for column in ("data_source", "shard", "component", "status", "purpose", "reservation_id"):
        value = getattr(where, column)
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value.value if hasattr(value, "value") else value)
    sql = f"SELECT {_EVENT_COLUMNS} FROM events"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    return [_event_from_row(row) for row in conn.execute(sql + " ORDER BY seq", params)]


def _event_from_row(row: Sequence[Any]) -> StoredEvent:
    (seq, rid, data_source, shard, component, purpose, status, operator, event_json, delta,
     released, details_json, failure_reason, created_at, updated_at, records_read) = row
    try:
        event = to_json(from_json(event_json))
    except PrivacyAccountingError as exc:
        raise LedgerCorruptError(f"event {rid} holds an unreadable DP event: {exc}") from exc
    return StoredEvent(
        reservation_id=rid,
        seq=int(seq),
        data_source=data_source,
        shard=shard,
        component=component,
        purpose=_parse(Purpose, purpose, rid),
        status=_parse(Status, status, rid),
        operator=operator,
        event_json=event,
        delta=float(delta),
        checkpoints_released=bool(released),
        created_at=created_at,
        updated_at=updated_at,
        details=_load_json(details_json, f"event {rid}"),
        failure_reason=failure_reason,
        records_read=None if records_read is None else int(records_read),
    )


def _parse(enum: Any, value: str, owner: str) -> Any:
    try:
        return enum(value)
    except ValueError:
        raise LedgerCorruptError(f"{owner} has an unknown {enum.__name__.lower()} {value!r}") from None


def _load_json(text: str, owner: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise LedgerCorruptError(f"{owner} has unreadable JSON details: {exc}") from exc
    if not isinstance(value, dict):
        raise LedgerCorruptError(f"{owner} has JSON details that are not an object")
    return value

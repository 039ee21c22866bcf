"""The storage interface of the ledger.

Implementations persist records and make :meth:`LedgerStorage.reserve` (a batch, all or nothing) and
:meth:`LedgerStorage.update_event` atomic: the callback runs inside the write transaction, so a
budget check and the insert it guards cannot interleave with another writer (SQLite:
``BEGIN IMMEDIATE``; a server database would lock the shard's rows or take an advisory lock).
All privacy math stays in the ledger; storage only stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from contextlib import AbstractContextManager
from typing import Callable, Protocol, Sequence, runtime_checkable

from privacy_accounting.records import AuditRecord, Budget, DataSource, Purpose, Status, StoredEvent

#: Called inside the reservation's transaction with the event to insert, its shard's events so far
#: (in order, earlier events of the same batch included), the data source's budget, the shard's
#: own budget, and the records the event will read grouped by the earlier events that read them
#: (``[(events, number of records)]``; empty when the event names no records); raises to refuse
#: (then nothing of the batch is written).
ReservationCheck = Callable[
    [StoredEvent, list[StoredEvent], "Budget | None", "Budget | None", list[tuple[list[StoredEvent], int]]], None]


@dataclass(frozen=True)
class RecordClass:
    """``count`` records that were read by exactly the events with sequence numbers ``seqs``."""

    seqs: frozenset[int]
    count: int


@dataclass(frozen=True)
class EventFilter:
    """Conjunction of equality filters on stored events; None means any."""

    data_source: str | None = None
    shard: str | None = None
    component: str | None = None
    status: Status | None = None
    purpose: Purpose | None = None
    reservation_id: str | None = None


@runtime_checkable
class LedgerStorage(Protocol):
    """Persistence of the ledger; every method is its own transaction and safe across processes."""

    @property
    def location(self) -> str:
        """Human-readable location (file path or URL without credentials)."""

    def atomically(self) -> AbstractContextManager[None]:
        """A block whose calls' writes commit together at its end, or not at all; reads inside see them."""

    def upsert_data_source(self, source: DataSource, shards: Sequence[str] = ()) -> None:
        """Create or update a data source and declare shards; refuse to change the unit once it has events."""

    def data_sources(self) -> list[DataSource]:
        """All data sources, by name."""

    def shards(self) -> list[tuple[str, str]]:
        """All known (data_source, shard) pairs, sorted."""

    def set_budget(self, budget: Budget) -> None:
        """Create or replace the budget of a data source (``shard=None``) or of one shard."""

    def budgets(self) -> list[Budget]:
        """All budgets."""

    def reserve(self, events: Sequence[StoredEvent], check: ReservationCheck,
                records: Sequence[frozenset[str]] | None = None, *, dry_run: bool = False) -> list[StoredEvent]:
        """Atomically, for each event in order: run ``check`` on its shard and insert it (creating its
        source and shard if new) with the records it reads (``records[i]``; opaque keys, an empty set
        meaning every record of the shard). All or nothing: a refusal of any event writes none.
        ``dry_run``: the same checks, then nothing is kept (the transaction is rolled back)."""

    def update_event(self, reservation_id: str, change: Callable[[StoredEvent], StoredEvent]) -> StoredEvent:
        """Atomically replace an event by ``change(current)``; unknown id raises UnknownReservationError."""

    def events(self, where: EventFilter = EventFilter()) -> list[StoredEvent]:
        """Events matching ``where``, in insertion order."""

    def record_classes(self, data_source: str, seqs: Sequence[int], *, shared: bool = False) -> list[RecordClass]:
        """The records read by events ``seqs`` of ``data_source``, grouped by the set of all events (of
        any data source: one key is one record) that read each; events naming no records are not counted.
        ``shared``: only the records an event other than ``seqs`` read too."""

    def table_digests(self, without_events: Sequence[int] = (), without_audits: Sequence[str] = (),
                      tables: Sequence[str] | None = None) -> dict[str, str]:
        """Table name -> sha256 of its content: binds the ledger to a record kept elsewhere (an audit log).
        ``tables``: only these (a quick check of some; not with ``without_*``).

        ``without_events``: digests as if the events with these sequence numbers had never been inserted (their
        rows, the records they read, and the shard and data source rows their insert created); ``without_audits``:
        as if the audits with these ids had never been recorded."""

    def set_model(self, name: str, components: Sequence[str], registered_at: str) -> None:
        """Create a model or replace its component list."""

    def models(self) -> dict[str, tuple[str, ...]]:
        """Model name -> component names, in registration order."""

    def add_audit(self, audit: AuditRecord) -> None:
        """Append an empirical audit result."""

    def audits(self) -> list[AuditRecord]:
        """All audits, in insertion order."""

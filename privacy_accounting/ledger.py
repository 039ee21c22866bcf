"""The privacy ledger: budgets, reservations and guarantees over a :class:`LedgerStorage`.

Typical use::

    ledger = Ledger.open("ws/ledger.sqlite")
    ledger.set_budget(data_source="digits", shard=None, epsilon=8.0, delta=1e-5)
    rid = ledger.reserve(data_source="digits", shard="shard-0", event=dp_sgd_event(1.1, 0.05, 300),
                         delta=1e-5, purpose="training", operator="alice", component="digits-shard-0")
    ...  # train
    ledger.complete(rid, details={"sha256": "..."})   # or ledger.fail(rid, reason="...")

Every method is its own transaction on a fresh connection, so one ledger file can be shared by
threads and processes. Reservations are checked and written atomically.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any, Mapping, Sequence

from privacy_accounting.accountants import DEFAULT_SETTINGS, AccountantSettings, EpsilonBounds, epsilon_within
from privacy_accounting.budgets import budget_of, effective_budget, enforce_budget
from privacy_accounting.composition import ModelGuarantee, model_guarantee, record_guarantees, shard_records_bounds
from privacy_accounting.errors import (
    InvalidParameterError,
    RecordOverlapError,
    ReservationStateError,
    UnknownComponentError,
    UnknownDataSourceError,
    UnknownModelError,
    UnknownReservationError,
    UnknownShardError,
)
from privacy_accounting.event_tree import compose, is_non_private, to_json
from privacy_accounting.events import AnyEvent, as_tree
from privacy_accounting.records import (
    AuditRecord,
    Budget,
    DataSource,
    Purpose,
    ReservationRequest,
    Status,
    StoredEvent,
    Unit,
    utc_now,
)
from privacy_accounting.sqlite_storage import SQLiteStorage
from privacy_accounting.storage import EventFilter, LedgerStorage, RecordClass
from privacy_accounting.validation import check_delta, check_epsilon, check_name

#: The details key of an event naming its records: whether it was reserved with ``allow_overlap``.
OVERLAP_ALLOWED = "overlap_allowed"


class Ledger:
    """Ledger of privacy events with budgets; see the module docstring."""

    def __init__(self, storage: LedgerStorage, *, settings: AccountantSettings = DEFAULT_SETTINGS) -> None:
        self._storage = storage
        self._settings = settings

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 30.0,
        settings: AccountantSettings = DEFAULT_SETTINGS,
        create: bool = True,
        read_only: bool = False,
    ) -> "Ledger":
        """Open the SQLite ledger at ``path``, creating it (and its folder) if missing and ``create``
        (else a missing file raises :class:`LedgerError`: a lost ledger must not become an empty one).

        An existing file that is not a readable ledger raises :class:`LedgerCorruptError` and is
        left untouched. ``busy_timeout``: seconds to wait for another writer's lock. ``read_only``: for a
        check: the file is never written (an interrupted write's journal is rolled back, an older schema
        upgraded, in a private copy that is read instead), and every write fails.
        """
        return cls(SQLiteStorage(path, busy_timeout=busy_timeout, create=create, read_only=read_only),
                   settings=settings)

    @property
    def location(self) -> str:
        """Where the ledger lives (file path for SQLite)."""
        return self._storage.location

    @property
    def settings(self) -> AccountantSettings:
        """Accountant settings used for every figure of this ledger."""
        return self._settings

    def atomically(self) -> AbstractContextManager[None]:
        """``with ledger.atomically(): ...``: every change made inside commits together at the end, or none does
        (an exception, or the process killed meanwhile); reads inside, :meth:`state_digest` included, see them.
        E.g. to record the state a group of changes leaves before that state can exist on disk."""
        return self._storage.atomically()

    # -- data sources, shards, budgets -------------------------------------------------------

    def set_data_source(
        self,
        data_source: str,
        unit: str | Unit = Unit.RECORD,
        *,
        description: str = "",
        shards: Sequence[str] = (),
    ) -> DataSource:
        """Declare a data source, its unit of privacy (``record`` or ``user``) and optionally shards.

        The unit cannot change once the source has events (past guarantees were for the old unit).
        """
        name = check_name(data_source, "data_source")
        source = DataSource(name, Unit.parse(unit), str(description), utc_now())
        shard_names = [check_name(s, "shard") for s in shards]
        self._storage.upsert_data_source(source, shard_names)
        return self.data_source(name)

    def data_source(self, data_source: str) -> DataSource:
        """The declared (or implicitly created) data source; unknown raises UnknownDataSourceError."""
        for source in self._storage.data_sources():
            if source.name == data_source:
                return source
        known = ", ".join(s.name for s in self._storage.data_sources()) or "none"
        raise UnknownDataSourceError(f"unknown data source {data_source!r} (known: {known})")

    def data_sources(self) -> list[DataSource]:
        """All data sources."""
        return self._storage.data_sources()

    def shards(self, data_source: str | None = None) -> list[tuple[str, str]]:
        """Known (data_source, shard) pairs, optionally of one source."""
        pairs = self._storage.shards()
        if data_source is not None:
            self.data_source(data_source)
            pairs = [p for p in pairs if p[0] == data_source]
        return pairs

    def set_budget(self, data_source: str, shard: str | None, epsilon: float, delta: float) -> Budget:
        """Set (or replace) the (epsilon, delta) limit of a data source (``shard=None``) or one shard.

        Lowering a budget below what was already spent is allowed; the report marks it exceeded.
        """
        budget = Budget(
            data_source=check_name(data_source, "data_source"),
            shard=None if shard is None else check_name(shard, "shard"),
            epsilon=check_epsilon(epsilon),
            delta=check_delta(delta),
            updated_at=utc_now(),
        )
        self._storage.set_budget(budget)
        return budget

    def budgets(self) -> list[Budget]:
        """All budgets (source-level ones have ``shard=None``)."""
        return self._storage.budgets()

    def budget(self, data_source: str, shard: str) -> Budget | None:
        """The limit that applies to a shard: its own budget, else its data source's, else None."""
        self._check_shard(data_source, shard)
        return self._effective_budget(data_source, shard)

    def _effective_budget(self, data_source: str, shard: str) -> Budget | None:
        return budget_of(self._storage.budgets(), data_source, shard)

    def _check_shard(self, data_source: str, shard: str) -> None:
        self.data_source(data_source)
        shards = [s for ds, s in self._storage.shards() if ds == data_source]
        if shard not in shards:
            known = ", ".join(shards) or "none"
            raise UnknownShardError(
                f"unknown shard {shard!r} of data source {data_source!r} (known: {known}); a shard becomes "
                "known through reserve(), set_budget(shard=...) or set_data_source(shards=...)"
            )

    # -- reservations --------------------------------------------------------------------------

    def reserve(
        self,
        *,
        data_source: str,
        shard: str,
        event: AnyEvent,
        delta: float,
        purpose: str | Purpose,
        operator: str,
        component: str,
        details: Mapping[str, Any] | None = None,
        checkpoints_released: bool = False,
    ) -> str:
        """Record that ``event`` will run on ``shard``; returns the reservation id.

        The shard's spend after this event (sequential composition of all its events, at the
        budget's delta) is checked against its limit inside the write transaction; if it would
        exceed it, :class:`BudgetExceededError` is raised and nothing is written. With no budget
        the event is allowed (the report says "no budget set"). ``delta`` is the delta at which
        this event's own epsilon is reported.
        """
        return self.reserve_all([ReservationRequest(
            data_source=data_source, shard=shard, event=event, delta=delta, purpose=purpose, operator=operator,
            component=component, details=details, checkpoints_released=checkpoints_released)])[0]

    def reserve_all(self, requests: Sequence[ReservationRequest], *, allow_overlap: bool = False) -> list[str]:
        """Reserve every request in one transaction, all or nothing; returns the reservation ids in order.

        Each is checked as :meth:`reserve` checks one, against its shard's events including the
        batch's earlier ones; one refusal raises and writes none (e.g. a driver reserving every
        shard of a parallel run before submitting any task). A request that names its ``records``
        is also checked per record: each record's composition of every event that read it, this one
        included, must fit the budgets of the shards those events ran on; and a record already read
        by another shard's event is refused (:class:`RecordOverlapError`) unless ``allow_overlap``. A request
        that names none (it reads its whole shard) is checked so on the shard's records its earlier events named
        that other shards' events read too (the only records of it the ledger knows).
        """
        return [event.reservation_id for event in self._reserve(requests, allow_overlap, dry_run=False)]

    def check_reservations(self, requests: Sequence[ReservationRequest], *, allow_overlap: bool = False) -> None:
        """Raise what :meth:`reserve_all` would raise for ``requests`` now, and write nothing: a caller refuses
        a run before costly preparation (the reservation itself still checks again, since the ledger may change)."""
        self._reserve(requests, allow_overlap, dry_run=True)

    def _reserve(self, requests: Sequence[ReservationRequest], allow_overlap: bool, *,
                 dry_run: bool) -> list[StoredEvent]:
        now = utc_now()
        records = [self._record(request, now, allow_overlap) for request in requests]
        for record in records:
            self._warm_cache(record)
        budgets = self._storage.budgets()

        def check(record: StoredEvent, existing: list[StoredEvent], source_budget: Budget | None,
                  shard_budget: Budget | None, touching: list[tuple[list[StoredEvent], int]]) -> None:
            enforce_budget(
                data_source=record.data_source,
                shard=record.shard,
                budget=effective_budget(source_budget, shard_budget),
                existing=[e.tree for e in existing],
                new_event=record.tree,
                settings=self._settings,
            )
            overlaps: dict[str, int] = {}
            here = (record.data_source, record.shard)
            for readers, count in touching:
                for key in {(e.data_source, e.shard) for e in readers if (e.data_source, e.shard) != here}:
                    name = key[1] if key[0] == record.data_source else f"{key[0]}/{key[1]}"
                    overlaps[name] = overlaps.get(name, 0) + count
            if overlaps and not allow_overlap:
                raise RecordOverlapError(data_source=record.data_source, shard=record.shard, overlaps=overlaps)
            for readers, _ in touching:
                for source, shard in sorted({(e.data_source, e.shard) for e in readers} | {here}):
                    enforce_budget(
                        data_source=source,
                        shard=shard,
                        budget=budget_of(budgets, source, shard),
                        existing=[e.tree for e in readers],
                        new_event=record.tree,
                        settings=self._settings,
                        shared=any((e.data_source, e.shard) != here for e in readers),
                    )

        return self._storage.reserve(records, check, [frozenset(r.records) for r in requests], dry_run=dry_run)

    @staticmethod
    def _record(request: ReservationRequest, now: str, allow_overlap: bool) -> StoredEvent:
        details = _check_details(request.details)
        if request.records:  # whether the figures of other shards may depend on the records it read
            details[OVERLAP_ALLOWED] = bool(allow_overlap)
        record = StoredEvent(
            reservation_id=uuid.uuid4().hex,
            seq=0,
            data_source=check_name(request.data_source, "data_source"),
            shard=check_name(request.shard, "shard"),
            component=check_name(request.component, "component"),
            purpose=Purpose.parse(request.purpose),
            status=Status.RESERVED,
            operator=check_name(request.operator, "operator"),
            event_json=to_json(as_tree(request.event)),
            delta=check_delta(request.delta),
            checkpoints_released=_check_bool(request.checkpoints_released, "checkpoints_released"),
            created_at=now,
            updated_at=now,
            details=details,
            records_read=_check_records(request.records),
        )
        if record.purpose is Purpose.NON_PRIVATE_BASELINE and not is_non_private(record.tree):
            raise InvalidParameterError("purpose 'non_private_baseline' requires a NonPrivateDpEvent")
        return record

    def _warm_cache(self, record: StoredEvent) -> None:
        """Run the budget check once before taking the write lock, to fill the accountant cache.

        Inside the lock the check is redone on the then-current events; when nothing changed
        meanwhile its figures are cache hits, so the lock is held for milliseconds, not seconds.
        A refusal found here is not final: it is raised only by the check inside the lock.
        """
        budget = self._effective_budget(record.data_source, record.shard)
        if budget is None or is_non_private(record.tree):
            return
        existing = [e.tree for e in self._storage.events(EventFilter(record.data_source, record.shard))]
        epsilon_within(compose([*existing, record.tree]), budget.delta, budget.epsilon, self._settings)

    def complete(
        self,
        reservation_id: str,
        details: Mapping[str, Any] | None = None,
        *,
        checkpoints_released: bool | None = None,
    ) -> StoredEvent:
        """Mark a reservation completed, merging ``details`` (e.g. the artifact's sha256).

        ``checkpoints_released=True`` records that intermediate checkpoints were published; a
        release cannot be undone, so False never clears an earlier True.
        """
        extra = _check_details(details)
        released = False if checkpoints_released is None else _check_bool(checkpoints_released, "checkpoints_released")

        def change(current: StoredEvent) -> StoredEvent:
            _check_transition(current, Status.COMPLETED)
            return replace(
                current,
                status=Status.COMPLETED,
                details={**current.details, **extra},
                checkpoints_released=current.checkpoints_released or released,
                updated_at=utc_now(),
            )

        return self._storage.update_event(check_name(reservation_id, "reservation_id"), change)

    def fail(self, reservation_id: str, reason: str, details: Mapping[str, Any] | None = None) -> StoredEvent:
        """Mark a reservation failed; it still counts as spent (the run may have touched data)."""
        why = check_name(" ".join(str(reason).split()) if isinstance(reason, str) else reason, "reason")
        extra = _check_details(details)

        def change(current: StoredEvent) -> StoredEvent:
            _check_transition(current, Status.FAILED)
            return replace(
                current,
                status=Status.FAILED,
                failure_reason=why,
                details={**current.details, **extra},
                updated_at=utc_now(),
            )

        return self._storage.update_event(check_name(reservation_id, "reservation_id"), change)

    def event(self, reservation_id: str) -> StoredEvent:
        """One stored event by reservation id."""
        found = self._storage.events(EventFilter(reservation_id=reservation_id))
        if not found:
            raise UnknownReservationError(f"unknown reservation id {reservation_id!r}")
        return found[0]

    def events(
        self,
        *,
        data_source: str | None = None,
        shard: str | None = None,
        component: str | None = None,
        status: str | Status | None = None,
        purpose: str | Purpose | None = None,
    ) -> list[StoredEvent]:
        """Stored events matching all given filters, in ledger order."""
        return self._storage.events(
            EventFilter(
                data_source=data_source,
                shard=shard,
                component=component,
                status=None if status is None else Status.parse(status),
                purpose=None if purpose is None else Purpose.parse(purpose),
            )
        )

    # -- spend ---------------------------------------------------------------------------------

    def shard_spend(self, data_source: str, shard: str, delta: float | None = None) -> EpsilonBounds:
        """What the shard's records have spent: the composition of all the shard's events (every status
        counts), or more where events of other shards read some of its records too (an overlap allowed on
        purpose): then the largest composition of every event that read one of its records, as the budgets
        are enforced.

        ``delta=None`` uses the delta of the budget that applies to the shard; error if none.
        """
        return self.shard_spend_and_readers(data_source, shard, delta)[0]

    def shard_spend_and_readers(self, data_source: str, shard: str,
                                delta: float | None = None) -> tuple[EpsilonBounds, frozenset[tuple[str, str]]]:
        """:meth:`shard_spend`, and the other shards whose runs read some of the shard's records (an overlap
        allowed on purpose), whose events the figure may compose with the shard's own."""
        self._check_shard(data_source, shard)
        if delta is None:
            budget = self._effective_budget(data_source, shard)
            if budget is None:
                raise InvalidParameterError(
                    f"no budget set for shard {shard!r} of data source {data_source!r}: pass delta explicitly"
                )
            delta = budget.delta
        delta = check_delta(delta)
        return shard_records_bounds(data_source, shard, self._storage.events(), delta, self._settings,
                                    self.shared_record_classes)

    def remaining(self, data_source: str, shard: str) -> float | None:
        """Budget epsilon minus spent epsilon (at the budget's delta), floored at 0; None if no budget."""
        budget = self.budget(data_source, shard)
        if budget is None:
            return None
        spent = self.shard_spend(data_source, shard, budget.delta).epsilon
        return max(0.0, budget.epsilon - spent) if math.isfinite(spent) else 0.0

    # -- composed models -------------------------------------------------------------------------

    def register_model(self, name: str, components: Sequence[str]) -> tuple[str, ...]:
        """Declare that model ``name`` is composed of ``components`` (replaces any earlier list)."""
        model = check_name(name, "model name")
        if isinstance(components, str) or not components:
            raise InvalidParameterError("components must be a non-empty list of component names")
        names = tuple(dict.fromkeys(check_name(c, "component") for c in components))
        known = {e.component for e in self._storage.events()}
        missing = [c for c in names if c not in known]
        if missing:
            raise UnknownComponentError(f"no ledger event produced component(s) {missing} of model {model!r}")
        self._storage.set_model(model, names, utc_now())
        return names

    def models(self) -> dict[str, tuple[str, ...]]:
        """Registered models and their components."""
        return self._storage.models()

    def model_guarantee(self, name: str, delta: float | None = None) -> ModelGuarantee:
        """Per-record guarantee of a model: over the records its components read, the largest
        composition of EVERY event that read the record (other models' and removed components'
        runs included); per shard it also gives the model's own events and the shard's total.

        ``delta=None`` uses the smallest delta recorded on the model's events (the most cautious).
        """
        models = self._storage.models()
        if name not in models:
            raise UnknownModelError(f"unknown model {name!r} (known: {', '.join(sorted(models)) or 'none'})")
        components = models[name]
        events = self._storage.events()
        if delta is None:
            deltas = [e.delta for e in events if e.component in set(components)]
            delta = min(deltas) if deltas else None
            if delta is None:
                raise InvalidParameterError(f"model {name!r} has no events: pass delta explicitly")
        return model_guarantee(name, components, events, check_delta(delta), self._settings, self.record_classes)

    def record_guarantees(self, data_source: str, delta: float) -> list[tuple[EpsilonBounds, int]]:
        """The distribution of per-record guarantees of ``data_source``: (bounds, number of records),
        each record charged the composition of every event that read it (events that named no
        records count for every record of their shard, so such shards appear as one group)."""
        self.data_source(data_source)
        return record_guarantees(self._storage.events(), check_delta(delta), self._settings, self.record_classes,
                                 data_source)

    def state_digest(self, without_events: Sequence[int] = (), without_audits: Sequence[str] = (),
                     tables: Sequence[str] | None = None) -> dict[str, str]:
        """sha256 of each table's content (data sources, shards, budgets, events and the records they
        read, models, audits): any row added, removed or edited changes its table's digest.

        ``without_events``: the digests as they were before the events with these sequence numbers were
        reserved (e.g. reservations a killed process made but never logged elsewhere); ``without_audits``: before
        the audits with these ids were recorded. Only rows added since can be left out this way, never an edit.
        ``tables``: only these tables' digests (e.g. those a figure is computed from: hashing the records every run
        read takes longest)."""
        return self._storage.table_digests(without_events, without_audits, tables)

    def overlap_possible(self) -> bool:
        """Whether some event that named its records was allowed to read records another shard's events read too (or
        was reserved before the ledger recorded that): only then do shard figures depend on which records each run
        read, so only then must the table of records read be vouched for before they are shown."""
        return any(e.records_read is not None and e.details.get(OVERLAP_ALLOWED, True) is not False
                   for e in self._storage.events())

    def record_classes(self, data_source: str, seqs: Sequence[int], *, shared: bool = False) -> list[RecordClass]:
        """The records events ``seqs`` read, grouped by the set of every event that read each (``shared``: only
        those another event read too)."""
        return self._storage.record_classes(data_source, list(seqs), shared=shared)

    def shared_record_classes(self, data_source: str, seqs: Sequence[int]) -> list[RecordClass]:
        """:meth:`record_classes` of only the records that events other than ``seqs`` read too."""
        return self.record_classes(data_source, seqs, shared=True)

    # -- audits ----------------------------------------------------------------------------------

    def record_audit(
        self,
        component: str,
        epsilon_lower_bound: float,
        delta: float,
        *,
        method: str = "",
        operator: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> AuditRecord:
        """Store an empirical audit of ``component``: an empirical lower bound, not a guarantee."""
        name = check_name(component, "component")
        if isinstance(epsilon_lower_bound, bool) or not isinstance(epsilon_lower_bound, (int, float)) or not (
            0.0 <= float(epsilon_lower_bound) < math.inf
        ):
            raise InvalidParameterError(f"epsilon_lower_bound must be finite and >= 0, got {epsilon_lower_bound!r}")
        if not self._storage.events(EventFilter(component=name)):
            raise UnknownComponentError(f"no ledger event produced component {name!r}")
        audit = AuditRecord(
            audit_id=uuid.uuid4().hex,
            component=name,
            epsilon_lower_bound=float(epsilon_lower_bound),
            delta=check_delta(delta),
            method=str(method),
            operator=str(operator),
            created_at=utc_now(),
            details=_check_details(details),
        )
        self._storage.add_audit(audit)
        return audit

    def audits(self) -> list[AuditRecord]:
        """All recorded audits."""
        return self._storage.audits()


def _check_transition(current: StoredEvent, target: Status) -> None:
    if current.status is not Status.RESERVED:
        raise ReservationStateError(
            f"reservation {current.reservation_id!r} is {current.status.value}; "
            f"only a reserved one can become {target.value}"
        )


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidParameterError(f"{name} must be True or False, got {value!r}")
    return value


def _check_records(records: object) -> int | None:
    if isinstance(records, (str, bytes)) or not isinstance(records, (frozenset, set, tuple, list)):
        raise InvalidParameterError("records must be a set of record keys (strings)")
    if not all(isinstance(r, str) and r for r in records):
        raise InvalidParameterError("record keys must be non-empty strings")
    return len(set(records)) or None


def _check_details(details: Mapping[str, Any] | None) -> dict[str, Any]:
    if details is None:
        return {}
    if not isinstance(details, Mapping) or not all(isinstance(k, str) for k in details):
        raise InvalidParameterError("details must be a mapping with string keys")
    try:
        return json.loads(json.dumps(dict(details), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"details must be JSON-serialisable (no NaN/inf): {exc}") from None

"""Value types stored in the ledger: enums for purpose/status/unit and frozen record dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import TYPE_CHECKING, Any, Mapping

from privacy_accounting.errors import InvalidParameterError
from privacy_accounting.event_tree import EventTree, from_json
from privacy_accounting.events import AnyEvent, to_dp_event

if TYPE_CHECKING:
    from dp_accounting import DpEvent


class _StrEnum(str, Enum):
    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def parse(cls, value: object) -> "_StrEnum":
        """Accept a member or its string value; anything else is a one-line error."""
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise InvalidParameterError(f"unknown {cls.__name__.lower()} {value!r}; choose one of: {choices}") from None


class Purpose(_StrEnum):
    """Why data was touched. ``non_private_baseline`` must carry a ``NonPrivateDpEvent``."""

    TRAINING = "training"
    RETRAINING_AFTER_DELETION = "retraining_after_deletion"
    HYPERPARAMETER_SEARCH = "hyperparameter_search"
    MERGE_STATISTICS = "merge_statistics"
    NON_PRIVATE_BASELINE = "non_private_baseline"


class Status(_StrEnum):
    """Life cycle of a reservation; every status counts as spent (a failed run may have leaked)."""

    RESERVED = "reserved"
    COMPLETED = "completed"
    FAILED = "failed"


class Unit(_StrEnum):
    """Unit of privacy: neighbouring datasets differ by one record, or by all records of one user."""

    RECORD = "record"
    USER = "user"


def utc_now() -> str:
    """Current time as UTC ISO-8601 with microseconds, e.g. ``2025-01-31T12:00:00.000000+00:00``."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class StoredEvent:
    """One privacy event of the ledger (a reservation and what became of it).

    ``event_json`` is the event in the ledger's canonical JSON (``event_tree``); :attr:`tree` reads
    it without ``dp_accounting``, :attr:`event` gives the ``dp_accounting`` value.
    ``delta`` is the delta at which the event's own epsilon is reported; budgets use their own.
    ``details`` is a JSON object owned by this value (a fresh copy per read): do not mutate it.
    """

    reservation_id: str
    seq: int
    data_source: str
    shard: str
    component: str
    purpose: Purpose
    status: Status
    operator: str
    event_json: str
    delta: float
    checkpoints_released: bool
    created_at: str
    updated_at: str
    details: dict[str, Any] = field(default_factory=dict)
    failure_reason: str | None = None
    records_read: int | None = None  # how many records it named; None: every record of its shard

    @property
    def id(self) -> str:
        """Alias of ``reservation_id``."""
        return self.reservation_id

    @property
    def tree(self) -> EventTree:
        """The event's JSON tree (a fresh copy, validated)."""
        return from_json(self.event_json)

    @property
    def event(self) -> DpEvent:
        """The event as a ``dp_accounting`` value (imports ``dp_accounting``)."""
        return to_dp_event(self.tree)


@dataclass(frozen=True)
class ReservationRequest:
    """What :meth:`Ledger.reserve_all` is asked to reserve: one event planned on one shard.

    ``records``: opaque keys of the records the event reads (e.g. keyed commitments of record
    ids); each record is then charged every event that read it. Empty: every record of the shard.
    """

    data_source: str
    shard: str
    event: AnyEvent
    delta: float
    purpose: str | Purpose
    operator: str
    component: str
    details: Mapping[str, Any] | None = None
    checkpoints_released: bool = False
    records: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Budget:
    """An (epsilon, delta) limit; ``shard=None`` is a data-source budget bounding each of its shards."""

    data_source: str
    shard: str | None
    epsilon: float
    delta: float
    updated_at: str = ""

    @property
    def scope(self) -> str:
        """``"shard"`` or ``"data_source"``."""
        return "data_source" if self.shard is None else "shard"


@dataclass(frozen=True)
class DataSource:
    """A data source and its unit of privacy (``record`` unless declared ``user``)."""

    name: str
    unit: Unit = Unit.RECORD
    description: str = ""
    created_at: str = ""


@dataclass(frozen=True)
class AuditRecord:
    """An empirical privacy audit of a component: an empirical lower bound, not a guarantee."""

    audit_id: str
    component: str
    epsilon_lower_bound: float
    delta: float
    method: str
    operator: str
    created_at: str
    details: dict[str, Any] = field(default_factory=dict)

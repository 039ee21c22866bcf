"""Ledger operations as values: what a :class:`~dp_tangent.workspace.commit.Change` does to the ledger.

Each is a small frozen dataclass with ``check(ledger)`` (raises on what the ledger would refuse,
before anything is written), ``apply(ledger)``, idempotent so that an interrupted change can be
rolled forward (a reservation already completed or failed is left as it is), and a JSON form
(``{"op": KIND, ...fields}``) kept in the change's intent. New kinds register with :func:`ledger_op`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol

from privacy_accounting import Ledger, PrivacyAccountingError, Status, Unit
from privacy_accounting.validation import check_delta, check_epsilon, check_name

from .names import WorkspaceError


class LedgerOp(Protocol):
    kind: ClassVar[str]
    tables: ClassVar[frozenset[str]]  # the ledger tables ``apply`` may write (:meth:`Ledger.state_digest`'s names)

    def check(self, ledger: Ledger) -> None: ...

    def apply(self, ledger: Ledger) -> None: ...

    def to_json(self) -> dict[str, Any]: ...


_KINDS: dict[str, type] = {}


def ledger_op(cls: type) -> type:
    """Register a ledger operation class under its ``kind``."""
    _KINDS[cls.kind] = cls
    cls.to_json = lambda self: {"op": self.kind, **asdict(self)}  # type: ignore[attr-defined]
    return cls


def ledger_op_from_json(raw: Mapping[str, Any]) -> LedgerOp:
    fields = dict(raw)
    kind = fields.pop("op", None)
    if kind not in _KINDS:
        raise WorkspaceError(f"unknown ledger operation {kind!r} in an interrupted change")
    return _KINDS[kind](**fields)


@ledger_op
@dataclass(frozen=True)
class RegisterModel:
    """Model ``name`` is composed of ``components`` (replaces any earlier list)."""

    kind: ClassVar[str] = "register_model"
    tables: ClassVar[frozenset[str]] = frozenset({"models"})
    name: str
    components: list[str]

    def check(self, ledger: Ledger) -> None:
        check_name(self.name, "model name")
        missing = [c for c in self.components if not ledger.events(component=c)]
        if not self.components or missing:
            raise WorkspaceError(f"model {self.name!r}: no ledger event produced component(s) {missing}")

    def apply(self, ledger: Ledger) -> None:
        ledger.register_model(self.name, self.components)


@ledger_op
@dataclass(frozen=True)
class SetBudget:
    """The (epsilon, delta) budget of a data source (``shard=None``) or one shard."""

    kind: ClassVar[str] = "set_budget"
    tables: ClassVar[frozenset[str]] = frozenset({"budgets", "shards", "data_sources"})
    data_source: str
    shard: str | None
    epsilon: float
    delta: float

    def check(self, ledger: Ledger) -> None:
        check_name(self.data_source, "data_source")
        if self.shard is not None:
            check_name(self.shard, "shard")
        check_epsilon(self.epsilon)
        check_delta(self.delta)

    def apply(self, ledger: Ledger) -> None:
        ledger.set_budget(self.data_source, self.shard, self.epsilon, self.delta)


@ledger_op
@dataclass(frozen=True)
class SetDataSource:
    """Declare a data source, its unit of privacy and its shards."""

    kind: ClassVar[str] = "set_data_source"
    tables: ClassVar[frozenset[str]] = frozenset({"data_sources", "shards"})
    name: str
    unit: str
    description: str
    shards: list[str]

    def check(self, ledger: Ledger) -> None:
        check_name(self.name, "data_source")
        Unit.parse(self.unit)
        for shard in self.shards:
            check_name(shard, "shard")
        current = next((s for s in ledger.data_sources() if s.name == self.name), None)
        if current is not None and current.unit.value != Unit.parse(self.unit).value and \
                ledger.events(data_source=self.name):
            raise WorkspaceError(f"the unit of privacy of data source {self.name!r} cannot change from "
                                 f"{current.unit.value!r} to {self.unit!r} after events were recorded")

    def apply(self, ledger: Ledger) -> None:
        ledger.set_data_source(self.name, unit=self.unit, description=self.description, shards=self.shards)


def _check_reserved(ledger: Ledger, reservation_id: str) -> None:
    try:
        status = ledger.event(reservation_id).status
    except PrivacyAccountingError as err:
        raise WorkspaceError(str(err)) from None
    if status is not Status.RESERVED:
        raise WorkspaceError(f"reservation {reservation_id} is {status.value}, not reserved")


def _settle(ledger: Ledger, reservation_id: str, target: Status, act: Callable[[], object]) -> None:
    status = ledger.event(reservation_id).status
    if status is target:
        return  # done before an interruption
    if status is not Status.RESERVED:
        raise WorkspaceError(f"reservation {reservation_id} is {status.value}, cannot mark it {target.value}")
    act()


@ledger_op
@dataclass(frozen=True)
class CompleteReservation:
    """A reservation's run finished and its artifact was written."""

    kind: ClassVar[str] = "complete_reservation"
    tables: ClassVar[frozenset[str]] = frozenset({"events"})
    reservation_id: str
    details: dict[str, Any] = field(default_factory=dict)

    def check(self, ledger: Ledger) -> None:
        _check_reserved(ledger, self.reservation_id)

    def apply(self, ledger: Ledger) -> None:
        _settle(ledger, self.reservation_id, Status.COMPLETED,
                lambda: ledger.complete(self.reservation_id, details=self.details))


@ledger_op
@dataclass(frozen=True)
class FailReservation:
    """A reservation's run failed or was abandoned; its budget stays spent."""

    kind: ClassVar[str] = "fail_reservation"
    tables: ClassVar[frozenset[str]] = frozenset({"events"})
    reservation_id: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def check(self, ledger: Ledger) -> None:
        _check_reserved(ledger, self.reservation_id)
        check_name(" ".join(self.reason.split()), "reason")

    def apply(self, ledger: Ledger) -> None:
        _settle(ledger, self.reservation_id, Status.FAILED,
                lambda: ledger.fail(self.reservation_id, reason=self.reason, details=self.details))

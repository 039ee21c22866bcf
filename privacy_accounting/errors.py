"""Exception hierarchy of :mod:`privacy_accounting`.

Every error raised on purpose by this package derives from :class:`PrivacyAccountingError`
and carries a one-line message that names the offending value, so callers can catch one
class and show ``str(err)`` to a user as is.
"""

from __future__ import annotations


class PrivacyAccountingError(Exception):
    """Base class of every error raised on purpose by ``privacy_accounting``."""

    def __init__(self, message: str) -> None:
        # One line, always: multi-line messages break log lines and CLI output.
        super().__init__(" ".join(str(message).split()))


class InvalidParameterError(PrivacyAccountingError, ValueError):
    """A parameter is outside its valid range (epsilon <= 0, delta outside (0, 1), ...)."""


class UnsupportedEventError(PrivacyAccountingError, TypeError):
    """A DP event type (or a JSON ``type`` tag) that this package cannot account or store."""


class AccountingError(PrivacyAccountingError, ArithmeticError):
    """No accountant could produce a valid epsilon upper bound for an event."""


class CalibrationError(PrivacyAccountingError, ArithmeticError):
    """The noise multiplier could not be calibrated to the requested target."""


class NotFoundError(PrivacyAccountingError, LookupError):
    """Base class for references to things the ledger does not know."""


class UnknownDataSourceError(NotFoundError):
    """The data source has no budget, no declaration and no events in the ledger."""


class UnknownShardError(NotFoundError):
    """The shard has no budget, no declaration and no events in the ledger."""


class UnknownReservationError(NotFoundError):
    """No ledger event has this reservation id."""


class UnknownComponentError(NotFoundError):
    """No ledger event produced a component of this name."""


class UnknownModelError(NotFoundError):
    """No composed model of this name was registered."""


class ReservationStateError(PrivacyAccountingError):
    """A status change that is not allowed (only ``reserved`` may become completed or failed)."""


class BudgetExceededError(PrivacyAccountingError):
    """A reservation would take a shard's spend above its epsilon limit; nothing was written.

    Attributes hold the figures of the message: ``spent`` is the epsilon of the shard's
    existing events (``shared``: of the events that read the records the run shares with runs on other shards),
    ``requested`` the increment ``spent_after - spent`` (all at the budget's delta, with the reported accountant),
    ``limit`` the budget's epsilon.
    """

    def __init__(
        self,
        *,
        data_source: str,
        shard: str,
        spent: float,
        requested: float,
        spent_after: float,
        limit: float,
        delta: float,
        scope: str,
        accountant: str,
        requested_kind: str = "increment of the shard's composed epsilon, after minus before",
        shared: bool = False,
    ) -> None:
        self.data_source = data_source
        self.shard = shard
        self.spent = spent
        self.requested = requested
        self.spent_after = spent_after
        self.limit = limit
        self.delta = delta
        self.scope = scope
        self.accountant = accountant
        self.requested_kind = requested_kind
        self.shared = shared  # the figures are those of records the run shares with runs on other shards
        from privacy_accounting.figures import fmt_set, significant  # (it imports nothing: no cycle)

        def fmt_eps(value: float) -> str:  # rounded up, as every printed epsilon is; "inf" for a non-private run's
            return significant(value, 4, up=True) if value != float("inf") else "inf"

        whose = "records the run shares with runs on other shards, held by " if shared else ""
        super().__init__(
            f"budget exceeded for {whose}shard {shard!r} of data source {data_source!r}: "
            f"spent epsilon={fmt_eps(spent)}, requested epsilon={fmt_eps(requested)} ({requested_kind}), "
            f"spent after={fmt_eps(spent_after)} > limit epsilon={fmt_set(limit)} "
            f"({scope} budget, delta={fmt_set(delta)}, accountant={accountant}); nothing was written"
        )


class RecordOverlapError(PrivacyAccountingError):
    """An event would read records that another shard's events already read; nothing was written.

    Shards are assumed disjoint (parallel composition); overlapping records are refused unless the
    caller opts in, and then every record is charged by sequential composition of all its events.
    """

    def __init__(self, *, data_source: str, shard: str, overlaps: dict[str, int]) -> None:
        self.data_source = data_source
        self.shard = shard
        self.overlaps = dict(overlaps)
        where = ", ".join(f"{n} record(s) with shard {s!r}" for s, n in sorted(overlaps.items()))
        super().__init__(
            f"shard {shard!r} of data source {data_source!r} overlaps other shards: {where}; shards must hold "
            "disjoint records (fix the split), or allow the overlap to charge those records by sequential "
            "composition of every run that read them; nothing was written"
        )


class LedgerError(PrivacyAccountingError):
    """Base class for problems with the ledger's database."""


class LedgerCorruptError(LedgerError):
    """The ledger file is not a readable ledger (not SQLite, failed integrity check, unknown schema).

    The file is never re-created or modified when this is raised.
    """


class LedgerBusyError(LedgerError):
    """Another writer held the ledger's lock for longer than the busy timeout."""


class LedgerWriteError(LedgerError):
    """The ledger's disk could not take a write (full, or an I/O error): the write was rolled back whole, and the
    file is a ledger still."""

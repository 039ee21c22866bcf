"""Deletion requests and the legal clock.

A request names record ids (kept in memory only: they are turned into keyed commitments at once).
The legal clock: GDPR Art. 12(3) (one month from receipt) and the CCPA regulations (45 calendar
days from the day of receipt), without extensions, in UTC; this is bookkeeping, not legal advice.
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

from ..components.manifest import commit
from ..errors import DPTangentError
from .names import check_name

REGIMES = {
    "gdpr": "GDPR Art. 12(3): without undue delay and at the latest one month after receipt",
    "ccpa": "CCPA regulations (11 CCR 7021(b)): within 45 calendar days, counted from the day of receipt",
}

class ForgetError(DPTangentError):
    """A deletion request that cannot be carried out as asked."""


class OtherRecordIds(ForgetError):
    """A request id already received with other record ids."""



def utc(moment: datetime | date) -> datetime:
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            raise ForgetError("times must be timezone-aware (e.g. datetime.now(timezone.utc))")
        return moment.astimezone(timezone.utc)
    return datetime.combine(moment, time(0), tzinfo=timezone.utc)


def add_months(day: date, months: int) -> date:
    """Same day number ``months`` later, or that month's last day if it has no such day
    (how EU Regulation 1182/71 ends a period expressed in months)."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def deadlines(received_at: datetime | date, regimes: Sequence[str] = ("gdpr", "ccpa")) -> dict[str, date]:
    """Last day (UTC) to complete a request: GDPR -- the same date one month later (or that month's
    last day); CCPA -- day 45 counting the day of receipt as day 1 (received + 44 days)."""
    day = utc(received_at).date()
    out = {}
    for regime in regimes:
        if regime == "gdpr":
            out[regime] = add_months(day, 1)
        elif regime == "ccpa":
            out[regime] = day + timedelta(days=44)  # the receipt day counts as day 1 (the earlier reading)
        else:
            raise ForgetError(f"unknown regime {regime!r}; known: {', '.join(REGIMES)}")
    return out


@dataclass(frozen=True)
class DeletionRequest:
    """Record ids to forget (kept in memory only), a request id and when it was received."""

    request_id: str
    record_ids: tuple[str, ...]
    received_at: datetime | date
    regimes: tuple[str, ...] = ("gdpr", "ccpa")

    def __post_init__(self) -> None:
        check_name(self.request_id, "request id")
        if isinstance(self.record_ids, str) or not self.record_ids:
            raise ForgetError("a deletion request needs at least one record id (a list, not a string)")
        if not all(isinstance(r, str) and r for r in self.record_ids):
            raise ForgetError("record ids must be non-empty strings")
        if not self.regimes:
            raise ForgetError("name at least one regime for the deadline (gdpr, ccpa)")
        object.__setattr__(self, "record_ids", tuple(dict.fromkeys(self.record_ids)))
        object.__setattr__(self, "received_at", utc(self.received_at))
        deadlines(self.received_at, self.regimes)

    def commitments(self, key: bytes) -> list[str]:
        return sorted({commit(r, key) for r in self.record_ids})


def resolve_now(now: datetime | None) -> datetime:
    return utc(now) if now is not None else datetime.now(timezone.utc)

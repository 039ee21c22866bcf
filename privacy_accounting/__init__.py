"""privacy_accounting: a ledger of differential-privacy events with budgets, accountants and reports.

Standalone (does not import ``dp_tangent``). Events are ``dp_accounting`` event values; epsilons
are the tightest of three valid upper bounds (Opacus RDP, Opacus PRV, dp-accounting PLD) under
the add-or-remove-one neighbouring relation. See ``docs/privacy-accounting.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Exports are imported on first use (PEP 562), so that reading a ledger loads neither the accountants'
# libraries nor the report models: each name, and the submodule that defines it.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("ACCOUNTANTS", "DEFAULT_SETTINGS", "NEIGHBOURING_RELATION", "AccountantSettings",
                     "EpsilonBounds", "epsilon_bounds", "epsilon_for"), "accountants"),
    "calibrate_noise_multiplier": "calibration",
    **dict.fromkeys(("ModelGuarantee", "ModelShardGuarantee"), "composition"),
    **dict.fromkeys(("AccountingError", "BudgetExceededError", "CalibrationError", "InvalidParameterError",
                     "LedgerBusyError", "LedgerCorruptError", "LedgerError", "LedgerWriteError", "NotFoundError",
                     "PrivacyAccountingError", "RecordOverlapError", "ReservationStateError", "UnknownComponentError",
                     "UnknownDataSourceError", "UnknownModelError", "UnknownReservationError", "UnknownShardError",
                     "UnsupportedEventError"),
                    "errors"),
    **dict.fromkeys(("compose_events", "dp_sgd_event", "gaussian_event"), "events"),
    "Ledger": "ledger",
    **dict.fromkeys(("AuditRecord", "Budget", "DataSource", "Purpose", "ReservationRequest", "Status", "StoredEvent",
                     "Unit"), "records"),
    "build_report": "report",
    "PrivacyReport": "report_models",
    **dict.fromkeys(("event_from_json", "event_to_json"), "serialization"),
    "SQLiteStorage": "sqlite_storage",
    **dict.fromkeys(("EventFilter", "LedgerStorage", "RecordClass"), "storage"),
}

if TYPE_CHECKING:
    from privacy_accounting.accountants import (ACCOUNTANTS, DEFAULT_SETTINGS, NEIGHBOURING_RELATION,
                                                AccountantSettings, EpsilonBounds, epsilon_bounds, epsilon_for)
    from privacy_accounting.calibration import calibrate_noise_multiplier
    from privacy_accounting.composition import ModelGuarantee, ModelShardGuarantee
    from privacy_accounting.errors import (AccountingError, BudgetExceededError, CalibrationError,
                                           InvalidParameterError, LedgerBusyError, LedgerCorruptError, LedgerError,
                                           LedgerWriteError, NotFoundError, PrivacyAccountingError, RecordOverlapError,
                                           ReservationStateError, UnknownComponentError, UnknownDataSourceError,
                                           UnknownModelError, UnknownReservationError, UnknownShardError,
                                           UnsupportedEventError)
    from privacy_accounting.events import compose_events, dp_sgd_event, gaussian_event
    from privacy_accounting.ledger import Ledger
    from privacy_accounting.records import (AuditRecord, Budget, DataSource, Purpose, ReservationRequest, Status,
                                            StoredEvent, Unit)
    from privacy_accounting.report import build_report
    from privacy_accounting.report_models import PrivacyReport
    from privacy_accounting.serialization import event_from_json, event_to_json
    from privacy_accounting.sqlite_storage import SQLiteStorage
    from privacy_accounting.storage import EventFilter, LedgerStorage, RecordClass


def __getattr__(name: str) -> Any:
    """Import the submodule that defines export ``name`` (once: the value is then a module global)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "ACCOUNTANTS",
    "DEFAULT_SETTINGS",
    "NEIGHBOURING_RELATION",
    "AccountantSettings",
    "AccountingError",
    "AuditRecord",
    "Budget",
    "BudgetExceededError",
    "CalibrationError",
    "DataSource",
    "EpsilonBounds",
    "EventFilter",
    "InvalidParameterError",
    "Ledger",
    "LedgerBusyError",
    "LedgerCorruptError",
    "LedgerError",
    "LedgerWriteError",
    "LedgerStorage",
    "ModelGuarantee",
    "ModelShardGuarantee",
    "NotFoundError",
    "PrivacyAccountingError",
    "RecordClass",
    "RecordOverlapError",
    "PrivacyReport",
    "Purpose",
    "ReservationRequest",
    "ReservationStateError",
    "SQLiteStorage",
    "Status",
    "StoredEvent",
    "Unit",
    "UnknownComponentError",
    "UnknownDataSourceError",
    "UnknownModelError",
    "UnknownReservationError",
    "UnknownShardError",
    "UnsupportedEventError",
    "build_report",
    "calibrate_noise_multiplier",
    "compose_events",
    "dp_sgd_event",
    "epsilon_bounds",
    "epsilon_for",
    "event_from_json",
    "event_to_json",
    "gaussian_event",
]

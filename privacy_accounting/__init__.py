"""privacy_accounting: a ledger of differential-privacy events with budgets, accountants and reports.

Standalone (does not import ``dp_tangent``). Events are ``dp_accounting`` event values; epsilons
are the tightest of three valid upper bounds (Opacus RDP, Opacus PRV, dp-accounting PLD) under
the add-or-remove-one neighbouring relation. See ``docs/privacy-accounting.md``.
"""

from privacy_accounting.accountants import (
    ACCOUNTANTS,
    DEFAULT_SETTINGS,
    NEIGHBOURING_RELATION,
    AccountantSettings,
    EpsilonBounds,
    epsilon_bounds,
    epsilon_for,
)
from privacy_accounting.calibration import calibrate_noise_multiplier
from privacy_accounting.composition import ModelGuarantee, ModelShardGuarantee
from privacy_accounting.errors import (
    AccountingError,
    BudgetExceededError,
    CalibrationError,
    InvalidParameterError,
    LedgerBusyError,
    LedgerCorruptError,
    LedgerError,
    NotFoundError,
    PrivacyAccountingError,
    RecordOverlapError,
    ReservationStateError,
    UnknownComponentError,
    UnknownDataSourceError,
    UnknownModelError,
    UnknownReservationError,
    UnknownShardError,
    UnsupportedEventError,
)
from privacy_accounting.events import compose_events, dp_sgd_event, gaussian_event
from privacy_accounting.ledger import Ledger
from privacy_accounting.records import (AuditRecord, Budget, DataSource, Purpose, ReservationRequest, Status,
                                        StoredEvent, Unit)
from privacy_accounting import render_html, render_markdown  # noqa: F401 -- register the report renderers
from privacy_accounting.report import build_report
from privacy_accounting.report_models import PrivacyReport
from privacy_accounting.serialization import event_from_json, event_to_json
from privacy_accounting.sqlite_storage import SQLiteStorage
from privacy_accounting.storage import EventFilter, LedgerStorage, RecordClass

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

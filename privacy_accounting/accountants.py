"""Epsilon upper bounds for a DP event from three accountants, and the tightest of them.

* ``rdp``: Opacus ``RDPAccountant`` (Renyi DP of the subsampled Gaussian, Mironov et al. 2019,
  converted with Balle et al. 2020, Thm 21). Valid upper bound, usually the loosest.
* ``prv``: Opacus ``PRVAccountant`` (Gopi et al. 2021). Its ``get_epsilon`` returns the *upper end*
  of its error interval, ``eps_upper = eps(delta - delta_error) + eps_error``, not the point
  estimate; that is the figure used here (a numerical upper bound within the stated errors).
* ``pld``: ``dp_accounting.pld.PLDAccountant`` with pessimistic discretisation (the default of
  ``from_gaussian_mechanism``) under the add-or-remove-one relation: a valid upper bound.

The reported epsilon is the minimum of these upper bounds, itself a valid upper bound; each is at least 0 (at a
large delta PRV and RDP return negative figures, which would read as a guarantee stronger than any).
Opacus's GDP accountant is deliberately absent: it is a CLT approximation that can fall below
the true epsilon (measured here below the PLD lower bound), so it is not a guarantee.

Opacus, ``dp_accounting`` and numpy are imported by the accountant that computes, not here (Opacus's
accountant files without torch unless the opacus package is loaded: ``opacus_accountants``); each result is
memoised in-process and, when a cache folder is set, on disk (``bounds_cache``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from privacy_accounting import bounds_cache, event_tree
from privacy_accounting.errors import AccountingError, InvalidParameterError, PrivacyAccountingError
from privacy_accounting.event_tree import EventTree, from_json, gaussian_history, is_non_private, merged_history
from privacy_accounting.events import AnyEvent, as_tree, to_dp_event
from privacy_accounting.validation import check_delta

#: Accountants that give valid upper bounds, in the order they are listed in reports.
ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv", "pld")

#: The neighbouring relation every accountant here uses.
NEIGHBOURING_RELATION = "add-or-remove-one"


@dataclass(frozen=True)
class AccountantSettings:
    """Numerical knobs of the accountants (part of every cache key).

    ``pld_value_discretization_interval``: PLD grid step of the privacy loss (dp-accounting default).
    ``prv_eps_error`` / ``prv_delta_error_fraction``: PRV error budget; Opacus's defaults are
    ``eps_error=0.01`` and ``delta_error=delta/1000``.
    """

    pld_value_discretization_interval: float = 1e-4
    prv_eps_error: float = 0.01
    prv_delta_error_fraction: float = 1e-3
    accountants: tuple[str, ...] = ACCOUNTANTS

    def __post_init__(self) -> None:
        if not (0 < self.pld_value_discretization_interval <= 0.1):
            raise InvalidParameterError("pld_value_discretization_interval must be in (0, 0.1]")
        if not (0 < self.prv_eps_error <= 1):
            raise InvalidParameterError("prv_eps_error must be in (0, 1]")
        if not (0 < self.prv_delta_error_fraction < 1):
            raise InvalidParameterError("prv_delta_error_fraction must be in (0, 1)")
        unknown = [a for a in self.accountants if a not in ACCOUNTANTS]
        if unknown or not self.accountants:
            raise InvalidParameterError(
                f"accountants must be a non-empty subset of {ACCOUNTANTS}, got {self.accountants}"
            )


DEFAULT_SETTINGS = AccountantSettings()


@dataclass(frozen=True)
class EpsilonBounds:
    """Epsilon upper bounds at ``delta`` from each accountant (None: not computed or failed).

    ``epsilon`` is the reported guarantee: the smallest valid upper bound; ``accountant`` names it
    (``"non-private"`` when the event contains a NonPrivateDpEvent, ``"none"`` for a no-op).
    """

    delta: float
    rdp: float | None
    prv: float | None
    pld: float | None
    epsilon: float
    accountant: str
    notes: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON)."""
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out


def rdp_epsilon(event: AnyEvent, delta: float) -> float:
    """Opacus RDP epsilon at ``delta`` for the event's (sigma, q, steps) history."""
    from privacy_accounting.opacus_accountants import accountant_classes

    RDPAccountant, _ = accountant_classes()

    tree = as_tree(event)
    if is_non_private(tree):
        return math.inf
    history = merged_history(tree)
    if not history:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = list(history)
    with warnings.catch_warnings():
        # "Optimal order is the largest alpha": the bound stays valid, only looser.
        warnings.simplefilter("ignore", UserWarning)
        return float(accountant.get_epsilon(delta))


def prv_epsilon(event: AnyEvent, delta: float, settings: AccountantSettings = DEFAULT_SETTINGS) -> float:
    """Upper end of Opacus PRV's error interval for epsilon at ``delta`` (what ``get_epsilon`` returns)."""
    import numpy as np

    from privacy_accounting.opacus_accountants import accountant_classes

    _, PRVAccountant = accountant_classes()

    tree = as_tree(event)
    if is_non_private(tree):
        return math.inf
    history = merged_history(tree)
    if not history:
        return 0.0
    accountant = PRVAccountant()
    accountant.history = list(history)
    try:
        # q = 1 makes the PRV density take log(0) at the domain edge, and the domain size is
        # found with RDP, which may warn about its largest order: both harmless, silenced.
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", UserWarning)
            eps = accountant.get_epsilon(
                delta,
                eps_error=settings.prv_eps_error,
                delta_error=delta * settings.prv_delta_error_fraction,
            )
    except (ValueError, RuntimeError, FloatingPointError) as exc:
        raise AccountingError(f"PRV accountant failed: {exc}") from exc
    eps = float(eps)
    if math.isnan(eps):
        raise AccountingError("PRV accountant returned NaN")
    return eps


def pld_epsilon(event: AnyEvent, delta: float, settings: AccountantSettings = DEFAULT_SETTINGS) -> float:
    """dp-accounting PLD epsilon at ``delta`` (pessimistic estimate, add-or-remove-one)."""
    import dp_accounting

    from privacy_accounting.pld_accountant import pld_accountant

    tree = as_tree(event)
    if is_non_private(tree):
        return math.inf
    if not gaussian_history(tree):
        return 0.0
    accountant = pld_accountant()(
        neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
        value_discretization_interval=settings.pld_value_discretization_interval,
    )
    try:
        accountant.compose(to_dp_event(tree))
        eps = float(accountant.get_epsilon(delta))
    except (ValueError, ArithmeticError, dp_accounting.UnsupportedEventError) as exc:
        raise AccountingError(f"PLD accountant failed: {exc}") from exc
    if math.isnan(eps):
        raise AccountingError("PLD accountant returned NaN")
    return eps


def epsilon_for(
    event: AnyEvent, delta: float, accountant: str, settings: AccountantSettings = DEFAULT_SETTINGS
) -> float:
    """Epsilon upper bound at ``delta`` from one named accountant (``"rdp"``, ``"prv"`` or ``"pld"``).

    Computed on the normalised event (same mechanism) and cached per (event, delta, accountant).
    """
    delta = check_delta(delta)
    if accountant not in ACCOUNTANTS:
        raise InvalidParameterError(f"unknown accountant {accountant!r}; choose one of {ACCOUNTANTS}")
    value, error = _cached_epsilon(_key(as_tree(event)), delta, accountant, settings)
    if value is None:
        raise AccountingError(error)
    return value


def epsilon_bounds(event: AnyEvent, delta: float, settings: AccountantSettings = DEFAULT_SETTINGS) -> EpsilonBounds:
    """Every accountant's epsilon at ``delta`` and the reported one, the tightest valid upper bound."""
    delta = check_delta(delta)
    normalized = event_tree.normalize(as_tree(event))
    if is_non_private(normalized):
        figures = {name: (math.inf if name in settings.accountants else None) for name in ACCOUNTANTS}
        return EpsilonBounds(delta=delta, **figures, epsilon=math.inf, accountant="non-private")
    if not gaussian_history(normalized):
        figures = {name: (0.0 if name in settings.accountants else None) for name in ACCOUNTANTS}
        return EpsilonBounds(delta=delta, **figures, epsilon=0.0, accountant="none")
    key = event_tree.to_json(normalized)
    figures: dict[str, float | None] = {name: None for name in ACCOUNTANTS}
    notes: list[str] = []
    for name in settings.accountants:
        figures[name], error = _cached_epsilon(key, delta, name, settings)
        if error:
            notes.append(f"{name}: {error}")
    valid = [(value, name) for name, value in figures.items() if value is not None]
    if not valid:
        raise AccountingError("no accountant produced an epsilon bound: " + "; ".join(notes))
    epsilon, accountant = min(valid, key=lambda pair: pair[0])
    return EpsilonBounds(delta=delta, **figures, epsilon=epsilon, accountant=accountant, notes=tuple(notes))


def epsilon_within(
    event: AnyEvent, delta: float, limit: float, settings: AccountantSettings = DEFAULT_SETTINGS
) -> bool:
    """Whether the tightest bound is <= ``limit``, evaluating the cheapest accountants first.

    Exact same answer as ``epsilon_bounds(...).epsilon <= limit`` (any upper bound <= limit
    implies the tightest is), but stops at the first accountant that shows it.
    """
    delta = check_delta(delta)
    key = _key(as_tree(event))
    for name in ("rdp", "pld", "prv"):
        if name in settings.accountants:
            value, _ = _cached_epsilon(key, delta, name, settings)
            if value is not None and value <= limit:
                return True
    return epsilon_bounds(event, delta, settings).epsilon <= limit


def clear_cache() -> None:
    """Drop the in-process results (tests, or after changing Opacus / dp-accounting in-process); the
    on-disk cache (``bounds_cache``) is keyed by the libraries' versions and this code's digest."""
    _cached_epsilon.cache_clear()
    if "privacy_accounting.pld_accountant" in sys.modules:
        sys.modules["privacy_accounting.pld_accountant"].clear()


def _key(tree: EventTree) -> str:
    """Canonical JSON of the normalised event: equal for every event describing the same mechanism."""
    return event_tree.to_json(event_tree.normalize(tree))


@functools.lru_cache(maxsize=4096)
def _cached_epsilon(
    event_json: str, delta: float, accountant: str, settings: AccountantSettings
) -> tuple[float | None, str]:
    """(epsilon, "") or (None, error message) for a normalised event's JSON; read from and written to
    the on-disk cache when one is in use."""
    computation = _computation(event_json, delta, accountant, settings)
    stored = bounds_cache.lookup(computation)
    if stored is not None:
        return stored
    result = ((_elsewhere is not None and _elsewhere(event_json, delta, accountant, settings))
              or compute_epsilon(event_json, delta, accountant, settings))
    bounds_cache.store(computation, result)
    return result


#: Computes a figure in another process (``accountant_worker``: :func:`compute_elsewhere`); its None: compute here.
_elsewhere: Callable[[str, float, str, AccountantSettings], tuple[float | None, str] | None] | None = None


def compute_elsewhere(compute: Callable[[str, float, str, AccountantSettings], tuple[float | None, str] | None]
                      | None) -> None:
    """Send every figure no cache holds to ``compute`` (None: compute them here), which returns what
    :func:`compute_epsilon` would, or None to have it computed here after all."""
    global _elsewhere
    _elsewhere = compute


def compute_epsilon(event_json: str, delta: float, accountant: str, settings: AccountantSettings
                    ) -> tuple[float | None, str]:
    """One accountant's figure for a normalised event's JSON, computed in this process: (epsilon, "") or (None,
    the accountant's error message); what ``accountant_worker`` computes too."""
    tree = from_json(event_json)
    compute = {"rdp": rdp_epsilon, "prv": prv_epsilon, "pld": pld_epsilon}[accountant]
    try:
        value = compute(tree, delta) if accountant == "rdp" else compute(tree, delta, settings)
    except PrivacyAccountingError as exc:
        return (None, str(exc))
    except (ArithmeticError, MemoryError) as exc:  # e.g. a huge step count: that accountant gives no figure
        return (None, f"{accountant.upper()} accountant failed: {type(exc).__name__}: {str(exc)[:200]}")
    # at a large delta PRV and RDP go below 0 (PLD stops at 0): epsilon 0 is the bound such a figure supports
    return (max(0.0, value), "")


def import_accountants() -> None:
    """Import what every accountant computes with (scipy, dp-accounting, Opacus's accountant files): the time a
    first figure takes beyond its computing (``accountant_worker`` does this while its program starts)."""
    from privacy_accounting import pld_accountant, pld_gaussian  # noqa: F401
    from privacy_accounting.opacus_accountants import accountant_classes

    accountant_classes()


def _computation(event_json: str, delta: float, accountant: str, settings: AccountantSettings) -> str:
    """What a figure is a function of, as JSON text: the on-disk cache's key before versions."""
    knobs = {k: v for k, v in asdict(settings).items() if k != "accountants"}
    return json.dumps({"event": event_json, "delta": float(delta).hex(), "accountant": accountant,
                       "settings": knobs, "code": _code_digest()}, sort_keys=True)


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """sha256 of the modules that turn an event into a figure (this one, the event conversions, the loader of
    Opacus's accountants, the PLD accountant and its one-step PLD)."""
    digest = hashlib.sha256()
    for name in ("accountants.py", "events.py", "event_tree.py", "opacus_accountants.py", "pld_accountant.py",
                 "pld_gaussian.py"):
        digest.update((Path(__file__).with_name(name)).read_bytes())
    return digest.hexdigest()

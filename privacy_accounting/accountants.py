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
memoised in-process and, when a cache folder is set, on disk (``bounds_cache``). Every figure is computed with BLAS
on one thread, so that it has the same bits whatever the machine's number of cores. A :class:`FigureService`
(``accountant_worker``) may compute them in other processes, several at once when a caller names them first
(:func:`prefetch`).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import json
import math
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

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
    ``prv_max_points`` / ``pld_epsilon_limit``: PRV is not run where its grid would hold more points, nor PLD where
    RDP bounds epsilon above the limit (``inf``: no limit). Their grids span the privacy loss (PRV's also grows
    finer with the steps), and their work with them (review 109: a misconfigured run made ``budget show`` seem to
    hang). Measured on 2 cores: PRV 2 s at 3.4 M points, 5 s at 12 M, over a minute at 64 M (epsilon 2700, or
    epsilon 310 over 10^7 steps); PLD 7 s for a Gaussian at epsilon 290, over a minute at 5600. The reported figure
    is then the tightest of the others, a valid bound all the same (RDP's is about 10% above theirs there).
    """

    pld_value_discretization_interval: float = 1e-4
    prv_eps_error: float = 0.01
    prv_delta_error_fraction: float = 1e-3
    prv_max_points: float = 2.0**24
    pld_epsilon_limit: float = 300.0
    accountants: tuple[str, ...] = ACCOUNTANTS

    def __post_init__(self) -> None:
        if not (0 < self.pld_value_discretization_interval <= 0.1):
            raise InvalidParameterError("pld_value_discretization_interval must be in (0, 0.1]")
        if not (0 < self.prv_eps_error <= 1):
            raise InvalidParameterError("prv_eps_error must be in (0, 1]")
        if not (0 < self.prv_delta_error_fraction < 1):
            raise InvalidParameterError("prv_delta_error_fraction must be in (0, 1)")
        for name in ("prv_max_points", "pld_epsilon_limit"):
            if not getattr(self, name) > 0:  # NaN too
                raise InvalidParameterError(f"{name} must be positive (inf: no limit)")
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
    accountant._get_domain = _bounded(accountant._get_domain, settings.prv_max_points)  # an Opacus internal
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


def _bounded(get_domain: Callable[..., Any], max_points: float) -> Callable[..., Any]:
    """PRV's ``_get_domain``, refusing (:class:`AccountingError`) a grid of more than ``max_points`` before anything
    is computed on it (see :class:`AccountantSettings`)."""

    def domain(**kwargs: Any) -> Any:
        found = get_domain(**kwargs)
        if found.size > max_points:
            raise AccountingError(f"PRV not run: its grid would hold {found.size:.3g} points, over {max_points:.3g} "
                                  "(minutes of work); it grows with epsilon and, finer, with the steps")
        return found

    return domain


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
    _submit([(key, delta)], settings)  # its accountants side by side, where figures are computed elsewhere
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
    _memo.clear()
    if "privacy_accounting.pld_accountant" in sys.modules:
        sys.modules["privacy_accounting.pld_accountant"].clear()


def _key(tree: EventTree) -> str:
    """Canonical JSON of the normalised event: equal for every event describing the same mechanism."""
    return event_tree.to_json(event_tree.normalize(tree))


#: One figure to compute: a normalised event's JSON, delta, accountant and settings (what a figure is a function of).
Request = tuple[str, float, str, AccountantSettings]
#: What an accountant gave: (epsilon, "") or (None, its error message).
Result = tuple[float | None, str]


class _Memo:
    """The figures this process has computed or read, the last :attr:`SIZE` used (thread-safe)."""

    SIZE = 4096

    def __init__(self) -> None:
        self._results: collections.OrderedDict[Request, Result] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, request: Request) -> Result | None:
        with self._lock:
            if request in self._results:
                self._results.move_to_end(request)
            return self._results.get(request)

    def put(self, request: Request, result: Result) -> None:
        with self._lock:
            self._results[request] = result
            self._results.move_to_end(request)
            while len(self._results) > self.SIZE:
                self._results.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._results.clear()


_memo = _Memo()


def _cached_epsilon(event_json: str, delta: float, accountant: str, settings: AccountantSettings) -> Result:
    """(epsilon, "") or (None, error message) for a normalised event's JSON; read from and written to
    the on-disk cache when one is in use."""
    request = (event_json, delta, accountant, settings)
    known = _memo.get(request)
    if known is not None:
        return known
    computation = _computation(*request)
    result = bounds_cache.lookup(computation)
    if result is None:
        result = (_elsewhere is not None and _elsewhere.compute(*request)) or compute_epsilon(*request)
        bounds_cache.store(computation, result)
    _memo.put(request, result)
    return result


class FigureService(Protocol):
    """Computes figures in other processes (``accountant_worker``), as :func:`compute_epsilon` would, bit for bit."""

    def compute(self, event_json: str, delta: float, accountant: str, settings: AccountantSettings
                ) -> Result | None:
        """One figure, waiting for it (a figure :meth:`submit` sent included); None: compute it here instead."""

    def submit(self, requests: Sequence[Request]) -> None:
        """Start computing ``requests``, side by side where it can, without waiting: :meth:`compute` collects
        each."""


#: Where figures no cache holds are computed (:func:`compute_elsewhere`); None: in this process.
_elsewhere: FigureService | None = None


def compute_elsewhere(service: FigureService | None) -> None:
    """Send every figure no cache holds to ``service`` (None: compute them here)."""
    global _elsewhere
    _elsewhere = service


#: The accountants by their cost, dearest first (prefetched in this order: the longest starts first).
_BY_COST = ("pld", "prv", "rdp")


def prefetch(requests: Iterable[tuple[AnyEvent, float]], settings: AccountantSettings = DEFAULT_SETTINGS) -> None:
    """Start computing the figures of every (event, delta) in ``requests`` that no cache holds, side by side, where a
    :class:`FigureService` is in use (else nothing: each is computed when asked). A caller that will ask for many
    figures names them first, so that they are computed in parallel; the figures are those it would get anyway."""
    if _elsewhere is None:
        return
    keys = []
    for event, delta in requests:
        normalized = event_tree.normalize(as_tree(event))
        if not is_non_private(normalized) and gaussian_history(normalized):
            keys.append((event_tree.to_json(normalized), check_delta(delta)))
    _submit(keys, settings)


def _submit(keys: Iterable[tuple[str, float]], settings: AccountantSettings) -> None:
    """:func:`prefetch` of (normalised event's JSON, checked delta) pairs: every accountant's figure no cache holds."""
    service = _elsewhere
    if service is None:
        return
    todo: list[Request] = []
    for key, delta in keys:
        for name in sorted(settings.accountants, key=_BY_COST.index):
            request = (key, delta, name, settings)
            if request in todo or _memo.get(request) is not None:
                continue
            stored = bounds_cache.lookup(_computation(*request))
            if stored is not None:
                _memo.put(request, stored)
            else:
                todo.append(request)
    if todo:
        service.submit(todo)


class _OneBlasThread:
    """BLAS on one thread while any figure computes: a threaded dot product sums in another order, and PRV's and
    PLD's figures changed in their last bits with the number of threads (so with the machine); one thread gives
    every process the same bits. Threads computing figures at once share one limit, set by the first and lifted by
    the last (threadpoolctl's own limits, nested across threads, left the count at 1 for good: review 111)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._limits: Any = None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._holders == 0:
                self._limits = _blas_controller().limit(limits=1, user_api="blas")
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    self._limits.restore_original_limits()
                    self._limits = None


_one_blas_thread = _OneBlasThread()


@functools.cache
def _blas_controller() -> Any:
    """threadpoolctl's view of the BLAS libraries the accountants use, found once (a search of the loaded libraries
    took 1.8 ms, a tenth of a report curve's figure)."""
    from threadpoolctl import ThreadpoolController

    import_accountants()  # a controller holds the libraries loaded when it is made: theirs first
    return ThreadpoolController()


def compute_epsilon(event_json: str, delta: float, accountant: str, settings: AccountantSettings) -> Result:
    """One accountant's figure for a normalised event's JSON, computed in this process: (epsilon, "") or (None,
    the accountant's error message); what ``accountant_worker`` computes too."""
    tree = from_json(event_json)
    compute = {"rdp": rdp_epsilon, "prv": prv_epsilon, "pld": pld_epsilon}[accountant]
    try:
        with _one_blas_thread():
            if accountant == "pld":
                _within_pld_limit(tree, delta, settings)
            value = compute(tree, delta) if accountant == "rdp" else compute(tree, delta, settings)
    except PrivacyAccountingError as exc:
        return (None, str(exc))
    except (ArithmeticError, MemoryError) as exc:  # e.g. a huge step count: that accountant gives no figure
        return (None, f"{accountant.upper()} accountant failed: {type(exc).__name__}: {str(exc)[:200]}")
    # at a large delta PRV and RDP go below 0 (PLD stops at 0): epsilon 0 is the bound such a figure supports
    return (max(0.0, value), "")


def _within_pld_limit(tree: EventTree, delta: float, settings: AccountantSettings) -> None:
    """Refuse (:class:`AccountingError`) to run PLD where RDP bounds epsilon at ``delta`` above
    ``settings.pld_epsilon_limit`` (see :class:`AccountantSettings`)."""
    limit = settings.pld_epsilon_limit
    if math.isinf(limit):
        return
    rdp = rdp_epsilon(tree, delta)  # milliseconds, once per mechanism and process (Opacus's orders are cached)
    if rdp > limit:
        raise AccountingError(f"PLD not run: RDP bounds epsilon at {rdp:.4g}, above {limit:g}, where PLD's grid, and "
                              "its work, grow with epsilon (minutes in the thousands)")


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

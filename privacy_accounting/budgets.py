"""Budget resolution and enforcement.

A shard's limit is its own budget if set, else its data source's: shards of one source are
assumed disjoint, so by parallel composition a source budget bounds every shard separately.
Spent = epsilon (at the limit's delta, tightest valid accountant) of the *sequential composition*
of every event on the shard, reserved, completed and failed alike.
"""

from __future__ import annotations

import math
from typing import Sequence

from privacy_accounting.accountants import AccountantSettings, EpsilonBounds, epsilon_bounds, epsilon_within
from privacy_accounting.errors import BudgetExceededError
from privacy_accounting.event_tree import compose
from privacy_accounting.events import AnyEvent, as_tree, is_non_private
from privacy_accounting.records import Budget


def effective_budget(source_budget: Budget | None, shard_budget: Budget | None) -> Budget | None:
    """The shard's own budget if set, else the data source's, else None (no budget set)."""
    return shard_budget if shard_budget is not None else source_budget


def budget_of(budgets: Sequence[Budget], data_source: str, shard: str) -> Budget | None:
    """The limit of a shard among ``budgets``: its own, else its data source's, else None."""
    source = next((b for b in budgets if b.data_source == data_source and b.shard is None), None)
    own = next((b for b in budgets if b.data_source == data_source and b.shard == shard), None)
    return effective_budget(source, own)


def composed_bounds(events: Sequence[AnyEvent], delta: float, settings: AccountantSettings) -> EpsilonBounds:
    """Epsilon bounds of the sequential composition of ``events`` (``ComposedDpEvent``) at ``delta``."""
    return epsilon_bounds(compose([as_tree(e) for e in events]), delta, settings)


def enforce_budget(
    *,
    data_source: str,
    shard: str,
    budget: Budget | None,
    existing: Sequence[AnyEvent],
    new_event: AnyEvent,
    settings: AccountantSettings,
    shared: bool = False,
) -> None:
    """Raise :class:`BudgetExceededError` if adding ``new_event`` takes the shard above ``budget`` (``shared``:
    ``existing`` are the events that read records it shares with runs on other shards, not the shard's).

    No budget: always allowed. A non-private event (epsilon = inf) is refused by any budget.
    The decision is exactly "tightest bound after <= limit"; cheap accountants are tried first
    and the full figures are only computed to explain a refusal.
    """
    if budget is None:
        return
    common = dict(
        data_source=data_source,
        shard=shard,
        limit=budget.epsilon,
        delta=budget.delta,
        scope=budget.scope.replace("_", " "),
        shared=shared,
    )
    whose = "those records'" if shared else "the shard's"
    if is_non_private(new_event):
        before = composed_bounds(existing, budget.delta, settings)
        raise BudgetExceededError(
            **common,
            spent=before.epsilon,
            requested=math.inf,
            spent_after=math.inf,
            accountant="non-private",
            requested_kind="the event's own epsilon: a non-private event is refused under any finite budget",
        )
    if epsilon_within(compose([as_tree(e) for e in [*existing, new_event]]), budget.delta, budget.epsilon, settings):
        return
    before = composed_bounds(existing, budget.delta, settings)
    after = composed_bounds([*existing, new_event], budget.delta, settings)
    if math.isfinite(before.epsilon):
        requested = after.epsilon - before.epsilon
        kind = f"increment of {whose} composed epsilon, after minus before"
    else:
        requested = epsilon_bounds(new_event, budget.delta, settings).epsilon
        kind = f"the event's own epsilon, as {whose} spend is already infinite" + (
            ": a non-private run read them" if shared else "")
    raise BudgetExceededError(
        **common,
        spent=before.epsilon,
        requested=requested,
        spent_after=after.epsilon,
        accountant=after.accountant,
        requested_kind=kind,
    )

"""Composition rules over stored events: sequential within a shard, parallel across shards.

* Sequential: all events on one shard compose adaptively, ``ComposedDpEvent([e1, e2, ...])``,
  accounted jointly (adding per-event epsilons is only a looser upper bound). Retraining after a
  deletion is one more event on the shard: the remaining records pay again.
* Parallel: shards of a data source are disjoint in the unit of privacy, and a record influences
  only the events run on its shard, so a model built from components on several shards gives
  each record the guarantee of its own shard: ``eps_model = max_shard eps(events of that shard
  feeding the model)``, not the sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from privacy_accounting.accountants import AccountantSettings, EpsilonBounds
from privacy_accounting.budgets import composed_bounds
from privacy_accounting.records import StoredEvent

ShardKey = tuple[str, str]


def group_by_shard(events: Iterable[StoredEvent]) -> dict[ShardKey, list[StoredEvent]]:
    """(data_source, shard) -> that shard's events, keeping ledger order."""
    groups: dict[ShardKey, list[StoredEvent]] = {}
    for event in sorted(events, key=lambda e: e.seq):
        groups.setdefault((event.data_source, event.shard), []).append(event)
    return groups


def shard_bounds(events: Sequence[StoredEvent], delta: float, settings: AccountantSettings) -> EpsilonBounds:
    """Bounds of the sequential composition of ``events`` (all statuses count) at ``delta``."""
    return composed_bounds([e.event for e in events], delta, settings)


@dataclass(frozen=True)
class ModelShardGuarantee:
    """One shard feeding a model: the model's events on it, and everything ever run on it."""

    data_source: str
    shard: str
    components: tuple[str, ...]
    model_bounds: EpsilonBounds
    shard_total_bounds: EpsilonBounds
    n_model_events: int
    n_shard_events: int


@dataclass(frozen=True)
class ModelGuarantee:
    """Per-record guarantee of a composed model: the largest epsilon over the shards it draws on.

    ``epsilon`` is at ``delta`` with the tightest valid accountant; ``binding`` is the shard
    attaining the maximum. Records of other data sources, or of no feeding shard, are not touched.
    """

    name: str
    components: tuple[str, ...]
    delta: float
    epsilon: float
    accountant: str
    binding: ShardKey | None
    shards: tuple[ModelShardGuarantee, ...]


def model_guarantee(
    name: str,
    components: Sequence[str],
    events: Sequence[StoredEvent],
    delta: float,
    settings: AccountantSettings,
) -> ModelGuarantee:
    """Parallel composition over shards of the sequential composition of each shard's model events."""
    wanted = set(components)
    all_by_shard = group_by_shard(events)
    per_shard: list[ModelShardGuarantee] = []
    for key, shard_events in all_by_shard.items():
        feeding = [e for e in shard_events if e.component in wanted]
        if not feeding:
            continue
        per_shard.append(
            ModelShardGuarantee(
                data_source=key[0],
                shard=key[1],
                components=tuple(dict.fromkeys(e.component for e in feeding)),
                model_bounds=shard_bounds(feeding, delta, settings),
                shard_total_bounds=shard_bounds(shard_events, delta, settings),
                n_model_events=len(feeding),
                n_shard_events=len(shard_events),
            )
        )
    if not per_shard:
        return ModelGuarantee(name, tuple(components), delta, 0.0, "none", None, ())
    worst = max(per_shard, key=lambda s: s.model_bounds.epsilon)
    return ModelGuarantee(
        name=name,
        components=tuple(components),
        delta=delta,
        epsilon=worst.model_bounds.epsilon,
        accountant=worst.model_bounds.accountant,
        binding=(worst.data_source, worst.shard),
        shards=tuple(per_shard),
    )

"""Composition rules over stored events: per record, sequential over every event that read it.

* Sequential: all events that read a record compose adaptively, ``ComposedDpEvent([e1, e2, ...])``,
  accounted jointly (adding per-event epsilons is only a looser upper bound). Retraining after a
  deletion is one more event on the shard: the remaining records pay again.
* Per record: an event that names its records charges exactly those; one that names none charges
  every record of its shard. A record's guarantee is the composition of every event that charged
  it, whatever model or component (removed ones included) the event produced.
* Parallel: shards of a data source hold disjoint records (the ledger refuses an overlap unless
  allowed, and then charges the overlapping records for both), so a model built from several
  shards gives each record the guarantee of its own events: ``eps_model = max over its records``,
  not the sum over shards.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence

from privacy_accounting.accountants import AccountantSettings, EpsilonBounds
from privacy_accounting.budgets import composed_bounds
from privacy_accounting.records import StoredEvent
from privacy_accounting.storage import RecordClass

ShardKey = tuple[str, str]


class RecordClasses(Protocol):
    """``(data_source, event sequence numbers) -> record classes`` (``Ledger.record_classes``; ``shared``: only the
    classes of records another event read too)."""

    def __call__(self, data_source: str, seqs: Sequence[int], *, shared: bool = False) -> list[RecordClass]: ...


#: Record classes of only the records another event read too (``Ledger.shared_record_classes``).
SharedRecordClasses = Callable[[str, Sequence[int]], list[RecordClass]]


def _keep_largest(into: dict[ShardKey, EpsilonBounds], key: ShardKey, bounds: EpsilonBounds) -> None:
    """``into[key]``: the larger-epsilon of what it holds and ``bounds``."""
    if key not in into or bounds.epsilon > into[key].epsilon:
        into[key] = bounds


def group_by_shard(events: Iterable[StoredEvent]) -> dict[ShardKey, list[StoredEvent]]:
    """(data_source, shard) -> that shard's events, keeping ledger order."""
    groups: dict[ShardKey, list[StoredEvent]] = {}
    for event in sorted(events, key=lambda e: e.seq):
        groups.setdefault((event.data_source, event.shard), []).append(event)
    return groups


def shard_bounds(events: Sequence[StoredEvent], delta: float, settings: AccountantSettings) -> EpsilonBounds:
    """Bounds of the sequential composition of ``events`` (all statuses count) at ``delta``."""
    return composed_bounds([e.tree for e in events], delta, settings)


@dataclass(frozen=True)
class ModelShardGuarantee:
    """One shard feeding a model: the model's events on it, every event on the records the model
    read there (``record_bounds``, the guarantee), and everything ever run on the shard."""

    data_source: str
    shard: str
    components: tuple[str, ...]
    model_bounds: EpsilonBounds
    shard_total_bounds: EpsilonBounds
    n_model_events: int
    n_shard_events: int
    record_bounds: EpsilonBounds


def records_bounds(feeding: Sequence[StoredEvent], events: Sequence[StoredEvent], delta: float,
                   settings: AccountantSettings, record_classes: RecordClasses | None
                   ) -> tuple[EpsilonBounds, dict[ShardKey, EpsilonBounds]]:
    """The largest, over the records ``feeding`` read, of the composition of every event that read
    the record; and, for each shard whose events read some of those records (``feeding``'s own and,
    where an overlap was allowed, others), the largest of it over the records it holds: the figure that
    shard's budget binds for them. Events naming no records read their whole shard; if a feeding event
    names none, every event of its shard is counted, and with them, for those of its records that events
    of other shards read too, those events."""
    whole_shard = group_by_shard(e for e in events if e.records_read is None)
    per_shard: dict[ShardKey, EpsilonBounds] = {}
    classes: RecordClasses | SharedRecordClasses | None = record_classes
    if record_classes is None or any(e.records_read is None for e in feeding):
        shards = frozenset((e.data_source, e.shard) for e in feeding)
        bounds = composed_bounds([e.tree for e in events if (e.data_source, e.shard) in shards], delta, settings)
        per_shard.update(dict.fromkeys(shards, bounds))
        if record_classes is None:
            return bounds, per_shard
        # it read every record of its shards: among them, those another shard's runs read too (an allowed overlap;
        # only those can be above the shards' composition, so only their classes are read)
        feeding = [e for e in events if (e.data_source, e.shard) in shards and e.records_read is not None]
        classes = functools.partial(record_classes, shared=True)
    assert classes is not None
    for _, readers, _ in reader_groups(feeding, events, whole_shard, classes):
        bounds = composed_bounds([e.tree for e in readers], delta, settings)
        for key in {(e.data_source, e.shard) for e in readers}:
            _keep_largest(per_shard, key, bounds)
    if not per_shard:  # the records they read were all deleted since: only their own events
        bounds = composed_bounds([e.tree for e in feeding], delta, settings)
        return bounds, dict.fromkeys({(e.data_source, e.shard) for e in feeding}, bounds)
    return max(per_shard.values(), key=lambda b: b.epsilon), per_shard


def reader_groups(feeding: Sequence[StoredEvent], events: Sequence[StoredEvent],
                  whole_shard: dict[ShardKey, list[StoredEvent]], record_classes: RecordClasses | SharedRecordClasses
                  ) -> Iterable[tuple[str, list[StoredEvent], int]]:
    """For each group of the records ``feeding`` read (each naming them): the data source ``feeding``'s events ran
    on, every event that read them, in ledger order, those of their shards that named no records (``whole_shard``)
    included, and how many records it holds."""
    by_seq = {e.seq: e for e in events}
    for data_source in sorted({e.data_source for e in feeding}):
        mine = [e.seq for e in feeding if e.data_source == data_source]
        for group in record_classes(data_source, mine):
            readers = {q: by_seq[q] for q in group.seqs if q in by_seq}
            for key in {(e.data_source, e.shard) for e in readers.values()}:
                readers.update((e.seq, e) for e in whole_shard.get(key, ()))
            yield data_source, [readers[q] for q in sorted(readers)], group.count


def shard_records_bounds(data_source: str, shard: str, events: Sequence[StoredEvent], delta: float,
                         settings: AccountantSettings,
                         record_classes: RecordClasses | SharedRecordClasses | None = None
                         ) -> tuple[EpsilonBounds, frozenset[ShardKey]]:
    """What the records of a shard have spent: the composition of the shard's events, or more where events of
    other shards also read some of its records (an overlap allowed on purpose), whose composition with every
    event that read them is then the figure (per record, as budgets are enforced); and those other shards.
    ``events``: the ledger's; ``record_classes`` may give only the classes of records other events read too (the
    others change nothing)."""
    key = (data_source, shard)
    own = [e for e in events if (e.data_source, e.shard) == key]
    worst = shard_bounds(own, delta, settings)
    named = [e for e in own if e.records_read is not None]
    others: set[ShardKey] = set()
    if record_classes is None or not named:
        return worst, frozenset()
    whole_shard = group_by_shard(e for e in events if e.records_read is None)
    for _, readers, _ in reader_groups(named, events, whole_shard, record_classes):
        shards = {(e.data_source, e.shard) for e in readers} - {key}
        if not shards:
            continue  # some of the shard's own events: within its composition
        others |= shards
        bounds = composed_bounds([e.tree for e in readers], delta, settings)
        if bounds.epsilon > worst.epsilon:
            worst = bounds
    return worst, frozenset(others)


def record_guarantees(events: Sequence[StoredEvent], delta: float, settings: AccountantSettings,
                      record_classes: RecordClasses, data_source: str | None = None) -> list[tuple[EpsilonBounds, int]]:
    """(bounds, number of records) for every group of records of ``events`` (the ledger's: a record key is one
    record whatever the data source) read by the same events (those naming no records read every record of their
    shard), of ``data_source`` only if given; events naming no records form one group per shard too (their record
    count is unknown: 0)."""
    out: list[tuple[EpsilonBounds, int]] = []
    whole_shard = group_by_shard(e for e in events if e.records_read is None)
    named = [e for e in events if e.records_read is not None and data_source in (None, e.data_source)]
    for _, readers, count in reader_groups(named, events, whole_shard, record_classes):
        out.append((composed_bounds([e.tree for e in readers], delta, settings), count))
    for (source, _), shard_events in whole_shard.items():
        if data_source not in (None, source):
            continue
        out.append((composed_bounds([e.tree for e in shard_events], delta, settings), 0))
    return out


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
    #: every shard whose events read a record of the model (its own, and others where an overlap was allowed), with
    #: the largest composition over the model's records it holds: the figure that shard's budget binds for the model
    record_shards: tuple[tuple[ShardKey, EpsilonBounds], ...] = ()


def model_guarantee(
    name: str,
    components: Sequence[str],
    events: Sequence[StoredEvent],
    delta: float,
    settings: AccountantSettings,
    record_classes: RecordClasses | None = None,
) -> ModelGuarantee:
    """Per record of the model, the composition of every event that read it; the largest is the
    model's guarantee (see the module doc). Without ``record_classes`` every event of a feeding
    shard counts (the cautious reading)."""
    wanted = set(components)
    all_by_shard = group_by_shard(events)
    per_shard: list[ModelShardGuarantee] = []
    touched: dict[ShardKey, EpsilonBounds] = {}
    for key, shard_events in all_by_shard.items():
        feeding = [e for e in shard_events if e.component in wanted]
        if not feeding:
            continue
        record_bounds, reading = records_bounds(feeding, events, delta, settings, record_classes)
        for other, bounds in reading.items():
            _keep_largest(touched, other, bounds)
        per_shard.append(
            ModelShardGuarantee(
                data_source=key[0],
                shard=key[1],
                components=tuple(dict.fromkeys(e.component for e in feeding)),
                model_bounds=shard_bounds(feeding, delta, settings),
                shard_total_bounds=shard_bounds(shard_events, delta, settings),
                n_model_events=len(feeding),
                n_shard_events=len(shard_events),
                record_bounds=record_bounds,
            )
        )
    if not per_shard:
        return ModelGuarantee(name, tuple(components), delta, 0.0, "none", None, ())
    worst = max(per_shard, key=lambda s: s.record_bounds.epsilon)
    return ModelGuarantee(
        name=name,
        components=tuple(components),
        delta=delta,
        epsilon=worst.record_bounds.epsilon,
        accountant=worst.record_bounds.accountant,
        binding=(worst.data_source, worst.shard),
        shards=tuple(per_shard),
        record_shards=tuple(sorted(touched.items(), key=lambda item: item[0])),
    )


def record_shards_at(guarantee: ModelGuarantee, delta_of: Callable[[ShardKey], float | None],
                     at_delta: Callable[[float], ModelGuarantee]) -> dict[ShardKey, tuple[float, EpsilonBounds]]:
    """Per shard holding the model's records, (delta, what those records have spent at it): at the delta
    ``delta_of`` gives for the shard (its budget's), else the guarantee's; ``at_delta`` computes the guarantee at
    another delta (once per delta)."""
    again = {guarantee.delta: guarantee}
    out: dict[ShardKey, tuple[float, EpsilonBounds]] = {}
    for key, bounds in guarantee.record_shards:
        delta = delta_of(key)
        if delta is None:
            delta = guarantee.delta
        if delta not in again:
            again[delta] = at_delta(delta)
        out[key] = (delta, dict(again[delta].record_shards)[key])
    return out

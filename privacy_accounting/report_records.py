"""Per-record guarantees for the report: how many records sit at which epsilon, and which shards overlap.

A record's guarantee is the composition of every event that read it (see :mod:`.composition`):
an event that names its records charges exactly those, one that names none charges its whole
shard. Records are grouped by the set of events that read them, so each record counts once;
groups with the same epsilon are merged. A group read by events on more than one shard is an
*overlap*: those records are charged every run on every such shard, and the report says so
instead of claiming the shards are disjoint.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

from privacy_accounting.accountants import AccountantSettings, EpsilonBounds
from privacy_accounting.budgets import composed_bounds
from privacy_accounting.composition import RecordClasses, ShardKey, group_by_shard, reader_groups
from privacy_accounting.records import StoredEvent
from privacy_accounting.report_models import GuaranteeGroup, ShardOverlap

Disjointness = str  # "checked" | "overlap" | "unchecked" | "no events"


@dataclass(frozen=True)
class RecordDistribution:
    """Groups of records by guarantee, overlaps between shards, and how disjointness is known."""

    groups: list[GuaranteeGroup]
    overlaps: list[ShardOverlap]
    disjointness: Disjointness


def _label(key: ShardKey, data_source: str) -> str:
    return key[1] if key[0] == data_source else f"{key[0]}/{key[1]}"


def labelled_shard(label: str, data_source: str) -> ShardKey:
    """The shard a table's label names: ``source/shard``, or a shard of ``data_source`` (names hold no ``/``)."""
    source, _, shard = label.rpartition("/")
    return (source or data_source, shard)


def record_distribution(feeding: Sequence[StoredEvent], events: Sequence[StoredEvent], delta: float,
                        settings: AccountantSettings, record_classes: RecordClasses | None,
                        live: frozenset[int] | None = None) -> RecordDistribution:
    """The guarantees of the records ``feeding`` read, each the composition of every event in ``events``
    that read it. A shard where a feeding event named no records (or every shard, without
    ``record_classes``) is one group of unknown size charged everything run on it: the cautious
    reading, the same one :func:`~privacy_accounting.composition.model_guarantee` takes; the records of it that its
    runs named and other shards' runs read too are groups of their own, charged every run that read them. ``live``:
    the events of components a registered model holds; given, records read by none of them are grouped apart
    (:attr:`GuaranteeGroup.in_a_model`)."""
    if not feeding:
        return RecordDistribution([], [], "no events")
    shards = group_by_shard(events)
    whole = {(e.data_source, e.shard) for e in feeding if e.records_read is None or record_classes is None}
    raw: list[tuple[EpsilonBounds, int | None, list[str], bool | None]] = []

    def in_a_model(seqs: set[int]) -> bool | None:
        return None if live is None else bool(seqs & live)

    several = len({e.data_source for e in feeding}) > 1  # a model's records of several sources: every label in full

    def label(key: tuple[str, str], data_source: str) -> str:
        return f"{key[0]}/{key[1]}" if several else _label(key, data_source)

    for key in sorted(whole):
        bounds = composed_bounds([e.tree for e in shards.get(key, [])], delta, settings)
        raw.append((bounds, None, [label(key, key[0])], in_a_model({e.seq for e in shards.get(key, [])})))
    overlaps: dict[tuple[str, tuple[str, ...]], int] = {}
    seen: set[frozenset[int]] = set()
    named = [e for e in feeding if (e.data_source, e.shard) not in whole]
    # and of a whole shard, the records its runs named that other shards' runs read too (review 70: charged only the
    # shard's runs, they were below the shard's figure, and their known overlap was called unchecked)
    passes = [] if record_classes is None else [(named, record_classes)] + [
        ([e for e in shards.get(key, []) if e.records_read is not None], functools.partial(record_classes, shared=True))
        for key in sorted(whole)]
    unnamed = group_by_shard(e for e in events if e.records_read is None)
    for runs, classes in passes:
        for data_source, readers, count in reader_groups(runs, events, unnamed, classes):
            seqs = frozenset(e.seq for e in readers)
            if seqs in seen:  # a group is its readers, whatever the data source: listed once (review 71)
                continue
            seen.add(seqs)
            keys = {(e.data_source, e.shard) for e in readers}
            labels = sorted(label(k, data_source) for k in keys)
            bounds = composed_bounds([e.tree for e in readers], delta, settings)
            raw.append((bounds, count, labels, in_a_model(set(seqs))))  # whole-shard readers too
            if len(keys) > 1:
                overlaps[(data_source, tuple(labels))] = overlaps.get((data_source, tuple(labels)), 0) + count
    disjointness = "unchecked" if whole else "overlap" if overlaps else "checked"  # overlaps: those it found
    return RecordDistribution(_merge(raw), [ShardOverlap(data_source=ds, shards=list(s), records=n)
                                            for (ds, s), n in sorted(overlaps.items())], disjointness)


def _merge(raw: list[tuple[EpsilonBounds, int | None, list[str], bool | None]]) -> list[GuaranteeGroup]:
    """Groups with the same epsilon (to 10 significant digits), known sizes and standing (in a model or not)
    merged, by epsilon, those in a model first."""
    merged: dict[tuple[str, bool, bool | None], GuaranteeGroup] = {}
    for bounds, count, labels, current in raw:
        key = (f"{bounds.epsilon:.10g}", count is None, current)
        if key in merged:
            old = merged[key]
            records = None if count is None else (old.records or 0) + count
            merged[key] = old.model_copy(update={"records": records, "shards": sorted(set(old.shards) | set(labels))})
        else:
            merged[key] = GuaranteeGroup(epsilon=bounds.epsilon, accountant=bounds.accountant, records=count,
                                         shards=sorted(labels), in_a_model=current)
    return sorted(merged.values(), key=lambda g: (g.in_a_model is False, g.epsilon, g.records is None))

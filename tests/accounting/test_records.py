"""Per-record accounting: events charge the records they read; overlapping shards are refused or charged."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from privacy_accounting import (
    BudgetExceededError,
    Ledger,
    RecordOverlapError,
    ReservationRequest,
    compose_events,
    dp_sgd_event,
    epsilon_bounds,
)

DELTA = 1e-5
RUN = dp_sgd_event(1.2, 0.02, 100)
RETRAIN = dp_sgd_event(1.2, 0.02, 60)
RECORDS = frozenset(f"r{i}" for i in range(200))


def request(shard: str, component: str, records: frozenset[str] = RECORDS, event=RUN,
            purpose: str = "training") -> ReservationRequest:
    return ReservationRequest(data_source="digits", shard=shard, event=event, delta=DELTA, purpose=purpose,
                              operator="alice", component=component, records=records)


def eps(*events) -> float:
    return epsilon_bounds(compose_events(list(events)), DELTA).epsilon


def test_the_same_records_as_three_shards_are_refused_and_nothing_is_written(ledger: Ledger) -> None:
    """Review finding 2: 200 records trained as three 'disjoint' shards were each accepted."""
    with pytest.raises(RecordOverlapError, match=r"shard 'shard-1' of data source 'digits' overlaps other shards: "
                                                 r"200 record\(s\) with shard 'shard-0'") as info:
        ledger.reserve_all([request(f"shard-{k}", f"c{k}") for k in range(3)])
    assert "\n" not in str(info.value) and info.value.overlaps == {"shard-0": 200}
    assert ledger.events() == []
    ledger.reserve_all([request("shard-0", "c0")])
    with pytest.raises(RecordOverlapError, match="5 record"):  # later runs too, and partial overlaps
        ledger.reserve_all([request("shard-1", "c1", frozenset(f"r{i}" for i in range(195, 260)))])
    assert [e.component for e in ledger.events()] == ["c0"]


def test_allowed_overlap_is_charged_by_sequential_composition(ledger: Ledger) -> None:
    ledger.reserve_all([request(f"shard-{k}", f"c{k}") for k in range(3)], allow_overlap=True)
    ledger.register_model("m", ["c0", "c1", "c2"])
    guarantee = ledger.model_guarantee("m", delta=DELTA)
    # Parallel composition would claim eps(RUN); every record was read three times.
    assert guarantee.epsilon == pytest.approx(eps(RUN, RUN, RUN))
    assert guarantee.epsilon > 1.5 * eps(RUN)
    (bounds, count), = ledger.record_guarantees("digits", DELTA)
    assert count == 200 and bounds.epsilon == pytest.approx(eps(RUN, RUN, RUN))


def test_shared_record_classes_are_the_classes_of_records_other_events_read(ledger: Ledger) -> None:
    """``record_classes(shared=True)`` (what a shard's spend reads) looks records up from whichever side has fewer
    rows: on either side, it gives exactly the classes holding an event other than the ones asked about."""
    import random

    chosen = random.Random(7)
    keys = [f"r{i}" for i in range(400)]
    layout = [("digits", "s0", 300), ("digits", "s1", 40), ("copy", "s0", 25), ("digits", "s0", 250)]
    for k, (source, shard, n) in enumerate(layout):
        ledger.reserve_all([ReservationRequest(data_source=source, shard=shard, event=RUN, delta=DELTA,
                                               purpose="training", operator="alice", component=f"c{k}",
                                               records=frozenset(chosen.sample(keys, n)))], allow_overlap=True)
    events = ledger.events()
    for source, shard in {(e.data_source, e.shard) for e in events}:
        seqs = [e.seq for e in events if (e.data_source, e.shard) == (source, shard)]
        every = ledger.record_classes(source, seqs)
        expected = [c for c in every if c.seqs - set(seqs)]
        assert expected and ledger.record_classes(source, seqs, shared=True) == expected
    assert ledger.record_classes("digits", [events[0].seq], shared=True) != []  # its shard's other run is another


def test_a_run_naming_no_records_is_charged_for_its_shards_records_other_shards_read(ledger: Ledger) -> None:
    """Review 66: a model whose run named no records (it read its whole shard) was judged by its shard's events
    alone, though some of the shard's records were also read by another shard's run (an allowed overlap)."""
    heavy = dp_sgd_event(0.8, 0.05, 400)
    named = frozenset(f"r{i}" for i in range(10))
    ledger.reserve_all([request("c", "whole", frozenset()), request("c", "named", named),
                        request("b", "heavy", frozenset(f"r{i}" for i in range(5, 15)), event=heavy)],
                       allow_overlap=True)
    ledger.register_model("m", ["whole"])
    guarantee = ledger.model_guarantee("m", delta=DELTA)
    assert guarantee.epsilon == pytest.approx(eps(RUN, RUN, heavy))  # r5..r9: read by all three
    assert dict(guarantee.record_shards)[("digits", "b")].epsilon == pytest.approx(eps(RUN, RUN, heavy))
    assert dict(guarantee.record_shards)[("digits", "c")].epsilon == pytest.approx(eps(RUN, RUN, heavy))


def test_a_run_naming_no_records_is_checked_where_other_shards_read_its_shards_records(ledger: Ledger) -> None:
    """Review 67 #1: a reservation naming no records (its whole shard) was checked against its own shard's events
    and budget only, though another shard's run had read some of its records: that shard's budget was exceeded
    on them, and the overlap went unrefused."""
    heavy = dp_sgd_event(0.8, 0.05, 400)
    ledger.reserve_all([request("c", "named", frozenset(f"r{i}" for i in range(10))),
                        request("b", "heavy", frozenset(f"r{i}" for i in range(5, 15)), event=heavy)],
                       allow_overlap=True)
    limit = (eps(RUN, heavy) + eps(RUN, RUN, heavy)) / 2  # r5..r9 fit it as they are, not read once more
    ledger.set_budget("digits", "b", epsilon=limit, delta=DELTA)
    with pytest.raises(RecordOverlapError, match=r"shard 'c' of data source 'digits' overlaps other shards: "
                                                 r"5 record\(s\) with shard 'b'"):
        ledger.reserve_all([request("c", "whole", frozenset())])
    with pytest.raises(BudgetExceededError, match="shard 'b'"):
        ledger.reserve_all([request("c", "whole", frozenset())], allow_overlap=True)
    assert [e.component for e in ledger.events()] == ["named", "heavy"]
    ledger.set_budget("digits", "b", epsilon=1.01 * eps(RUN, RUN, heavy), delta=DELTA)
    ledger.reserve_all([request("c", "whole", frozenset())], allow_overlap=True)
    ledger.reserve_all([request("d", "alone", frozenset()), request("d", "again", frozenset())])  # nothing shared


def test_another_shards_whole_shard_run_is_among_the_readers_of_its_records(ledger: Ledger) -> None:
    """Review 69: a run naming no records reads every record of its shard, those another shard's runs named too;
    the reservation checks counted only the new event's own shard's such runs, so another shard's escaped its
    budget (both ways), and record_guarantees left it out."""
    heavy = dp_sgd_event(0.8, 0.05, 400)
    ledger.reserve_all([request("c", "c-named", frozenset(f"r{i}" for i in range(10))),
                        request("b", "b-named", frozenset(f"r{i}" for i in range(5, 15))),
                        request("b", "b-whole", frozenset(), event=heavy)], allow_overlap=True)
    assert sorted((round(b.epsilon, 9), n) for b, n in ledger.record_guarantees("digits", DELTA) if n) == sorted(
        [(round(eps(RUN), 9), 5), (round(eps(RUN, RUN, heavy), 9), 5), (round(eps(RUN, heavy), 9), 5)])
    ledger.set_budget("digits", "b", epsilon=(eps(RUN, RUN, heavy) + eps(RUN, RUN, RUN, heavy)) / 2, delta=DELTA)
    for records in (frozenset(), frozenset(f"r{i}" for i in range(10))):  # whole shard, or naming them
        with pytest.raises(BudgetExceededError, match="shard 'b'"):
            ledger.reserve_all([request("c", "c-more", records)], allow_overlap=True)
    ledger.reserve_all([request("c", "c-more", frozenset(f"r{i}" for i in range(5)))])  # r0..r4: c's alone


def test_record_guarantees_of_a_data_source_count_other_sources_runs_on_its_records(ledger: Ledger) -> None:
    """Review 70: a record key is one record whatever the data source, as reservations and shard_spend count it;
    record_guarantees(source) read that source's events only."""
    heavy = dp_sgd_event(0.8, 0.05, 400)
    ledger.reserve_all([request("c", "c-named", frozenset(f"r{i}" for i in range(10))),
                        ReservationRequest(data_source="copy", shard="b", event=heavy, delta=DELTA, purpose="training",
                                           operator="alice", component="b", records=frozenset(f"r{i}" for i in
                                                                                              range(5, 15)))],
                       allow_overlap=True)
    spent = ledger.shard_spend("digits", "c", DELTA).epsilon
    assert spent == pytest.approx(eps(RUN, heavy))
    assert max(b.epsilon for b, _ in ledger.record_guarantees("digits", DELTA)) == pytest.approx(spent)


def test_record_classes_take_more_events_than_an_sqlite_build_may_bind(ledger: Ledger, ledger_path: Path) -> None:
    """Review 65: the event list was bound as parameters, twice per query: a shard retrained a few hundred times
    broke every figure on an SQLite built with the smallest limit (999 parameters)."""
    from privacy_accounting.sqlite_storage import _record_classes

    ledger.reserve_all([request("s0", "c0"), request("s1", "c1", frozenset(f"r{i}" for i in range(150, 300)))],
                       allow_overlap=True)
    seqs = [e.seq for e in ledger.events(shard="s0")]
    many = seqs + list(range(10_000, 11_200))  # events that do not exist change nothing
    with sqlite3.connect(ledger_path) as conn:
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        for shared in (False, True):
            assert _record_classes(conn, "digits", many, shared) == ledger.record_classes("digits", seqs,
                                                                                           shared=shared)
            assert _record_classes(conn, "digits", many, shared)  # s1 read 50 of s0's records


def test_disjoint_shards_compose_in_parallel(ledger: Ledger) -> None:
    halves = [frozenset(f"r{i}" for i in range(k, 200, 2)) for k in range(2)]
    ledger.reserve_all([request(f"shard-{k}", f"c{k}", halves[k]) for k in range(2)])
    ledger.register_model("m", ["c0", "c1"])
    assert ledger.model_guarantee("m", delta=DELTA).epsilon == pytest.approx(eps(RUN))


def test_a_record_removed_before_retraining_is_not_charged_again(ledger: Ledger) -> None:
    ledger.reserve_all([request("shard-0", "c0")])
    ledger.reserve_all([request("shard-0", "c0.r1", RECORDS - {"r7"}, event=RETRAIN,
                                purpose="retraining_after_deletion")])
    distribution = {round(b.epsilon, 9): n for b, n in ledger.record_guarantees("digits", DELTA)}
    assert distribution == {round(eps(RUN, RETRAIN), 9): 199, round(eps(RUN), 9): 1}
    ledger.register_model("m", ["c0.r1"])
    guarantee = ledger.model_guarantee("m", delta=DELTA)
    # The replaced component's run read the model's records too: it is counted.
    assert guarantee.epsilon == pytest.approx(eps(RUN, RETRAIN))
    (shard,) = guarantee.shards
    assert shard.model_bounds.epsilon == pytest.approx(eps(RETRAIN))


def test_per_record_budget_binds_records_charged_by_another_shard(ledger: Ledger) -> None:
    assert eps(RUN, RUN) > 1.1 * eps(RUN)
    ledger.set_budget("digits", None, epsilon=1.1 * eps(RUN), delta=DELTA)
    ledger.reserve_all([request("shard-0", "c0")])
    # shard-1 has spent nothing, but its records were all read by shard-0's run already.
    with pytest.raises(BudgetExceededError, match="shard 'shard-"):
        ledger.reserve_all([request("shard-1", "c1")], allow_overlap=True)
    assert [e.component for e in ledger.events()] == ["c0"]
    ledger.reserve_all([request("shard-1", "c1", frozenset({"other"}))], allow_overlap=True)


def test_a_version_1_ledger_is_upgraded_in_place_and_its_events_read_their_whole_shard(ledger_path: Path) -> None:
    old = Ledger.open(ledger_path)
    old.reserve(data_source="digits", shard="shard-0", event=RUN, delta=DELTA, purpose="training",
                operator="alice", component="c0")
    with sqlite3.connect(ledger_path) as conn:  # what the previous release wrote
        conn.execute("DROP TABLE event_records")
        conn.execute("ALTER TABLE events DROP COLUMN records_read")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        conn.execute("PRAGMA user_version = 1")
    ledger = Ledger.open(ledger_path)
    (event,) = ledger.events()
    assert event.records_read is None
    ledger.reserve_all([request("shard-0", "c0.r1", event=RETRAIN)])
    ledger.register_model("m", ["c0.r1"])
    assert ledger.model_guarantee("m", delta=DELTA).epsilon == pytest.approx(eps(RUN, RETRAIN))
    with sqlite3.connect(ledger_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2

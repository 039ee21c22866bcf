"""Two real processes race for a budget that fits exactly one reservation: exactly one wins."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from privacy_accounting import Ledger, compose_events, dp_sgd_event, epsilon_bounds

DELTA = 1e-5
EVENT = dp_sgd_event(1.2, 0.02, 100)


def _contender(path: str, name: str, barrier, results) -> None:  # type: ignore[no-untyped-def]
    import opacus.accountants  # noqa: F401  (import before the barrier so both start together)

    from privacy_accounting import BudgetExceededError, Ledger

    ledger = Ledger.open(path)
    barrier.wait(timeout=60)
    try:
        ledger.reserve(data_source="digits", shard="shard-0", event=EVENT, delta=DELTA, purpose="training",
                       operator=name, component=name)
        results.put((name, "reserved"))
    except BudgetExceededError as exc:
        results.put((name, f"refused: {exc}"))
    except BaseException as exc:  # report anything else to the parent
        results.put((name, f"error: {type(exc).__name__}: {exc}"))


def test_two_processes_cannot_both_squeeze_under_the_limit(tmp_path: Path) -> None:
    one = epsilon_bounds(EVENT, DELTA).epsilon
    two = epsilon_bounds(compose_events([EVENT, EVENT]), DELTA).epsilon
    limit = (one + two) / 2  # one reservation fits, two do not
    path = tmp_path / "ledger.sqlite"
    Ledger.open(path).set_budget(data_source="digits", shard="shard-0", epsilon=limit, delta=DELTA)

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_contender, args=(str(path), n, barrier, results)) for n in ("p1", "p2")]
    for proc in procs:
        proc.start()
    outcomes = dict(results.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0

    assert sorted(v.split(":")[0] for v in outcomes.values()) == ["refused", "reserved"], outcomes
    events = Ledger.open(path).events()
    assert len(events) == 1 and outcomes[events[0].operator] == "reserved"
    assert Ledger.open(path).shard_spend("digits", "shard-0").epsilon <= limit

"""Ledger: life cycle, budgets, composition rules and bad input."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant

from privacy_accounting import (
    BudgetExceededError,
    InvalidParameterError,
    Ledger,
    Purpose,
    ReservationRequest,
    ReservationStateError,
    Status,
    UnknownComponentError,
    UnknownDataSourceError,
    UnknownModelError,
    UnknownReservationError,
    UnknownShardError,
    compose_events,
    dp_sgd_event,
    epsilon_bounds,
)

DELTA = 1e-5
RUN = dp_sgd_event(1.2, 0.02, 100)  # epsilon about 0.94 at 1e-5
RETRAIN = dp_sgd_event(1.2, 0.02, 60)


def reserve(ledger: Ledger, shard: str = "shard-0", event=RUN, component: str = "comp-0", **kwargs) -> str:
    args = dict(data_source="digits", shard=shard, event=event, delta=DELTA, purpose="training",
                operator="alice", component=component) | kwargs
    return ledger.reserve(**args)


def direct_pld(events: list, delta: float = DELTA) -> float:
    """dp_accounting called directly on the same events (requirement 9)."""
    accountant = PLDAccountant(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    accountant.compose(dp_accounting.ComposedDpEvent(list(events)))
    return accountant.get_epsilon(delta)


def test_reserve_complete_fail_life_cycle(ledger: Ledger) -> None:
    rid = reserve(ledger, details={"lr": 0.1})
    stored = ledger.event(rid)
    assert stored.status is Status.RESERVED and stored.purpose is Purpose.TRAINING
    assert stored.event == RUN and stored.details == {"lr": 0.1} and not stored.checkpoints_released
    created = datetime.fromisoformat(stored.created_at)
    assert created.utcoffset() == timedelta(0)
    done = ledger.complete(rid, details={"sha256": "ab" * 32})
    assert done.status is Status.COMPLETED and done.details == {"lr": 0.1, "sha256": "ab" * 32}
    assert ledger.event(rid) == done
    with pytest.raises(ReservationStateError):
        ledger.fail(rid, reason="too late")
    other = reserve(ledger, component="comp-1")
    failed = ledger.fail(other, reason="KeyboardInterrupt")
    assert failed.status is Status.FAILED and failed.failure_reason == "KeyboardInterrupt"
    with pytest.raises(ReservationStateError):
        ledger.complete(other)
    assert [e.reservation_id for e in ledger.events()] == [rid, other]
    assert [e.reservation_id for e in ledger.events(status="failed")] == [other]


def test_unknown_ids_and_names(ledger: Ledger) -> None:
    with pytest.raises(UnknownReservationError):
        ledger.complete("no-such-id")
    with pytest.raises(UnknownReservationError):
        ledger.event("no-such-id")
    with pytest.raises(UnknownDataSourceError):
        ledger.remaining("nope", "shard-0")
    reserve(ledger)
    with pytest.raises(UnknownShardError, match="shard-0"):
        ledger.shard_spend("digits", "shard-9", delta=DELTA)
    with pytest.raises(UnknownComponentError):
        ledger.register_model("m", ["comp-0", "ghost"])
    with pytest.raises(UnknownModelError):
        ledger.model_guarantee("ghost")
    with pytest.raises(UnknownComponentError):
        ledger.record_audit("ghost", 0.1, DELTA)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epsilon=0.0), "epsilon"),
        (dict(epsilon=-1.0), "epsilon"),
        (dict(epsilon=math.inf), "epsilon"),
        (dict(epsilon=math.nan), "epsilon"),
        (dict(delta=0.0), "delta"),
        (dict(delta=1.0), "delta"),
        (dict(delta=-0.5), "delta"),
        (dict(data_source=""), "data_source"),
        (dict(shard="a\nb"), "shard"),
    ],
)
def test_bad_budgets_are_rejected_in_one_line(ledger: Ledger, kwargs: dict, match: str) -> None:
    args = dict(data_source="digits", shard=None, epsilon=1.0, delta=DELTA) | kwargs
    with pytest.raises(InvalidParameterError, match=match) as info:
        ledger.set_budget(**args)
    assert "\n" not in str(info.value)
    assert ledger.budgets() == []


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(delta=0.0),
        dict(delta=1.5),
        dict(purpose="fun"),
        dict(operator=""),
        dict(event=dp_accounting.LaplaceDpEvent(1.0)),
        dict(event=dp_accounting.GaussianDpEvent(0.0)),
        dict(details={"x": math.nan}),
        dict(details={"x": object()}),
        dict(checkpoints_released="yes"),
        dict(purpose="non_private_baseline"),  # needs a NonPrivateDpEvent
    ],
)
def test_bad_reservations_write_nothing(ledger: Ledger, kwargs: dict) -> None:
    from privacy_accounting import PrivacyAccountingError

    with pytest.raises(PrivacyAccountingError):
        reserve(ledger, **kwargs)
    assert ledger.events() == []


def test_shard_spend_is_sequential_composition_cross_checked(ledger: Ledger) -> None:
    first = reserve(ledger)
    ledger.complete(first)
    before = ledger.shard_spend("digits", "shard-0", delta=DELTA)
    # Retraining after a deletion spends again for the records that remain.
    reserve(ledger, event=RETRAIN, purpose="retraining_after_deletion")
    after = ledger.shard_spend("digits", "shard-0", delta=DELTA)
    assert after.epsilon > before.epsilon
    assert after.pld == pytest.approx(direct_pld([RUN, RETRAIN]), rel=1e-3)
    assert after.epsilon == min(after.rdp, after.prv, after.pld)
    # Composition is accounted jointly: below the sum of the two runs' own epsilons.
    own = epsilon_bounds(RUN, DELTA).epsilon + epsilon_bounds(RETRAIN, DELTA).epsilon
    assert after.epsilon < own


def test_shard_reused_by_several_components_composes_sequentially(ledger: Ledger) -> None:
    reserve(ledger, component="classifier")
    reserve(ledger, component="statistics", purpose="merge_statistics", event=dp_sgd_event(3.0, 1.0, 2))
    spend = ledger.shard_spend("digits", "shard-0", delta=DELTA)
    assert spend.pld == pytest.approx(direct_pld([RUN, dp_sgd_event(3.0, 1.0, 2)]), rel=1e-6)


def test_failed_and_reserved_events_count_as_spent(ledger: Ledger) -> None:
    ledger.fail(reserve(ledger), reason="crash")
    reserve(ledger, component="comp-1")
    spend = ledger.shard_spend("digits", "shard-0", delta=DELTA)
    assert spend.pld == pytest.approx(direct_pld([RUN, RUN]), rel=1e-3)


def test_reserve_all_is_all_or_nothing_and_checks_a_batch_against_itself(ledger: Ledger) -> None:
    def request(shard: str, component: str) -> ReservationRequest:
        return ReservationRequest(data_source="digits", shard=shard, event=RUN, delta=DELTA, purpose="training",
                                  operator="alice", component=component)

    one_run = epsilon_bounds(RUN, DELTA).epsilon
    ledger.set_data_source("digits", shards=["shard-0", "shard-1"])
    ledger.set_budget("digits", "shard-1", epsilon=one_run * 1.1, delta=DELTA)
    with pytest.raises(BudgetExceededError, match="shard-1"):  # the second run on shard-1 is refused ...
        ledger.reserve_all([request("shard-0", "a"), request("shard-1", "b"), request("shard-1", "c")])
    assert ledger.events() == []  # ... and so is the whole batch
    ids = ledger.reserve_all([request("shard-0", "a"), request("shard-1", "b")])
    assert [e.reservation_id for e in ledger.events()] == ids
    assert [e.component for e in ledger.events()] == ["a", "b"]


def test_check_reservations_refuses_what_reserve_all_would_and_writes_nothing(ledger: Ledger) -> None:
    def request(shard: str, component: str, event=RUN) -> ReservationRequest:  # noqa: ANN001
        return ReservationRequest(data_source="digits", shard=shard, event=event, delta=DELTA, purpose="training",
                                  operator="alice", component=component)

    ledger.set_data_source("digits", shards=["shard-0", "shard-1"])
    ledger.set_budget("digits", "shard-1", epsilon=epsilon_bounds(RUN, DELTA).epsilon * 1.1, delta=DELTA)
    refused = [request("shard-0", "a"), request("shard-1", "b"), request("shard-1", "c")]  # the batch against itself
    with pytest.raises(BudgetExceededError, match="shard-1"):
        ledger.check_reservations(refused)
    with pytest.raises(BudgetExceededError, match="non-private"):
        ledger.check_reservations([request("shard-1", "b", dp_accounting.NonPrivateDpEvent())])
    ledger.check_reservations([request("shard-0", "a"), request("shard-1", "b")])  # allowed: still nothing written
    assert ledger.events() == [] and ledger.shard_spend("digits", "shard-1", delta=DELTA).epsilon == 0
    ids = ledger.reserve_all([request("shard-0", "a"), request("shard-1", "b")])
    assert [e.reservation_id for e in ledger.events()] == ids
    with pytest.raises(BudgetExceededError, match="shard-1"):  # the check sees what is reserved since
        ledger.check_reservations([request("shard-1", "c")])


def test_parallel_composition_across_disjoint_shards(ledger: Ledger) -> None:
    reserve(ledger, shard="shard-0", component="c0")
    reserve(ledger, shard="shard-1", component="c1", event=RETRAIN)
    ledger.register_model("ensemble", components=["c0", "c1"])
    guarantee = ledger.model_guarantee("ensemble")
    eps0 = epsilon_bounds(RUN, DELTA).epsilon
    eps1 = epsilon_bounds(RETRAIN, DELTA).epsilon
    assert guarantee.epsilon == pytest.approx(max(eps0, eps1)) and guarantee.binding == ("digits", "shard-0")
    assert guarantee.epsilon < eps0 + eps1
    assert {(s.shard, s.model_bounds.epsilon) for s in guarantee.shards} == {("shard-0", eps0), ("shard-1", eps1)}


def test_model_after_deletion_vs_shard_total(ledger: Ledger) -> None:
    reserve(ledger, shard="shard-0", component="c0")
    reserve(ledger, shard="shard-1", component="c1")
    ledger.register_model("ensemble", components=["c0", "c1"])
    # A deletion in shard-0: retrain it as c0-v2 and re-register the model.
    reserve(ledger, shard="shard-0", component="c0-v2", event=RETRAIN, purpose="retraining_after_deletion")
    assert ledger.register_model("ensemble", components=["c0-v2", "c1"]) == ("c0-v2", "c1")
    assert ledger.models() == {"ensemble": ("c0-v2", "c1")}
    guarantee = ledger.model_guarantee("ensemble", delta=DELTA)
    shard0 = next(s for s in guarantee.shards if s.shard == "shard-0")
    assert shard0.model_bounds.epsilon == pytest.approx(epsilon_bounds(RETRAIN, DELTA).epsilon)
    assert shard0.shard_total_bounds.pld == pytest.approx(direct_pld([RUN, RETRAIN]), rel=1e-3)
    # The records of shard-0 were read by the removed c0 too (events naming no records read the
    # whole shard): the model's guarantee counts both runs, so shard-0 binds.
    assert shard0.record_bounds.epsilon == pytest.approx(shard0.shard_total_bounds.epsilon)
    assert guarantee.epsilon == pytest.approx(shard0.shard_total_bounds.epsilon)
    assert guarantee.binding == ("digits", "shard-0")


def test_budget_refusal_writes_nothing_and_explains(ledger: Ledger) -> None:
    one = epsilon_bounds(RUN, DELTA).epsilon
    ledger.set_budget(data_source="digits", shard=None, epsilon=1.25 * one, delta=DELTA)
    reserve(ledger)
    with pytest.raises(BudgetExceededError) as info:
        reserve(ledger, component="comp-1")
    err = info.value
    message = str(err)
    assert "\n" not in message
    for text in ("shard-0", "digits", "spent", "requested", "limit", "after minus before"):
        assert text in message
    assert err.spent == pytest.approx(one)
    assert err.spent_after == pytest.approx(epsilon_bounds(compose_events([RUN, RUN]), DELTA).epsilon)
    assert err.requested == pytest.approx(err.spent_after - err.spent)
    assert err.limit == pytest.approx(1.25 * one) and err.scope == "data source"
    assert len(ledger.events()) == 1


def test_source_budget_bounds_each_shard_separately(ledger: Ledger) -> None:
    one = epsilon_bounds(RUN, DELTA).epsilon
    ledger.set_budget(data_source="digits", shard=None, epsilon=1.2 * one, delta=DELTA)
    for shard in ("shard-0", "shard-1", "shard-2"):
        reserve(ledger, shard=shard, component=f"c-{shard}")
    assert ledger.remaining("digits", "shard-1") == pytest.approx(0.2 * one, rel=1e-6)


def test_shard_budget_overrides_source_budget(ledger: Ledger) -> None:
    one = epsilon_bounds(RUN, DELTA).epsilon
    ledger.set_budget(data_source="digits", shard=None, epsilon=10.0, delta=DELTA)
    ledger.set_budget(data_source="digits", shard="shard-0", epsilon=0.5 * one, delta=DELTA)
    with pytest.raises(BudgetExceededError, match="shard budget"):
        reserve(ledger)
    reserve(ledger, shard="shard-1")
    assert ledger.budget("digits", "shard-0").epsilon == 0.5 * one
    assert ledger.budget("digits", "shard-1").scope == "data_source"


def test_budget_uses_its_own_delta(ledger: Ledger) -> None:
    ledger.set_budget(data_source="digits", shard="shard-0", epsilon=100.0, delta=1e-3)
    reserve(ledger)  # reserved with delta=1e-5; spend is measured at the budget's 1e-3
    assert ledger.shard_spend("digits", "shard-0").delta == 1e-3
    assert ledger.shard_spend("digits", "shard-0").epsilon < epsilon_bounds(RUN, DELTA).epsilon


def test_no_budget_allows_and_spend_needs_delta(ledger: Ledger) -> None:
    reserve(ledger)
    assert ledger.remaining("digits", "shard-0") is None
    with pytest.raises(InvalidParameterError, match="no budget"):
        ledger.shard_spend("digits", "shard-0")


def test_non_private_events(ledger: Ledger) -> None:
    baseline = dict(event=dp_accounting.NonPrivateDpEvent(), purpose="non_private_baseline", component="base")
    reserve(ledger, shard="open", **baseline)  # no budget: allowed, epsilon = inf
    assert math.isinf(ledger.shard_spend("digits", "open", delta=DELTA).epsilon)
    ledger.set_budget(data_source="digits", shard="guarded", epsilon=100.0, delta=DELTA)
    with pytest.raises(BudgetExceededError, match="non-private"):
        reserve(ledger, shard="guarded", **baseline)
    assert len(ledger.events()) == 1
    # A budget set after a non-private event: the shard is exhausted.
    ledger.set_budget(data_source="digits", shard="open", epsilon=100.0, delta=DELTA)
    assert ledger.remaining("digits", "open") == 0.0
    with pytest.raises(BudgetExceededError, match="already infinite"):
        reserve(ledger, shard="open")


def test_data_source_unit_and_declared_shards(ledger: Ledger) -> None:
    source = ledger.set_data_source(data_source="people", unit="user", shards=["s0", "s1"])
    assert source.unit.value == "user"
    assert ledger.shards("people") == [("people", "s0"), ("people", "s1")]
    assert ledger.shard_spend("people", "s0", delta=DELTA).epsilon == 0.0
    with pytest.raises(InvalidParameterError):
        ledger.set_data_source(data_source="people", unit="household")
    ledger.reserve(data_source="people", shard="s0", event=RUN, delta=DELTA, purpose="training",
                   operator="bob", component="p0")
    with pytest.raises(InvalidParameterError, match="cannot change"):
        ledger.set_data_source(data_source="people", unit="record")
    assert ledger.data_source("people").unit.value == "user"


def test_audits_are_stored(ledger: Ledger) -> None:
    reserve(ledger)
    audit = ledger.record_audit("comp-0", 0.3, DELTA, method="canary insertion", operator="carol", details={"n": 1000})
    assert ledger.audits() == [audit]
    with pytest.raises(InvalidParameterError):
        ledger.record_audit("comp-0", -0.1, DELTA)


def test_reopened_ledger_keeps_everything(ledger: Ledger, ledger_path) -> None:
    ledger.set_budget(data_source="digits", shard=None, epsilon=8.0, delta=DELTA)
    rid = reserve(ledger, details={"k": [1, 2]})
    again = Ledger.open(ledger_path)
    assert again.event(rid) == ledger.event(rid)
    assert again.budgets() == ledger.budgets()


def test_checkpoint_release_is_recorded_and_cannot_be_undone(ledger: Ledger) -> None:
    released = reserve(ledger, checkpoints_released=True)
    assert ledger.complete(released, checkpoints_released=False).checkpoints_released
    later = reserve(ledger, component="comp-1")
    assert ledger.complete(later, checkpoints_released=True).checkpoints_released
    assert not ledger.complete(reserve(ledger, component="comp-2")).checkpoints_released

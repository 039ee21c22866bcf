"""Accountants: reference figures, validity of the reported bound, cross-checks with dp_accounting."""

from __future__ import annotations

import math
import warnings

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.pld import privacy_loss_distribution as pld_lib

from privacy_accounting import (
    AccountantSettings,
    AccountingError,
    InvalidParameterError,
    compose_events,
    dp_sgd_event,
    epsilon_bounds,
    epsilon_for,
    gaussian_event,
)
from privacy_accounting.accountants import epsilon_within

DELTA = 1e-5
REFERENCE = dp_sgd_event(1.0, 256 / 50000, 1953)  # sigma=1, batch 256 of 50k, 10 epochs


def dp_accounting_pld(event: dp_accounting.DpEvent, delta: float) -> float:
    accountant = PLDAccountant(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    accountant.compose(event)
    return accountant.get_epsilon(delta)


def test_reference_numbers_reproduced() -> None:
    bounds = epsilon_bounds(REFERENCE, DELTA)
    assert bounds.rdp == pytest.approx(1.474, rel=0.01)
    assert bounds.prv == pytest.approx(1.235, rel=0.01)
    assert bounds.pld == pytest.approx(1.225, rel=0.01)
    assert bounds.epsilon == min(bounds.rdp, bounds.prv, bounds.pld) == bounds.pld
    assert bounds.accountant == "pld"
    assert bounds.delta == DELTA


def test_pld_matches_dp_accounting_called_directly() -> None:
    assert epsilon_bounds(REFERENCE, DELTA).pld == dp_accounting_pld(REFERENCE, DELTA)
    hetero = compose_events([dp_sgd_event(1.1, 0.05, 30), gaussian_event(4.0, 3), dp_sgd_event(2.0, 0.1, 20)])
    assert epsilon_bounds(hetero, DELTA).pld == pytest.approx(dp_accounting_pld(hetero, DELTA), rel=1e-9)


def test_rdp_matches_dp_accounting_rdp_accountant() -> None:
    event = compose_events([dp_sgd_event(1.1, 0.05, 30), gaussian_event(4.0, 3)])
    reference = dp_accounting.rdp.RdpAccountant()
    reference.compose(event)
    assert epsilon_for(event, DELTA, "rdp") == pytest.approx(reference.get_epsilon(DELTA), rel=1e-3)


def test_prv_figure_is_upper_end_of_opacus_error_interval() -> None:
    from opacus.accountants import PRVAccountant

    accountant = PRVAccountant()
    accountant.history = [(1.0, 256 / 50000, 1953)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dprv = accountant._get_dprv(eps_error=0.01, delta_error=DELTA / 1000)
        lower, estimate, upper = dprv.compute_epsilon(DELTA, DELTA / 1000, 0.01)
        opacus_value = accountant.get_epsilon(DELTA)
    ours = epsilon_bounds(REFERENCE, DELTA).prv
    assert ours == pytest.approx(upper, rel=1e-9) == pytest.approx(opacus_value, rel=1e-9)
    assert lower < estimate < upper


def test_every_bound_is_above_the_exact_gaussian_epsilon() -> None:
    # k Gaussian releases with noise sigma compose exactly into one with sigma / sqrt(k).
    event = gaussian_event(2.0, 10)
    exact = dp_accounting.get_epsilon_gaussian(2.0 / math.sqrt(10), DELTA)
    bounds = epsilon_bounds(event, DELTA)
    for value in (bounds.rdp, bounds.prv, bounds.pld):
        assert value >= exact - 1e-9
    assert bounds.pld == pytest.approx(exact, abs=2e-3)


def test_opacus_gdp_is_below_the_pld_lower_bound_so_it_is_not_used() -> None:
    from opacus.accountants import GaussianAccountant

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "GDP accounting ... can underestimate privacy expenditure"
        gdp = GaussianAccountant()
        gdp.history = [(1.0, 256 / 50000, 1953)]
        gdp_eps = gdp.get_epsilon(DELTA)
    lower = pld_lib.from_gaussian_mechanism(
        standard_deviation=1.0, sampling_prob=256 / 50000, pessimistic_estimate=False, use_connect_dots=False,
        value_discretization_interval=1e-4,
    ).self_compose(1953).get_epsilon_for_delta(DELTA)
    assert gdp_eps < lower < epsilon_bounds(REFERENCE, DELTA).epsilon
    assert not hasattr(epsilon_bounds(REFERENCE, DELTA), "gdp")


def test_non_private_is_infinite_and_no_op_is_zero() -> None:
    bounds = epsilon_bounds(dp_accounting.NonPrivateDpEvent(), DELTA)
    assert math.isinf(bounds.epsilon) and bounds.accountant == "non-private"
    assert all(math.isinf(v) for v in (bounds.rdp, bounds.prv, bounds.pld))
    mixed = compose_events([dp_sgd_event(1.0, 0.1, 5), dp_accounting.NonPrivateDpEvent()])
    assert math.isinf(epsilon_bounds(mixed, DELTA).epsilon)
    assert epsilon_bounds(dp_accounting.NoOpDpEvent(), DELTA).epsilon == 0.0


def test_sequential_composition_is_accounted_not_added() -> None:
    a, b = dp_sgd_event(1.1, 0.05, 100), dp_sgd_event(1.1, 0.05, 100)
    eps_a = epsilon_bounds(a, DELTA).epsilon
    both = epsilon_bounds(compose_events([a, b]), DELTA)
    # Same mechanism twice == 200 steps; strictly less than the naive sum, more than one run.
    assert both.pld == pytest.approx(dp_accounting_pld(dp_sgd_event(1.1, 0.05, 200), DELTA), rel=1e-9)
    assert eps_a < both.epsilon < 2 * eps_a


def test_restricted_accountant_settings() -> None:
    bounds = epsilon_bounds(dp_sgd_event(1.0, 0.1, 10), DELTA, AccountantSettings(accountants=("rdp",)))
    assert bounds.prv is None and bounds.pld is None and bounds.accountant == "rdp"
    coarse = AccountantSettings(pld_value_discretization_interval=1e-2, accountants=("pld",))
    fine = epsilon_bounds(dp_sgd_event(1.0, 0.1, 10), DELTA).pld
    assert epsilon_bounds(dp_sgd_event(1.0, 0.1, 10), DELTA, coarse).pld >= fine  # pessimistic: still an upper bound
    with pytest.raises(InvalidParameterError):
        AccountantSettings(accountants=("gdp",))


def test_epsilon_within_agrees_with_tightest_bound() -> None:
    event = dp_sgd_event(1.0, 0.1, 10)
    eps = epsilon_bounds(event, DELTA).epsilon
    assert epsilon_within(event, DELTA, eps)
    assert not epsilon_within(event, DELTA, eps * 0.999)
    assert epsilon_within(event, DELTA, epsilon_for(event, DELTA, "rdp"))


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, 2.0, math.nan])
def test_bad_delta_is_rejected(delta: float) -> None:
    with pytest.raises(InvalidParameterError, match="delta"):
        epsilon_bounds(REFERENCE, delta)


def test_unknown_accountant_is_rejected() -> None:
    with pytest.raises(InvalidParameterError, match="gdp"):
        epsilon_for(REFERENCE, DELTA, "gdp")


def test_failing_accountant_is_noted_and_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    from privacy_accounting import accountants

    def broken(*_args: object) -> float:
        raise AccountingError("PRV accountant failed: simulated")

    monkeypatch.setattr(accountants, "prv_epsilon", broken)
    accountants.clear_cache()
    try:
        bounds = epsilon_bounds(dp_sgd_event(3.0, 0.2, 7), DELTA)
        assert bounds.prv is None and bounds.epsilon == bounds.pld
        assert any("simulated" in note for note in bounds.notes)
    finally:
        accountants.clear_cache()


@pytest.mark.parametrize("make", [lambda: dp_sgd_event(1e300, 0.01, 10), lambda: dp_sgd_event(1e-300, 0.01, 10),
                                  lambda: gaussian_event(1e-5)])
def test_a_noise_multiplier_the_accountants_cannot_account_for_is_refused_in_one_line(make) -> None:
    """Review 109: such events raised OverflowError, ZeroDivisionError or MemoryError from every figure, and one stored
    without a budget broke every later report of its ledger."""
    with pytest.raises(InvalidParameterError, match=r"must be between 0.01 and 10000 \(the accountants cannot"):
        make()


def test_an_accountant_that_fails_on_an_event_leaves_a_note_not_a_traceback(monkeypatch) -> None:
    """Review 109: a MemoryError (PRV on a huge step count) came out of epsilon_bounds raw."""
    from privacy_accounting import accountants

    def out_of_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 13.8 TiB")

    monkeypatch.setattr(accountants, "prv_epsilon", out_of_memory)
    accountants.clear_cache()
    try:
        bounds = epsilon_bounds(dp_sgd_event(1.1, 0.01, 123), DELTA)
    finally:
        accountants.clear_cache()
    assert bounds.prv is None and bounds.epsilon == min(bounds.rdp, bounds.pld)
    assert bounds.notes == ("prv: PRV accountant failed: MemoryError: Unable to allocate 13.8 TiB",)


def test_an_event_an_earlier_version_stored_with_such_a_noise_multiplier_is_still_read() -> None:
    """A ledger written before the range was checked may hold sigma = 0.005 (a noise multiplier a user gave): it is
    read back as it was written (a new one is refused)."""
    from privacy_accounting.event_tree import from_json

    stored = '{"event": {"noise_multiplier": 0.005, "type": "gaussian"}, "type": "self_composed", "count": 3}'
    assert from_json(stored)["event"]["noise_multiplier"] == 0.005
    with pytest.raises(InvalidParameterError, match="must be between 0.01 and 10000"):
        gaussian_event(0.005)

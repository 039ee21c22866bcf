"""PRV is not run where its grid would hold more than ``prv_max_points``, nor PLD where RDP bounds epsilon above
``pld_epsilon_limit`` (review 109: an ordinary but extreme event made ``budget show`` and ``report`` run for
minutes): the figure is the tightest of the others, a valid bound, and the notes say why."""

from __future__ import annotations

import math

import pytest

from privacy_accounting import AccountantSettings, AccountingError, InvalidParameterError, epsilon_bounds, epsilon_for
from privacy_accounting import accountants
from privacy_accounting.events import dp_sgd_event, gaussian_event


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    from privacy_accounting import bounds_cache

    accountants.clear_cache()
    monkeypatch.setattr(accountants, "_elsewhere", None)  # computed in this process, where they are watched
    monkeypatch.setattr(bounds_cache, "lookup", lambda computation: None)
    monkeypatch.setattr(bounds_cache, "store", lambda computation, result: None)


def _never(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    def refuse(*args: object, **kwargs: object) -> float:
        raise AssertionError(f"{name} ran")

    monkeypatch.setattr(accountants, name, refuse)


@pytest.mark.parametrize("event", [dp_sgd_event(0.3, 0.5, 1000), gaussian_event(0.01), dp_sgd_event(1.0, 0.01, 10**9)])
def test_an_event_far_above_the_limits_gets_rdps_bound_at_once(monkeypatch, event) -> None:
    _never(monkeypatch, "pld_epsilon")
    bounds = epsilon_bounds(event, 1e-5)
    assert bounds.accountant == "rdp" and bounds.epsilon == bounds.rdp == accountants.rdp_epsilon(event, 1e-5) > 300
    assert bounds.prv is None and bounds.pld is None
    prv, pld = bounds.notes
    assert pld == f"pld: PLD not run: RDP bounds epsilon at {bounds.rdp:.4g}, above 300, where PLD's grid, and its " \
                  "work, grow with epsilon (minutes in the thousands)"
    assert prv.startswith("prv: PRV ")  # not run, or failed (a single Gaussian at sigma 0.01: at once)
    with pytest.raises(AccountingError, match=r"^PLD not run: RDP bounds epsilon at "):
        epsilon_for(event, 1e-5, "pld")


def test_prvs_grid_grows_with_the_steps_too_and_plds_figure_stands() -> None:
    event = dp_sgd_event(1.0, 0.005, 10**6)  # epsilon about 50 (RDP 51, PLD 48), PRV's grid 42 M points
    bounds = epsilon_bounds(event, 1e-5)
    assert bounds.accountant == "pld" and bounds.prv is None and bounds.epsilon == bounds.pld < bounds.rdp < 300
    [note] = bounds.notes
    assert note.startswith("prv: PRV not run: its grid would hold 4.16e+07 points, over 1.68e+07 (minutes of work)")


def test_below_the_limits_every_accountant_runs_and_the_limits_are_settings(monkeypatch) -> None:
    event = dp_sgd_event(0.5, 0.1, 1000)  # RDP about 136, PLD and PRV about 126; PRV's grid 3.4 M points
    low = AccountantSettings(prv_max_points=1e6, pld_epsilon_limit=100.0)
    with monkeypatch.context() as watched:
        _never(watched, "pld_epsilon")
        bounds = epsilon_bounds(event, 1e-5, low)
    assert bounds.accountant == "rdp" and bounds.prv is None and len(bounds.notes) == 2
    bounds = epsilon_bounds(event, 1e-5)
    assert bounds.accountant in ("pld", "prv") and bounds.epsilon < bounds.rdp and not bounds.notes
    unlimited = AccountantSettings(prv_max_points=math.inf, pld_epsilon_limit=math.inf)
    assert epsilon_bounds(event, 1e-5, unlimited).epsilon == bounds.epsilon
    for bad in (0.0, -1.0, math.nan):
        for name in ("prv_max_points", "pld_epsilon_limit"):
            with pytest.raises(InvalidParameterError, match=f"{name} must be positive"):
                AccountantSettings(**{name: bad})


def test_a_reports_curve_falls_back_where_pld_is_not_run() -> None:
    """Review 117: the curve is PLD's alone, so a point PLD refused left no accountant, and the HTML and JSON reports
    failed outright."""
    from privacy_accounting.event_tree import sgd
    from privacy_accounting.report import _curve

    settings = AccountantSettings(pld_epsilon_limit=100.0, prv_max_points=1e3)  # RDP alone above epsilon 100
    points, name = _curve([sgd(0.5, 0.1, 1000)], 1e-5, 6, settings)
    assert points[-1].steps == 1000 and points[-1].epsilon == accountants.rdp_epsilon(sgd(0.5, 0.1, 1000), 1e-5)
    assert name.endswith("; where PLD is not run, the tightest of the other accountants")
    assert all(a.epsilon <= b.epsilon for a, b in zip(points, points[1:]))


def test_calibrating_a_target_the_accountant_is_not_run_at_says_so_and_how() -> None:
    from privacy_accounting import CalibrationError, calibrate_noise_multiplier

    settings = AccountantSettings(pld_epsilon_limit=100.0)  # the same as a target near 300 with the default
    with pytest.raises(CalibrationError, match=r"^target epsilon 95 cannot be calibrated with the pld accountant: PLD "
                                               r"not run: .*; calibrate it with rdp, or choose a smaller target$"):
        calibrate_noise_multiplier(95, 1e-5, 0.00512, 1953, accountant="pld", settings=settings)
    assert calibrate_noise_multiplier(95, 1e-5, 0.00512, 1953, accountant="rdp", settings=settings) > 0

"""Noise calibration: the returned sigma meets the target within the tolerance, quickly."""

from __future__ import annotations


import pytest

from privacy_accounting import (
    CalibrationError,
    InvalidParameterError,
    calibrate_noise_multiplier,
    dp_sgd_event,
    epsilon_for,
)

DELTA = 1e-5


@pytest.mark.parametrize(
    "accountant, target, q, steps",
    [
        ("pld", 1.0, 256 / 50000, 1953),
        ("pld", 8.0, 0.05, 300),
        ("pld", 3.0, 0.1, 5000),
        ("rdp", 2.0, 0.01, 1000),
        ("prv", 4.0, 0.05, 200),
    ],
)
def test_calibrated_sigma_meets_target_within_tolerance(accountant: str, target: float, q: float, steps: int) -> None:
    tolerance = 0.01
    sigma = calibrate_noise_multiplier(target, DELTA, q, steps, accountant=accountant, tolerance=tolerance)
    eps = epsilon_for(dp_sgd_event(sigma, q, steps), DELTA, accountant)
    assert target * (1 - tolerance) <= eps <= target
    # Noticeably less noise must overspend: sigma is not needlessly large.
    assert epsilon_for(dp_sgd_event(sigma * (1 - 3 * tolerance), q, steps), DELTA, accountant) > target


def test_pld_calibration_needs_less_noise_than_rdp() -> None:
    rdp = calibrate_noise_multiplier(2.0, DELTA, 0.02, 500, accountant="rdp")
    pld = calibrate_noise_multiplier(2.0, DELTA, 0.02, 500, accountant="pld")
    assert pld < rdp


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(target_epsilon=0.0),
        dict(target_epsilon=-1.0),
        dict(target_delta=0.0),
        dict(target_delta=1.0),
        dict(sample_rate=0.0),
        dict(sample_rate=1.2),
        dict(steps=0),
        dict(accountant="gdp"),
        dict(tolerance=0.0),
        dict(tolerance=0.7),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict) -> None:
    args = dict(target_epsilon=1.0, target_delta=DELTA, sample_rate=0.01, steps=100) | kwargs
    with pytest.raises(InvalidParameterError):
        calibrate_noise_multiplier(**args)


def test_unreachable_target_raises() -> None:
    # 5000 full-batch Gaussian releases cannot reach epsilon 1e-4 with sigma <= 1e4.
    with pytest.raises(CalibrationError, match="above"):
        calibrate_noise_multiplier(1e-4, DELTA, 1.0, 5000, accountant="rdp")

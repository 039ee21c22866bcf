"""Noise calibration: the noise multiplier sigma that makes DP-SGD spend a target epsilon.

Finds sigma with ``target * (1 - tolerance) <= eps(sigma) <= target`` where eps is the chosen
accountant's upper bound for ``dp_sgd_event(sigma, q, steps)`` at ``target_delta``. eps is
decreasing in sigma and close to linear in log-log scale, so the search is a safeguarded
regula falsi on ``log eps`` against ``log sigma``:

1. RDP (cheap, closed form) brackets the answer; RDP >= PLD/PRV, so its sigma is an upper end.
2. For PLD / PRV, a coarser grid of the same accountant (still a valid upper bound) narrows it.
3. The accountant at the caller's settings verifies (and if needed refines) the final sigma, so
   the returned sigma satisfies the stated inequality for exactly the figures the ledger reports.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

from privacy_accounting.accountants import ACCOUNTANTS, DEFAULT_SETTINGS, AccountantSettings, epsilon_for
from privacy_accounting.errors import AccountingError, CalibrationError, InvalidParameterError
from privacy_accounting.event_tree import sgd
from privacy_accounting.validation import (MAX_NOISE_MULTIPLIER, MIN_NOISE_MULTIPLIER, check_delta, check_epsilon,
                                           check_sample_rate, check_steps)
_MAX_EVALUATIONS = 60


def calibrate_noise_multiplier(
    target_epsilon: float,
    target_delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "pld",
    tolerance: float = 0.01,
    settings: AccountantSettings = DEFAULT_SETTINGS,
) -> float:
    """Smallest-within-tolerance sigma with ``eps(sigma) <= target_epsilon`` for DP-SGD.

    Guarantee on the result: ``target_epsilon * (1 - tolerance) <= eps(sigma) <= target_epsilon``,
    eps being ``epsilon_for(dp_sgd_event(sigma, sample_rate, steps), target_delta, accountant, settings)``
    (computed on the same event's tree).
    Raises :class:`CalibrationError` if sigma would leave [1e-2, 1e4].
    """
    target = check_epsilon(target_epsilon, "target_epsilon")
    delta = check_delta(target_delta, "target_delta")
    q = check_sample_rate(sample_rate)
    n = check_steps(steps)
    if accountant not in ACCOUNTANTS:
        raise InvalidParameterError(f"unknown accountant {accountant!r}; choose one of {ACCOUNTANTS}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not (0.0 < tolerance < 0.5):
        raise InvalidParameterError(f"tolerance must be in (0, 0.5), got {tolerance!r}")

    def eps_fn(name: str, acc_settings: AccountantSettings) -> Callable[[float], float]:
        return lambda sigma: epsilon_for(sgd(sigma, q, n), delta, name, acc_settings)

    # 1. RDP (cheap evaluations) gives the starting point and the log-log slope.
    sigma, slope = _solve(eps_fn("rdp", settings), target, tolerance, sigma0=1.0, slope=-1.5)
    if accountant == "rdp":
        return sigma

    try:
        # 2. Coarse grid of the requested accountant, aiming at the upper half of the tolerance band.
        coarse = _coarse_settings(settings, accountant)
        if coarse != settings:
            sigma, slope = _solve(eps_fn(accountant, coarse), target, tolerance / 2, sigma0=sigma, slope=slope)
        # 3. Verify (and refine if needed) at the caller's settings.
        sigma, _ = _solve(eps_fn(accountant, settings), target, tolerance, sigma0=sigma, slope=slope)
    except AccountingError as err:  # e.g. PLD not run above its epsilon limit (review 117: a bare accountant error)
        raise CalibrationError(f"target epsilon {target:g} cannot be calibrated with the {accountant} accountant: "
                               f"{err}; calibrate it with rdp, or choose a smaller target") from err
    return sigma


def _coarse_settings(settings: AccountantSettings, accountant: str) -> AccountantSettings:
    if accountant == "pld":
        interval = max(settings.pld_value_discretization_interval, 1e-3)
        return dataclasses.replace(settings, pld_value_discretization_interval=interval)
    if accountant == "prv":
        return dataclasses.replace(settings, prv_eps_error=max(settings.prv_eps_error, 0.05))
    return settings


def _solve(
    f: Callable[[float], float], target: float, tolerance: float, *, sigma0: float, slope: float
) -> tuple[float, float]:
    """Find sigma with ``log(1 - tolerance) <= log(f(sigma) / target) <= 0``.

    Works on x = log sigma, y = log(f / target), decreasing in x and nearly linear. Next point:
    secant through the last two evaluations aimed at the band's middle; kept inside the bracket
    once there is one (else bisection), step-limited before. Returns (sigma, slope estimate).
    """
    band = math.log1p(-tolerance)
    aim = band / 2
    x_min, x_max = math.log(MIN_NOISE_MULTIPLIER), math.log(MAX_NOISE_MULTIPLIER)
    lo: float | None = None  # largest x seen with y > 0 (too little noise)
    hi: float | None = None  # smallest x seen with y < band (more noise than needed)
    points: list[tuple[float, float]] = []  # finite (x, y) evaluations, in order
    x = min(max(math.log(sigma0), x_min), x_max)
    for _ in range(_MAX_EVALUATIONS):
        eps = f(math.exp(x))
        y = math.log(eps / target) if eps > 0 else -math.inf
        if band <= y <= 0:
            return math.exp(x), slope
        if y > 0:
            lo = x if lo is None else max(lo, x)
        else:
            hi = x if hi is None else min(hi, x)
        if math.isfinite(y):
            points.append((x, y))
        if len(points) >= 2 and points[-1][1] != points[-2][1]:
            (x0, y0), (x1, y1) = points[-2], points[-1]
            secant = (y1 - y0) / (x1 - x0)
            if secant < 0:
                slope = secant
        if lo is not None and hi is not None:
            candidate = x + (aim - y) / slope if math.isfinite(y) else math.nan
            width = hi - lo
            inside = lo + 0.01 * width < candidate < hi - 0.01 * width
            x = candidate if inside else 0.5 * (lo + hi)
            if width < 1e-12:
                break
        else:
            if y > 0 and x >= x_max:
                raise CalibrationError(
                    f"target epsilon {target:g} needs a noise multiplier above {MAX_NOISE_MULTIPLIER:g}"
                )
            if y < band and x <= x_min:
                raise CalibrationError(
                    f"target epsilon {target:g} is reached with a noise multiplier below "
                    f"{MIN_NOISE_MULTIPLIER:g}; use a smaller target or fewer steps"
                )
            step = (aim - y) / slope if math.isfinite(y) else (1.0 if y > 0 else -1.0)
            step = math.copysign(min(max(abs(step), 0.002), 2.0), 1.0 if y > 0 else -1.0)
            x = min(max(x + step, x_min), x_max)
    raise CalibrationError(f"calibration did not converge within {_MAX_EVALUATIONS} accountant evaluations")

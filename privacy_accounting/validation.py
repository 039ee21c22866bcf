"""Range checks shared by the package; each raises :class:`InvalidParameterError` in one line."""

from __future__ import annotations

import math
from numbers import Integral, Real

from privacy_accounting.errors import InvalidParameterError


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InvalidParameterError(f"{name} must be a real number, got {value!r}")
    out = float(value)
    if math.isnan(out):
        raise InvalidParameterError(f"{name} must not be NaN")
    return out


def check_epsilon(value: object, name: str = "epsilon") -> float:
    """Epsilon of a budget or a target: finite and > 0."""
    eps = _real(name, value)
    if not (0.0 < eps < math.inf):
        raise InvalidParameterError(f"{name} must be finite and > 0, got {value!r}")
    return eps


def check_delta(value: object, name: str = "delta") -> float:
    """Delta of an (epsilon, delta) guarantee: strictly inside (0, 1)."""
    delta = _real(name, value)
    if not (0.0 < delta < 1.0):
        raise InvalidParameterError(f"{name} must be in the open interval (0, 1), got {value!r}")
    return delta


def check_sample_rate(value: object, name: str = "sample_rate") -> float:
    """Poisson sampling probability q: in (0, 1] (q = 1 is full-batch)."""
    q = _real(name, value)
    if not (0.0 < q <= 1.0):
        raise InvalidParameterError(f"{name} must be in (0, 1], got {value!r}")
    return q


#: The noise multipliers the accountants account for (and calibration searches): outside, they overflow, divide by
#: zero or ask for terabytes (review 109), and an event stored without a budget check broke every later report.
MIN_NOISE_MULTIPLIER = 1e-2
MAX_NOISE_MULTIPLIER = 1e4


def check_noise_multiplier(value: object, name: str = "noise_multiplier", *, new: bool = True) -> float:
    """Gaussian noise multiplier sigma (noise std / L2 sensitivity): finite and > 0, and for a ``new`` event in
    [1e-2, 1e4] (an event read back from a ledger is read as it was written: versions before this one accepted any
    sigma > 0, and an accountant that cannot account for one gives a note)."""
    sigma = _real(name, value)
    if not (0.0 < sigma < math.inf):
        raise InvalidParameterError(f"{name} must be finite and > 0, got {value!r}")
    # (with a margin of 1e-9: calibration's exp(log(x)) is not always x)
    if new and not MIN_NOISE_MULTIPLIER * (1 - 1e-9) <= sigma <= MAX_NOISE_MULTIPLIER * (1 + 1e-9):
        raise InvalidParameterError(f"{name} must be between {MIN_NOISE_MULTIPLIER:g} and {MAX_NOISE_MULTIPLIER:g} "
                                    f"(the accountants cannot account for {sigma!r}), got {value!r}")
    return sigma


def check_steps(value: object, name: str = "steps") -> int:
    """Number of compositions (steps, count): an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise InvalidParameterError(f"{name} must be an integer >= 1, got {value!r}")
    if int(value) < 1:
        raise InvalidParameterError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def check_name(value: object, name: str) -> str:
    """Identifiers (data source, shard, component, operator): non-empty single-line strings."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidParameterError(f"{name} must be a non-empty string, got {value!r}")
    if any(ch in value for ch in "\r\n\t\x00"):
        raise InvalidParameterError(f"{name} must be a single line without control characters, got {value!r}")
    return value

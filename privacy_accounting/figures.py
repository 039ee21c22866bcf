"""How an epsilon is printed: rounded up (a bound printed lower than computed would claim more than was shown), a
lower bound rounded down, and what is left of a budget as the limit minus the printed spend (the two add up)."""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal


def fmt_eps(value: float | None, digits: int = 4) -> str:
    """Epsilon for humans: ``inf`` spelled out, else ``digits`` significant digits, rounded up: an upper bound
    printed lower than it is would claim more than was shown (review 104: 10.6845 read 10.68)."""
    if value is None:
        return "n/a"
    return "infinite (no guarantee)" if math.isinf(value) else significant(value, digits, up=True)


def fmt_remaining(limit: float, spent: str) -> str:
    """What is left of ``limit`` once ``spent`` (the spent figure as :func:`fmt_eps` printed it, rounded up) is taken
    from it, in exact decimals: the two printed add up to the limit (review 104: "10.68 of 16, leaving 5.315"), and
    what is left is never more than the exact figures leave. None left where it is spent, or the spent figure is not
    a number (infinite)."""
    try:
        left = Decimal(repr(float(limit))) - Decimal(spent)
    except ArithmeticError:  # "infinite (no guarantee)"
        return "0"
    return "0" if left <= 0 else format(left.normalize(), "f")


def significant(value: float, digits: int, *, up: bool) -> str:
    """``value`` (finite) to ``digits`` significant digits, rounded up or down from its exact binary value, written
    as ``format(..., "g")`` writes it."""
    exact = Decimal(value)
    if exact == 0:
        return "0"
    rounded = exact.quantize(Decimal(1).scaleb(exact.adjusted() - digits + 1),
                             rounding=ROUND_CEILING if up else ROUND_FLOOR)
    return f"{float(rounded):.{digits}g}"


def fmt_set(value: float) -> str:
    """A figure a person set or a mechanism was run at (a budget's epsilon, any delta), exactly as it is held: the
    shortest text that reads back as the same float, never rounded (review 108: a budget of 12.344449 read 12.3444,
    a statement stronger than the limit the ledger enforces)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text

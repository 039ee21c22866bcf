"""Report entries made by hand (plain data, as ``build_report`` makes them), for the figures' hard cases."""

from __future__ import annotations

from collections.abc import Sequence

from privacy_accounting.report_models import ShardEntry

DELTA = 1e-5


def shard_entry(name: str, spent: float, budget: float | None, curve: Sequence[tuple[int, float]] = (),
                data_source: str = "visits") -> ShardEntry:
    """A shard of ``data_source`` that spent ``spent`` against a shard ``budget`` (None: none set), with ``curve``
    as (steps, epsilon) points."""
    status = "no budget set" if budget is None else ("exceeded" if spent > budget else "within budget")
    return ShardEntry(data_source=data_source, shard=name, unit="record",
                      budget=None if budget is None else {"epsilon": budget, "delta": DELTA, "scope": "shard"},
                      budget_status=status, spent={"delta": DELTA, "epsilon": spent, "accountant": "pld"},
                      remaining_epsilon=None, n_events=1, n_reserved=0, n_completed=1, n_failed=0, components=[],
                      curve=[{"steps": s, "epsilon": e} for s, e in curve])

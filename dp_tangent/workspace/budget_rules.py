"""What a budget change must respect, checked under the workspace's lock before it is logged.

Every figure of a shard is stated at its budget's delta, so that delta stays below 1/n for the largest n the shard's
private runs were planned for (a run's own delta is held so: :meth:`~dp_tangent.training.config.PrivacySpec.validate`);
and a released model's statement bounds every later run on its records by the budget of each shard holding them, so
that budget may be lowered after a release, never raised (reviews 102, 105, 106, 108).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from privacy_accounting.budgets import budget_of
from privacy_accounting.event_tree import is_non_private
from privacy_accounting.figures import fmt_set

from ..training.config import check_budget_delta, planned_size
from .names import WorkspaceError
from .release import released_shards

if TYPE_CHECKING:
    from .store import Workspace


def check_budget_change(ws: "Workspace", data_source: str, after: Mapping[str, tuple[float, float]]) -> None:
    """Refuse, in one line, the change that leaves each shard of ``after`` under the budget (epsilon, delta) it maps
    to (the shard's budget as it then applies: its own, else its source's)."""
    released = released_shards(ws) if after else {}
    budgets = ws.ledger.budgets()
    for shard, (epsilon, delta) in after.items():
        sizes = [n for n in (planned_size(e.details) for e in ws.ledger.events(data_source=data_source, shard=shard)
                             if not is_non_private(e.tree)) if n]
        if sizes:
            check_budget_delta(delta, max(sizes), f"budget {data_source}/{shard}")
        before = budget_of(budgets, data_source, shard)  # (a shard set_budget makes known has none yet)
        if (data_source, shard) in released and before is not None and (epsilon > before.epsilon
                                                                          or delta > before.delta):
            models = ", ".join(repr(m) for m in released[(data_source, shard)])
            raise WorkspaceError(f"budget {data_source}/{shard}: model {models} was released with records of it, and "
                                 "its statement bounds every later run on them by the budget (epsilon "
                                 f"{fmt_set(before.epsilon)} at delta {fmt_set(before.delta)}): after a release a "
                                 "budget may be lowered, never raised")

"""``dp-tangent budget set | show``: privacy budgets per data source or shard."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from .app import DEFAULT_WORKSPACE, WorkspaceOption, app, open_workspace


if TYPE_CHECKING:
    from privacy_accounting import Ledger

budget_app = typer.Typer(help="Privacy budgets per data source or shard.", no_args_is_help=True)
app.add_typer(budget_app, name="budget")


@budget_app.command("set", context_settings={"ignore_unknown_options": True})  # `set digits -1`: a number
def budget_set(
    target: Annotated[str, typer.Argument(help="DATA_SOURCE or DATA_SOURCE/SHARD.")],
    epsilon: Annotated[float, typer.Argument(help="Epsilon limit.")],
    delta: Annotated[Optional[float], typer.Option(
        help="Delta at which the limit holds (default: the current budget's, else 1e-5).")] = None,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Set the epsilon limit of a data source (every shard of it, those with budgets of their own too) or of one
    shard; both must be declared (`dp-tangent train` declares a recipe's data source and shards)."""
    from privacy_accounting.budgets import budget_of
    from privacy_accounting.figures import fmt_eps, fmt_set

    from ..workspace import WorkspaceError
    from ..workspace.data_sources import declared_public

    source, slash, shard = target.partition("/")
    if slash and (not shard or not source):
        raise WorkspaceError(f"{target!r}: name a data source, or a data source and one of its shards as "
                             "DATA_SOURCE/SHARD")
    ws = open_workspace(workspace)
    sources = [s.name for s in ws.ledger.data_sources()]
    if source not in sources:
        raise WorkspaceError(f"no data source {source!r} in {ws.root} (declared: {', '.join(sources) or 'none'}); "
                             "training a recipe declares its data source and shards")
    shards = [s for _, s in ws.ledger.shards(source)]
    if shard and shard not in shards:
        raise WorkspaceError(f"data source {source!r} has no shard {shard!r} (shards: {', '.join(shards) or 'none'})")
    if shard and (source, shard) in declared_public(ws):  # a budget there would be recorded and never applied
        raise WorkspaceError(f"{target} is declared public by its data owner (public_split): no privacy budget applies "
                             f"to it; set the budget of {source}, or of one of its private shards")
    given = delta
    if delta is None:  # never change a budget's delta silently: a shard's is its source's where it has none of its own
        current = ws.ledger.budget(source, shard) if shard else budget_of(ws.ledger.budgets(), source, None)
        delta = current.delta if current is not None else 1e-5
    own = {b.shard: b.delta for b in ws.ledger.budgets() if b.data_source == source and b.shard is not None}
    budget = ws.set_budget(source, shard or None, epsilon, delta, every_shard=True, shard_delta=given)
    also = ", ".join(f"{s} (delta {given if given is not None else d:g})" for s, d in sorted(own.items()))
    typer.echo(f"budget {target}: epsilon {fmt_set(budget.epsilon)} at delta {fmt_set(budget.delta)}"
               + (f"; also on {also}, which had budgets of their own" if own and not shard else ""))
    for name in [shard] if shard else shards:
        spent = shard_state(ws.ledger, source, name).spent
        if math.isfinite(spent) and spent > budget.epsilon:  # a non-private run's infinity is shown by budget show
            typer.echo(f"note: {source}/{name} has spent epsilon {fmt_eps(spent)}, over the new limit: it trains no "
                       "further (spent budget stays spent)", err=True)


@budget_app.command("show")
def budget_show(workspace: WorkspaceOption = DEFAULT_WORKSPACE) -> None:
    """Spent and remaining epsilon of every shard."""
    from rich.console import Console
    from rich.table import Table

    from privacy_accounting.figures import fmt_eps, fmt_remaining, fmt_set

    from ..workspace.audit_log import FINISHED_BY, verify
    from ..workspace.commit import INTENT, PENDING
    from ..workspace.data_sources import declared_public

    ws = open_workspace(workspace, read_only=True)  # figures only: nothing written, not even by SQLite
    ledger = ws.ledger
    declared = declared_public(ws)
    table = Table()
    for column in ("data source", "shard", "spent ε", "limit ε", "remaining ε", "δ"):
        table.add_column(column)
    public_shards = []
    for source, shard in ledger.shards():
        state = shard_state(ledger, source, shard)
        public = state.size_public
        public_shards += [f"{source}/{shard}"] if public else []
        limit = "no budget set" if state.limit is None else fmt_set(state.limit)
        table.add_row(source, shard, (fmt_eps(state.spent) if math.isfinite(state.spent) else "∞ (non-private)")
                      + (" *" if public else ""),
                      "none: declared public" if (source, shard) in declared else limit,
                      "-" if state.remaining is None or (source, shard) in declared
                      else fmt_remaining(state.limit, fmt_eps(state.spent)),
                      fmt_set(state.delta) if state.delta else "-")
    if table.row_count:
        Console().print(table)
    else:  # an empty table read as a failure to show one
        typer.echo(f"no data source is registered in {ws.root}: no budget is set and nothing is spent")
    if public_shards:
        typer.echo(f"* {', '.join(public_shards)}: a run that read its records was planned from its shard's own "
                   "record count (no planned_shard_size): its ε holds with that shard's size taken as public")
    # the figures are the ledger's: say so when the tables they come from are not the state the audit log last
    # vouched for (a review deleted a row with sqlite3 and saw a lower spend printed without a word)
    if any((ws.root / PENDING).glob(f"*/{INTENT}")):
        typer.secho(f"note: an operation is under way or was interrupted ({FINISHED_BY}); these figures may not "
                    "include it", err=True, fg=typer.colors.YELLOW)
        return
    # the records each run read count only where a run was let read another shard's records (hashing them is slow)
    tables = FIGURE_TABLES + (("event_records",) if ledger.overlap_possible() else ())
    check = verify(ws.audit_log_path, check_artifacts=False, ledger_state=ledger.state_digest(tables=tables),
                   ledger_tables=tables)
    if not check.ok:  # exit 1, as `report` does: a script must not take these figures as vouched for
        typer.secho(f"warning: the workspace does not verify ({check.first_bad}); these are the ledger's figures as it "
                    "is now: run `dp-tangent audit verify`", err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(1)


FIGURE_TABLES = ("data_sources", "shards", "budgets", "events")  # what budget show's figures are computed from


@dataclass(frozen=True)
class ShardState:
    """A shard's spent epsilon at ``delta`` (the budget's, else the smallest of its runs), its limit and
    what remains (None: no budget)."""

    spent: float
    limit: float | None
    remaining: float | None
    delta: float | None
    shared_with: frozenset[tuple[str, str]] = frozenset()  # other shards whose runs read some of its records
    size_public: bool = False  # a run its figure composes was planned from its shard's own record count

    def text(self) -> str:
        from privacy_accounting.figures import fmt_eps, fmt_remaining, fmt_set

        spent = fmt_eps(self.spent) if math.isfinite(self.spent) else "∞ (non-private)"
        # review 112: `train` printed this line without the caveat `budget show` marks with "*"
        public = (" (with the shards' sizes taken as public: a run on them was planned from its shard's record "
                  "count)") if self.size_public else ""
        if self.limit is None:
            return f"spent epsilon {spent}, no budget set{public}"
        return (f"spent epsilon {spent} of its budget {fmt_set(self.limit)} at delta {fmt_set(self.delta)}, "
                f"{fmt_remaining(self.limit, spent)} left{public}")


def shard_state(ledger: "Ledger", source: str, shard: str) -> ShardState:
    """What ``budget show`` prints for one shard (computing it also fills the per-user cache of
    epsilons, so a later ``budget show`` answers without loading the accountants)."""
    limit = ledger.budget(source, shard)
    events = ledger.events(data_source=source, shard=shard)
    delta = limit.delta if limit else min((e.delta for e in events), default=None)
    from ..components.component import sizes_public

    bounds, shared_with = ledger.shard_spend_and_readers(source, shard, delta=delta) if delta else (None, frozenset())
    spent = bounds.epsilon if bounds is not None else 0.0
    public = sizes_public(ledger, [(source, shard), *shared_with])  # every run its figure composes
    if limit is None:
        return ShardState(spent, None, None, delta, shared_with, public)
    # Ledger.remaining's figure, from the spend just computed at the budget's delta (not computed again)
    remaining = max(0.0, limit.epsilon - spent) if math.isfinite(spent) else 0.0
    return ShardState(spent, limit.epsilon, remaining, delta, shared_with, public)

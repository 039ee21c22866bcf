"""``dp-tangent budget set | show``: privacy budgets per data source or shard."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .app import DEFAULT_WORKSPACE, WorkspaceOption, app, open_workspace


budget_app = typer.Typer(help="Privacy budgets per data source or shard.", no_args_is_help=True)
app.add_typer(budget_app, name="budget")


@budget_app.command("set")
def budget_set(
    target: Annotated[str, typer.Argument(help="DATA_SOURCE or DATA_SOURCE/SHARD.")],
    epsilon: Annotated[float, typer.Argument(help="Epsilon limit.")],
    delta: Annotated[Optional[float], typer.Option(
        help="Delta at which the limit holds (default: the current budget's, else 1e-5).")] = None,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Set the epsilon limit of a data source (every shard of it) or of one shard; both must be declared
    (`dp-tangent train` declares a recipe's data source and shards)."""
    from ..workspace import WorkspaceError

    source, _, shard = target.partition("/")
    ws = open_workspace(workspace)
    sources = [s.name for s in ws.ledger.data_sources()]
    if source not in sources:
        raise WorkspaceError(f"no data source {source!r} in {ws.root} (declared: {', '.join(sources) or 'none'}); "
                             "training a recipe declares its data source and shards")
    shards = [s for _, s in ws.ledger.shards(source)]
    if shard and shard not in shards:
        raise WorkspaceError(f"data source {source!r} has no shard {shard!r} (shards: {', '.join(shards) or 'none'})")
    if delta is None:  # never change a budget's delta silently
        current = next((b for b in ws.ledger.budgets() if (b.data_source, b.shard) == (source, shard or None)), None)
        delta = current.delta if current is not None else 1e-5
    budget = ws.set_budget(source, shard or None, epsilon, delta)
    typer.echo(f"budget {target}: epsilon {budget.epsilon:g} at delta {budget.delta:g}")


@budget_app.command("show")
def budget_show(workspace: WorkspaceOption = DEFAULT_WORKSPACE) -> None:
    """Spent and remaining epsilon of every shard."""
    import math

    from rich.console import Console
    from rich.table import Table

    ledger = open_workspace(workspace).ledger
    table = Table()
    for column in ("data source", "shard", "spent ε", "limit ε", "remaining ε", "δ"):
        table.add_column(column)
    for source, shard in ledger.shards():
        limit = ledger.budget(source, shard)
        events = ledger.events(data_source=source, shard=shard)
        delta = limit.delta if limit else min((e.delta for e in events), default=None)
        spent = ledger.shard_spend(source, shard, delta=delta).epsilon if delta else 0.0
        remaining = ledger.remaining(source, shard)
        table.add_row(source, shard, f"{spent:.3g}" if math.isfinite(spent) else "∞ (non-private)",
                      f"{limit.epsilon:g}" if limit else "no budget set",
                      "-" if remaining is None else f"{remaining:.3g}", f"{delta:g}" if delta else "-")
    Console().print(table)

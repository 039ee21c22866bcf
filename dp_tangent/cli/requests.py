"""``dp-tangent requests list``: deletion requests with their legal clock, open and overdue ones flagged."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .app import DEFAULT_WORKSPACE, WorkspaceOption, app, open_workspace

requests_app = typer.Typer(help="Deletion requests and their deadlines.", no_args_is_help=True)
app.add_typer(requests_app, name="requests")


@requests_app.command("list")
def requests_list(
    overdue: Annotated[bool, typer.Option("--overdue", help="Only open requests past their deadline.")] = False,
    open_only: Annotated[bool, typer.Option("--open", help="Only requests not completed yet.")] = False,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Every deletion request: received, due by (the earliest of GDPR's and CCPA's deadlines), status.

    Exit code 1 when an open request is overdue, or a deletion's certificate was never sealed, so a scheduled
    check can alert on it.
    """
    from rich.console import Console
    from rich.table import Table

    from ..workspace.request_register import list_requests

    rows = list_requests(open_workspace(workspace))
    shown = [r for r in rows if (not overdue or r.overdue) and (not open_only or r.status == "open")]
    table = Table()
    # the id in full, however narrow the output (folded onto more lines if it must): finishing a request needs it
    table.add_column("request", overflow="fold", min_width=7)
    for column in ("status", "received (UTC)", "due by", "days left", "completed"):
        table.add_column(column)
    for r in shown:
        late = r.completed_at is not None and r.completed_at.date() > r.due_by  # past the earliest deadline
        state = ("[red]OVERDUE[/]" if r.overdue else "[red]UNSEALED[/]" if r.status == "unsealed"
                 else "[red]completed LATE[/]" if late else r.status)
        table.add_row(r.request_id, state, r.received_at.isoformat(timespec="minutes"), r.due_by.isoformat(),
                      str(r.days_left) if r.status == "open" else "-",
                      r.completed_at.isoformat(timespec="minutes") if r.completed_at else "-")
    # piped or redirected, the table keeps its natural width (rich would fit it in 80 columns, cutting every cell)
    console = Console() if sys.stdout.isatty() else Console(width=400)
    console.print(table if shown else "no deletion requests" + (" match" if rows else ""))
    for r in rows:
        if r.status == "unsealed":
            typer.echo(f"request {r.request_id}: deleted, but its certificate was never sealed (the run stopped "
                       "before): run the same `dp-tangent forget` command again to seal it", err=True)
    if any(r.overdue or r.status == "unsealed" for r in rows):
        raise typer.Exit(1)

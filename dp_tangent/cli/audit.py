"""``dp-tangent audit verify | log``: the hash-chained audit log."""

from __future__ import annotations

import typer

from .app import DEFAULT_WORKSPACE, WorkspaceOption, app, open_workspace


audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(workspace: WorkspaceOption = DEFAULT_WORKSPACE) -> None:
    """Recompute the chain and every artifact digest; exit 0 only if all check out."""
    result = open_workspace(workspace).audit.verify()
    typer.echo(str(result))
    if not result.ok:
        raise typer.Exit(1)


@audit_app.command("log")
def audit_log(workspace: WorkspaceOption = DEFAULT_WORKSPACE) -> None:
    """Print the audit log, one entry per line."""
    for entry in open_workspace(workspace).audit.entries():
        outputs = ", ".join(a.name for a in entry.outputs)
        typer.echo(f"{entry.seq:>4}  {entry.time}  {entry.operator:<10} {entry.operation:<12} {outputs}")

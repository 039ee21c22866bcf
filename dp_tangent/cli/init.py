"""``dp-tangent init``: a new, empty workspace (key, ledger, audit log)."""

from __future__ import annotations

import typer

from .app import DEFAULT_WORKSPACE, WorkspaceOption, app


@app.command()
def init(workspace: WorkspaceOption = DEFAULT_WORKSPACE) -> None:
    """Create a workspace in a new or empty directory: manifest key, ledger and audit log.

    `train --init` creates one too; the key is mode 0600. Each workspace accounts for itself alone: its ledger
    and its deletions know nothing of another's.
    """
    from ..workspace import Workspace

    if (workspace / "workspace.json").is_file():  # asked again: the workspace is there, as asked (it must open)
        ws = Workspace.open(workspace, finish=False)
        typer.echo(f"{ws.root} is a workspace already (manifest key {ws.info.manifest_key_id}); nothing was changed")
        return
    ws = Workspace.create(workspace)
    typer.echo(f"created workspace {ws.root} (manifest key {ws.info.manifest_key_id})")

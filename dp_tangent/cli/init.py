"""``dp-tangent init``: a new, empty workspace (key, ledger, audit log)."""

from __future__ import annotations

import typer

from .app import DEFAULT_WORKSPACE, WorkspaceOption, app


@app.command()
def init(workspace: WorkspaceOption = DEFAULT_WORKSPACE) -> None:
    """Create a workspace in a new or empty directory: manifest key, ledger and audit log.

    `train` creates one too when the directory does not exist yet; the key is mode 0600.
    """
    from ..workspace import Workspace

    if (workspace / "workspace.json").is_file():  # asked again: the workspace is there, as asked (it must open)
        ws = Workspace.open(workspace, finish=False)
        typer.echo(f"{ws.root} is a workspace already (manifest key {ws.info.manifest_key_id}); nothing was changed")
        return
    ws = Workspace.create(workspace)
    typer.echo(f"created workspace {ws.root} (manifest key {ws.info.manifest_key_id})")

"""``dp-tangent forget``: serve a deletion request and print its certificate."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .app import DEFAULT_WORKSPACE, WorkspaceOption, app, busy, open_workspace


@app.command()
def forget(
    record_ids: Annotated[list[str], typer.Argument(help="Record ids to delete.")],
    request_id: Annotated[Optional[str], typer.Option(help="Request id (default: a timestamp).")] = None,
    retrain: Annotated[bool, typer.Option(help="Retrain affected shards without the records (needs registered data).")] = False,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Serve a deletion request: remove every component holding the records, recompose, certify."""
    from datetime import datetime, timezone

    from ..workspace.data_sources import shard_records_for
    from ..workspace.deletion_requests import DeletionRequest
    from ..workspace.forget import forget as serve

    ws = open_workspace(workspace)
    if not ws.list_components():
        raise typer.BadParameter(f"workspace {workspace} has no components: nothing to forget")
    now = datetime.now(timezone.utc)
    request = DeletionRequest(request_id=request_id or now.strftime("request-%Y%m%dT%H%M%S"),
                              record_ids=tuple(record_ids), received_at=now)
    with busy("serving the deletion request" + (" (retraining affected shards)…" if retrain else "…")):
        result = serve(ws, request, retrain=retrain, shard_records=shard_records_for(ws) if retrain else None)
    typer.echo(result.message)
    typer.echo(f"certificate: {result.json_path}\n{result.text_path.read_text()}")

"""``dp-tangent report``: the privacy budget report as Markdown, JSON or HTML."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import DEFAULT_WORKSPACE, WorkspaceOption, app, busy, check_output_outside, open_workspace


@app.command()
def report(
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    format: Annotated[str, typer.Option("--format", "-f", help="md, json or html.")] = "md",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """The privacy budget report: every shard, component and composed model, with the statement."""
    from privacy_accounting import build_report

    from ..io import atomic_write_text

    renderers = {"md": "to_markdown", "json": "to_json", "html": "to_html"}
    if format not in renderers:
        raise typer.BadParameter(f"--format must be one of {', '.join(renderers)}, got {format!r}")
    ws = open_workspace(workspace)
    if output is not None:
        check_output_outside(ws, output, allowed="reports")
    ledger = ws.ledger
    with busy("computing every accountant's epsilon…"):
        text = getattr(build_report(ledger), renderers[format])()
    if output is None:
        typer.echo(text)
    else:
        atomic_write_text(output, text)
        typer.echo(f"wrote {output}")

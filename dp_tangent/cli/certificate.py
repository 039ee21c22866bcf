"""``dp-tangent certificate verify``: a deletion certificate still holds, checked at any later time."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import DEFAULT_WORKSPACE, WorkspaceOption, app, open_workspace

certificate_app = typer.Typer(help="Deletion certificates.", no_args_is_help=True)
app.add_typer(certificate_app, name="certificate")


@certificate_app.command("verify")
def certificate_verify(
    certificate: Annotated[Path, typer.Argument(help="The certificate's .json file (certificates/REQUEST.json).")],
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Check that the deletion still holds: the log extends the certificate's checkpoint, no current
    component or model holds the records, and they are still tombstoned. Exit 1 if not."""
    from ..workspace.certificate_check import check_certificate, load_certificate

    result = check_certificate(open_workspace(workspace), load_certificate(certificate))
    typer.echo(str(result))
    if not result.ok:
        raise typer.Exit(1)

"""``dp-tangent certificate verify``: a deletion certificate still holds, checked at any later time."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import DEFAULT_WORKSPACE, WorkspaceOption, app, open_workspace

certificate_app = typer.Typer(help="Deletion certificates.", no_args_is_help=True)
app.add_typer(certificate_app, name="certificate")


@certificate_app.command("verify")
def certificate_verify(
    certificate: Annotated[Path, typer.Argument(
        help="The certificate: the requester's .txt copy or the .json (certificates/REQUEST.txt|.json), or a request "
             "id (its copy in the workspace).")],
    checkpoint: Annotated[Optional[Path], typer.Option(
        help="A later checkpoint kept outside the workspace (`audit checkpoint`): the log must extend it too.")] = None,
    verifier_key: Annotated[Optional[str], typer.Option(
        help="The checkpoint's verifier key (printed by `audit keygen`): its signature is checked.")] = None,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Check that the deletion still holds: the log extends the certificate's checkpoint (and the given
    one), the records are those its deletion entry logged, no current component or model holds them,
    and they are still tombstoned. Exit 1 if not."""
    from ..workspace.certificate_check import check_certificate, load_certificate
    from .audit import extends_line, kept_checkpoint

    ws = open_workspace(workspace, read_only=True)  # a check writes nothing
    kept, forged = kept_checkpoint(ws, checkpoint, verifier_key)
    certificate = _by_request_id(ws, certificate)
    result = check_certificate(ws, load_certificate(certificate), kept)
    typer.echo(str(result))
    if forged:
        typer.echo(forged)
    elif kept is not None and result.ok:  # review 97: the given checkpoint's check went unsaid
        typer.echo(extends_line(checkpoint, kept, verifier_key))
    if not result.ok or forged:
        raise typer.Exit(1)


def _by_request_id(ws, certificate: Path) -> Path:  # noqa: ANN001
    """``certificate`` itself, or, when no such file exists and it names a request, that request's copy in the
    workspace (its .txt, else its .json), as `certificate restore` takes a request id."""
    from ..errors import DPTangentError
    from ..workspace import WorkspaceError

    if certificate.exists() or certificate.name != str(certificate):
        return certificate
    try:
        paths = ws.certificate_paths(certificate.name)
    except DPTangentError:  # not a request id's form: the path it is, which is missing
        return certificate
    found = next((p for p in reversed(paths) if p.is_file()), None)
    if found is None:  # neither a file here nor a request's certificate: say both
        known = sorted({p.stem for p in ws.certificates_dir.glob("*.json")}) if ws.certificates_dir.is_dir() else []
        raise WorkspaceError(f"{certificate}: no such file, and no certificate of a request {certificate.name!r} in "
                             f"{ws.root} (requests with certificates: {', '.join(known) or 'none'})")
    return found


@certificate_app.command("restore")
def certificate_restore(
    request_id: Annotated[str, typer.Argument(help="The request whose certificate's .txt was changed or removed.")],
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Rewrite a certificate's requester copy (.txt) from its .json, when the result is exactly the file the audit
    log vouches for (nothing else is changed, and nothing is logged). Then close a recorded integrity failure with
    `dp-tangent audit resolve --reason ...`."""
    from ..workspace.certificates import restore_text

    ws = open_workspace(workspace, finish=False)
    path, rewritten = restore_text(ws, request_id)
    if not rewritten:
        typer.echo(f"{path} holds the bytes the audit log vouches for already; nothing was changed")
        return
    typer.echo(f"restored {path} (the bytes the audit log vouches for); if an integrity failure was recorded, close "
               f"it with: dp-tangent audit resolve --reason 'restored {path.name} from its .json' -w {ws.root}")

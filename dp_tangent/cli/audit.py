"""``dp-tangent audit verify | resolve | log | keygen | checkpoint``: the hash-chained audit log and its checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from .app import DEFAULT_WORKSPACE, WorkspaceOption, app, check_output_outside, open_workspace

if TYPE_CHECKING:
    from ..workspace import Workspace
    from ..workspace.checkpoint import Checkpoint

audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    checkpoint: Annotated[Optional[Path], typer.Option(
        help="A checkpoint kept outside the workspace (from `audit checkpoint`): the log must extend it.")] = None,
    verifier_key: Annotated[Optional[str], typer.Option(
        help="The checkpoint's verifier key (name+hash+key, printed by `audit keygen`): its signature is checked.")] = None,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Recompute the chain and every artifact digest (and, given a checkpoint, that the log extends it);
    exit 0 only if all check out, else print every problem and exit 1."""
    from ..workspace.lock import workspace_lock_if_free

    ws = open_workspace(workspace, read_only=True)  # a check writes nothing: an unfinished change is reported
    kept, forged = kept_checkpoint(ws, checkpoint, verifier_key)
    with workspace_lock_if_free(ws.root) as alone:  # held, no change starts while the files are read
        result = ws.audit.verify(checkpoint=kept)
    typer.echo(str(result))
    if forged:
        typer.echo(forged)
    if not result.ok and not alone:  # review 64: a change under way read as an interrupted one
        typer.echo("note: another dp-tangent command held this workspace's lock meanwhile (a change may have been "
                   "under way): what its unfinished work explains, an interrupted operation or a ledger ahead of the "
                   "log, goes once it is done; run `dp-tangent audit verify` again then")
    if kept is not None and result.ok:
        typer.echo(extends_line(checkpoint, kept, verifier_key))
    if not result.ok or forged:
        raise typer.Exit(1)


def kept_checkpoint(ws: "Workspace", checkpoint: Path | None,
                    verifier_key: str | None) -> tuple["Checkpoint | None", str | None]:
    """(the checkpoint a check is given, or None; None, or the line that says its signature failed, review 97: a
    failed check, exit 1 with every other problem, not a usage mistake)."""
    from ..workspace.checkpoint import CheckpointError, SignatureError, origin_of, read_kept_checkpoint

    if checkpoint is None and verifier_key is not None:
        raise CheckpointError("--verifier-key checks a --checkpoint; give both")
    if checkpoint is None:
        return None, None
    try:
        return read_kept_checkpoint(checkpoint, origin_of(ws.info.manifest_key_id), verifier_key), None
    except SignatureError as err:
        return None, f"FAILED: checkpoint {err}: the log was not checked against it"


def extends_line(path: Path, kept: "Checkpoint", verifier_key: str | None) -> str:
    """What a check that passed says of the checkpoint it was given."""
    signed = "signature verified" if verifier_key else "signature NOT checked (give --verifier-key)"
    return f"extends checkpoint {path} ({kept.size} entries; {signed})"


@audit_app.command("resolve")
def audit_resolve(
    reason: Annotated[str, typer.Option(help="What was found and what was done about it (logged with your name).")],
    accept_ledger: Annotated[bool, typer.Option(
        "--accept-ledger", help="The ledger cannot be restored (a process killed just after its ledger operations, "
                                "a full disk): accept it as it is now. Every file must verify all the same.")] = False,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Close the recorded integrity failures once the workspace verifies again (what they found was undone, e.g. a
    file put there by hand removed); operations refused meanwhile then run again. The failures, and who closed
    them why, stay in the log, and `audit verify` names them."""
    ws = open_workspace(workspace, finish=False)
    seqs = ws.resolve_integrity_failures(reason, accept_ledger=accept_ledger)
    typer.echo(f"resolved the integrity failure(s) of entr{'y' if len(seqs) == 1 else 'ies'} "
               f"{', '.join(map(str, seqs))}; the workspace verifies")


@audit_app.command("log")
def audit_log(workspace: WorkspaceOption = DEFAULT_WORKSPACE) -> None:
    """Print the audit log, one entry per line."""
    for entry in open_workspace(workspace, read_only=True).audit.entries():
        outputs = ", ".join(a.name for a in entry.outputs)
        typer.echo(f"{entry.seq:>4}  {entry.time}  {entry.operator:<10} {entry.operation:<12} {outputs}")


@audit_app.command("keygen")
def audit_keygen(
    key: Annotated[Path, typer.Argument(help="New file for the signing key: keep it OUTSIDE the workspace.")],
    name: Annotated[str, typer.Option(help="Key name, shown in every signature (e.g. your organisation).")] = "dp-tangent",
) -> None:
    """Create an Ed25519 key for signing checkpoints, and print its verifier key (publish that one)."""
    from ..workspace.checkpoint import CheckpointError, generate_key
    from ..workspace.store import enclosing_workspace

    inside = enclosing_workspace(key)
    if inside is not None:  # the key would be an unaccounted file there, and with the log it signs
        raise CheckpointError(f"{key} is inside the workspace {inside}: a signing key must be kept outside it")
    key.expanduser().absolute().parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    typer.echo(generate_key(key.expanduser(), name))


@audit_app.command("checkpoint")
def audit_checkpoint(
    key: Annotated[Path, typer.Option(help="Signing key file (from `audit keygen`), kept outside the workspace.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also write the checkpoint here.")] = None,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Print a signed checkpoint of the audit log (size and Merkle root); keep it outside the workspace."""
    from ..io import atomic_write_text
    from ..workspace.checkpoint import CheckpointError, checkpoint_of, origin_of, sign

    ws = open_workspace(workspace)
    if output is not None:
        check_output_outside(ws, output)
        if output.expanduser().exists():  # a kept checkpoint, or the signing key itself
            raise CheckpointError(f"{output} exists: a checkpoint is written to a new file, never over one (an "
                                  "auditor compares later logs against the checkpoints kept)")
    if ws.root.resolve() in key.expanduser().absolute().resolve().parents:
        raise CheckpointError(f"{key} is inside the workspace: a signing key must be kept outside it")
    with ws.lock():
        result = ws.audit.verify()
        if not result.ok:
            typer.echo(str(result), err=True)
            raise typer.Exit(1)  # never sign a log that does not verify
        note = sign(checkpoint_of([e.hash for e in ws.audit.entries()], origin_of(ws.info.manifest_key_id)), key)
    if output is not None:
        atomic_write_text(output, note)
    typer.echo(note, nl=False)

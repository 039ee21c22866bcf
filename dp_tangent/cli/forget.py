"""``dp-tangent forget``: serve a deletion request and print its certificate."""

from __future__ import annotations

import secrets
import shlex
from datetime import datetime
from typing import Annotated, Optional

import typer

from .app import DEFAULT_WORKSPACE, WorkspaceOption, app, busy, open_workspace
from .budget import shard_state

#: Exit code when some requested id is in no component: the request is completed (and the id
#: tombstoned), but the operator must tell "we hold no data on this person" from a typo.
NOT_FOUND_EXIT = 3


def _received_at(text: str | None, now: datetime):  # noqa: ANN202
    """``--received-at``: an ISO date (that day, 00:00 UTC) or a date-time with its timezone."""
    from datetime import date, timezone

    from ..workspace.deletion_requests import ForgetError

    if text is None:
        return now
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00")) if "T" in text else date.fromisoformat(text)
    except ValueError:
        raise ForgetError(f"--received-at {text!r} is not an ISO date (2026-11-30) or date-time with a timezone "
                          "(2026-11-30T09:15+01:00)") from None
    if isinstance(moment, datetime) and moment.tzinfo is None:
        raise ForgetError(f"--received-at {text!r} has no timezone; add one, e.g. {text}Z for UTC")
    as_utc = moment.astimezone(timezone.utc) if isinstance(moment, datetime) else \
        datetime.combine(moment, datetime.min.time(), tzinfo=timezone.utc)
    if as_utc > now:
        raise ForgetError(f"--received-at {text!r} is in the future")
    return moment


@app.command()
def forget(
    record_ids: Annotated[list[str], typer.Argument(help="Record ids to delete.")],
    request_id: Annotated[Optional[str], typer.Option(
        help="Request id (default: a timestamp and a random suffix, so two requests never collide).")] = None,
    received_at: Annotated[Optional[str], typer.Option(
        help="When the request was received (ISO date or date-time with timezone; default: now). The legal "
             "deadlines count from it.")] = None,
    retrain: Annotated[bool, typer.Option(help="Retrain affected shards without the records (needs registered data).")] = False,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Serve a deletion request: remove every component holding the records, recompose, certify.

    The records are tombstoned (never trained again in this workspace). Exit code 3: some id is in
    no component -- the request is completed, but check the id (a typo, or no data held on it).
    """
    from datetime import timezone

    from privacy_accounting.errors import BudgetExceededError

    from ..errors import DPTangentError
    from ..workspace.certificates import certificate_paths_text
    from ..workspace.data_sources import shard_records_for
    from ..workspace.deletion_requests import DeletionRequest, ForgetError, OtherRecordIds
    from ..workspace.forget import forget as serve

    ws = open_workspace(workspace)  # even with no component: the request is registered and the ids tombstoned
    now = datetime.now(timezone.utc)
    # an empty --request-id is an id given (and refused as a name), not "make one": `--request-id "$REQ"` with REQ
    # unset filed a new request on every retry (review 113)
    generated = now.strftime("request-%Y%m%dT%H%M%S-") + secrets.token_hex(2)
    request = DeletionRequest(request_id=generated if request_id is None else request_id,
                              record_ids=tuple(record_ids), received_at=_received_at(received_at, now))
    _same_clock(ws, request, stated=received_at is not None)
    again = shlex.join(["dp-tangent", "forget", *record_ids, "--request-id", request.request_id,
                        *(["--retrain"] if retrain else []), "-w", str(ws.root)])
    try:
        doing = "serving the deletion request" + (" (retraining affected shards)…" if retrain else "…")
        with busy(doing) as status:
            def progress(name: str, step: int, total: int | None) -> None:  # a replacement's steps, in the spinner
                status.update(f"serving the deletion request: retraining {name}, step {step}"
                              + (f" of {total}…" if total else "…"))

            result = serve(ws, request, retrain=retrain, shard_records=shard_records_for(ws) if retrain else None,
                           progress=progress if retrain else None)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: the request may be registered; its id was never shown
        typer.secho(f"forget interrupted: {_request_state(ws, request.request_id, again, interrupted=True)}", err=True)
        raise
    except (DPTangentError, BudgetExceededError, OSError) as err:  # a full disk, too: the hint says the state
        if isinstance(err, OtherRecordIds) and _completed(ws, request.request_id):
            raise ForgetError(str(err)) from err  # it says the request's state and that nothing was done
        if isinstance(err, OtherRecordIds):
            again = (f"`dp-tangent forget` of exactly the record ids it was received with, --request-id "
                     f"{request.request_id} (the workspace keeps only their commitments: take the ids from the request "
                     "as it was sent)")
        elif isinstance(err, BudgetExceededError) and retrain:
            again += " (or without --retrain: the components holding the records are dropped, not retrained)"
        cause = f"{err.strerror or err} ({type(err).__name__})" if isinstance(err, OSError) else str(err)
        raise ForgetError(f"{cause}; {_request_state(ws, request.request_id, again)}") from err
    typer.echo(result.message)
    if result.already_completed:  # the same answer as the first run: its certificate, and exit 3 if it said so
        typer.echo(certificate_paths_text(result.text_path, result.json_path))
        if retrain and result.found and not result.certificate.components_added:
            typer.secho(f"note: --retrain was not applied: request {request.request_id} was completed without "
                        "retraining (its components were removed, none replaced), and a completed request is not "
                        "served again; training the data anew, as a new model, leaves the deleted records out",
                        err=True, fg=typer.colors.YELLOW)
    else:
        # what `budget show` would now print for each retrained shard, once (two components of one shard, once)
        for source, shard in dict.fromkeys((a.data_source, a.shard) for a in result.certificate.components_added):
            typer.echo(f"  {source}/{shard}: {shard_state(ws.ledger, source, shard).text()}")
        paths = certificate_paths_text(result.text_path, result.json_path)
        typer.echo(f"{paths}\n{result.text_path.read_text()}")
        _released_copies(ws, request.request_id)
    missing = len(result.certificate.not_found)
    if missing:
        earlier = _deleted_before(ws, result.certificate)
        typer.secho(f"NOT FOUND: {missing} of {len(result.certificate.record_commitments)} record id(s) are in no "
                    f"component.{earlier} Check each id: if it is right, this workspace holds no trained data on it "
                    f"(it is tombstoned all the same, so it will never be trained here).{_typed_hint(ws)}"
                    f"{_id_form_hint(ws, record_ids, result.certificate.not_found)}", err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(NOT_FOUND_EXIT)


def _completed(ws, request_id: str) -> bool:  # noqa: ANN001
    from ..workspace.certificates import read_certificate

    cert = read_certificate(ws, request_id)
    return cert is not None and cert.status == "completed"


def _same_clock(ws, request, *, stated: bool) -> None:  # noqa: ANN001
    """A request asked again keeps the clock it was received with: a different ``--received-at`` is refused, not
    passed over (the deadlines count from the first; an operator correcting a date would believe it changed)."""
    from ..workspace.certificates import read_certificate
    from ..workspace.deletion_requests import ForgetError

    cert = read_certificate(ws, request.request_id) if stated else None
    if cert is not None and datetime.fromisoformat(cert.received_at) != request.received_at:
        raise ForgetError(f"request {request.request_id} was received at {cert.received_at}, not "
                          f"{request.received_at.isoformat()}; a request's clock is fixed when it is received (leave "
                          "--received-at out to run it again)")


def _released_copies(ws, request_id: str) -> None:  # noqa: ANN001
    """Name the releases that carried a component this request removed: the certificate's scope is the workspace,
    and those copies stay where they were sent (the report's Releases section lists them too)."""
    from ..workspace.report_context import releases_touched_by

    for r in releases_touched_by(ws, request_id):
        typer.secho(f"note: {r.model} was released to {r.destination} on {r.released_at[:10]} (release.json sha256 "
                    f"{r.statement_sha256}) with a component this request removed; that copy is not recalled: its "
                    "recipients hold the records' influence, bounded by the statement's guarantee", err=True,
                    fg=typer.colors.YELLOW)


def _deleted_before(ws, cert) -> str:  # noqa: ANN001
    """Which of a request's ids not found an earlier request deleted (their tombstones name it)."""
    from ..workspace.tombstones import Tombstones

    tombstones = Tombstones(ws.root).read()
    earlier = [tombstones[c].request_id for c in cert.not_found
               if c in tombstones and tombstones[c].request_id != cert.request_id]
    if not earlier:
        return ""
    return (f" {len(earlier)} of them were named by earlier request(s) {', '.join(sorted(set(earlier)))} and are "
            "tombstoned since (their certificates say what was found and deleted then).")


def _id_form_hint(ws, record_ids: list[str], not_found: list[str]) -> str:  # noqa: ANN001
    """A hint for ids not found: the spelling a registered data source holds one under (Unicode normal form, zeros,
    spaces, a path's form), else that one looks like another form of an id (a path with ``./``, a backslash or from
    the root, or spaces around it): ids are matched exactly, as the data holds them."""
    from ..components.manifest import commit

    from ..workspace.data_sources import held_spelling

    key, not_found = ws.manifest_key(), set(not_found)  # commitments
    missed = [r for r in record_ids if commit(r, key) in not_found]
    found = held_spelling(ws, missed)  # one held under another spelling: say which, so a request can name it
    if found is not None and found[1] is not None:
        return (f" {found[0]!r} is held as {found[1]!r} (data source {found[2]!r}): ids are matched exactly, so send "
                "the request again with a new --request-id and the id in that form.")
    if found is not None:
        return (f" {found[0]!r} is held under another spelling of it in data source {found[2]!r} (with zeros, a "
                "decimal part or an exponent): ids are matched exactly, so look it up there and send the request "
                "again with a new --request-id and the id as written there.")
    odd = [r for r in missed if r != r.strip() or r.startswith(("./", "/", ".\\")) or "\\" in r]
    if not odd:
        return ""
    return (f" {', '.join(repr(r) for r in odd[:3])} look(s) like another form of an id: ids are matched exactly as "
            "the data holds them (an image's is its path under the folder's root with forward slashes, e.g. "
            "cat/002.png; a table's as written in its id column, without spaces around it); send the request again "
            "with a new --request-id and the id in that form.")


def _typed_hint(ws) -> str:  # noqa: ANN001
    """A warning for sources that hold their ids typed (registered before CSV ids were read as written)."""
    from ..workspace.data_sources import typed_id_sources

    typed = typed_id_sources(ws)
    if not typed:
        return ""
    return (f" Data source(s) {', '.join(typed)} hold their record ids as pyarrow typed them (registered before "
            "2026-12-02): an id written 00017 in the file is held as 17; name the records in that form.")


def _request_state(ws, request_id: str, again: str, interrupted: bool = False) -> str:  # noqa: ANN001
    """Where the request stands after a failed (or ``interrupted``) run, as the audit log says (its registered
    clock, not this run's)."""
    from ..workspace.request_register import list_requests

    try:
        status = next((r for r in list_requests(ws) if r.request_id == request_id), None)
    except Exception:  # noqa: BLE001 -- the log could not be read: say what is certain
        return f"if request {request_id} was registered it stays open; check with `dp-tangent requests list`"
    if status is None:
        return f"request {request_id} was not registered (nothing was done)"
    if status.status == "completed":
        if interrupted:
            return f"request {request_id} was completed; its certificate is in {ws.root / 'certificates'}"
        return f"request {request_id} was completed before; nothing was changed"
    if status.status == "unsealed":
        return f"request {request_id} is deleted but its certificate is not sealed: fix the cause and seal it with: " \
               f"{again}"
    return (f"request {request_id} stays OPEN (its clock runs from {status.received_at.isoformat()}): fix the cause "
            f"and finish it with: {again}")

"""The register of deletion requests: receiving one starts its clock; listing shows what is open or overdue."""

from __future__ import annotations

import getpass
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING

from .certificates import DeletionCertificate, certificate_writes, read_certificate
from .commit import Change, apply
from .deletion_requests import REGIMES, DeletionRequest, ForgetError, deadlines, resolve_now

if TYPE_CHECKING:
    from .audit_log import AuditEntry
    from .store import Workspace


def receive(ws: Workspace, request: DeletionRequest, *, operator: str | None = None,
            now: datetime | None = None, tombstone_now: bool = True) -> DeletionCertificate:
    """Register a request on receipt (starts the clock): an open certificate, logged; and its records tombstoned,
    so that no run trains them while it is open (another request's retraining included). ``tombstone_now``: False
    for a caller that tombstones them next itself (:func:`~dp_tangent.workspace.forget.forget`; see
    :mod:`.tombstoning`)."""
    operator = operator or getpass.getuser()
    with ws.lock():
        if read_certificate(ws, request.request_id) is not None:
            raise ForgetError(f"request {request.request_id!r} was already received")
        if any(e.operation == "deletion_request" and e.parameters.get("request_id") == request.request_id
               for e in ws.audit.entries()):  # its files gone: receiving it again would restart its clock
            raise ForgetError(f"request {request.request_id!r} was already received (the audit log holds it) but its "
                              "certificate files are missing: restore them from a backup")
        due = deadlines(request.received_at, request.regimes)
        cert = DeletionCertificate(
            request_id=request.request_id, status="open", outcome="pending",
            received_at=request.received_at.isoformat(), regimes={r: REGIMES[r] for r in request.regimes},
            deadlines={r: d.isoformat() for r, d in due.items()}, due_by=min(due.values()).isoformat(),
            operator=operator, key_id=ws.key_id, record_commitments=request.commitments(ws.manifest_key()))
        apply(ws, Change("deletion_request", operator=operator, writes=certificate_writes(ws, cert), parameters={
            "request_id": request.request_id, "record_commitments": cert.record_commitments,
            "received_at": cert.received_at, "deadlines": cert.deadlines, "logged_at": resolve_now(now).isoformat()}))
        if tombstone_now:
            from .tombstoning import tombstone  # here: listing requests imports no torch

            tombstone(ws, request, operator=operator, now=now)
        return cert


@dataclass(frozen=True)
class RequestStatus:
    request_id: str
    status: str
    received_at: datetime
    due_by: date
    completed_at: datetime | None
    overdue: bool
    days_left: int


def list_requests(ws: Workspace, now: datetime | None = None,
                  entries: Sequence[AuditEntry] | None = None) -> list[RequestStatus]:
    """Every request the workspace received, in the order received, with its clock: ``overdue`` = still open after
    ``due_by``.

    ``status``: open, completed, or unsealed (deleted, but the run stopped before the certificate got the log's
    checkpoint, so it cannot be checked yet: running the same ``forget`` again seals it).
    Read from the audit log (``deletion_request`` entries; a ``deletion`` entry completes one), not from the
    certificate files: a file edited or removed behind the tool's back cannot hide an open or overdue request from
    a scheduled check (``audit verify`` reports the file). ``entries``: the log's, read already (default: read
    here, the whole chain holding)."""
    today = resolve_now(now).date()
    received: dict[str, dict] = {}
    completed: dict[str, str] = {}
    sealed: set[str] = set()
    for entry in ws.audit.entries() if entries is None else entries:
        request_id = entry.parameters.get("request_id")
        if entry.operation == "deletion_request":
            received.setdefault(request_id, entry.parameters)  # the first receipt starts the clock
        elif entry.operation == "deletion":
            completed[request_id] = entry.parameters.get("completed_at") or entry.time
        elif entry.operation == "certificate_sealed":
            sealed.add(request_id)
    out = []
    for request_id in sorted(received):
        logged = received[request_id]
        due = min(date.fromisoformat(d) for d in logged["deadlines"].values())
        done = completed.get(request_id)
        # done but not sealed: the run stopped before its certificate got the log's checkpoint (rerun to seal it)
        status = "open" if done is None else "completed" if request_id in sealed else "unsealed"
        out.append(RequestStatus(request_id, status, datetime.fromisoformat(logged["received_at"]), due,
                                 None if done is None else datetime.fromisoformat(done),
                                 status == "open" and today > due, (due - today).days))
    return sorted(out, key=lambda r: (r.received_at, r.request_id))  # in the order received, as a register is read


def open_request_records(ws: Workspace, statuses: list[RequestStatus] | None = None,
                         exclude: str | None = None) -> dict[str, set[str]]:
    """The records the open requests name: commitment -> their request ids (from their certificates), but
    ``exclude``'s; ``statuses``: :func:`list_requests` already read."""
    named: dict[str, set[str]] = {}
    for status in list_requests(ws) if statuses is None else statuses:
        if status.status == "open" and status.request_id != exclude:
            cert = read_certificate(ws, status.request_id)
            for c in cert.record_commitments if cert is not None else ():
                named.setdefault(c, set()).add(status.request_id)
    return named


def open_request_ids(ws: Workspace) -> set[str]:
    """The ids of the open requests."""
    return {s.request_id for s in list_requests(ws) if s.status == "open"}


def held_records(named: Mapping[str, set[str]],
                 manifests: Mapping[str, Iterable[str]]) -> dict[str, dict[str, list[str]]]:
    """Which components hold the records requests name: request id -> commitment -> the components of ``manifests``
    (name -> its record commitments) holding it; ``named``: :func:`open_request_records`."""
    held: dict[str, dict[str, list[str]]] = {}
    for name, commitments in manifests.items():
        for c in set(commitments) & named.keys():
            for request_id in sorted(named[c]):
                held.setdefault(request_id, {}).setdefault(c, []).append(name)
    return held


def open_requests(ws: Workspace, now: datetime | None = None) -> list[RequestStatus]:
    return [r for r in list_requests(ws, now) if r.status == "open"]


def overdue_requests(ws: Workspace, now: datetime | None = None) -> list[RequestStatus]:
    return [r for r in open_requests(ws, now) if r.overdue]

"""What a workspace adds to its ledger's privacy report, gathered as plain data (read-only).

:func:`report_sections` returns the :class:`~privacy_accounting.report_models.WorkspaceSections`
that ``privacy_accounting.build_report(ledger, workspace=...)`` shows as given:

* data: each shard's record count (the latest completed run's, from the audit log), whether its
  data owner declared it public, and how the source is re-read for retraining;
* deletions: every request with its receipt time, legal deadlines, status, overdue flag and
  certificate (linked relative to the report's folder when known);
* audit: the log verified now (chain, artifacts, ledger state), its head and Merkle root, and the
  latest checkpoint -- one kept outside the workspace if given, else the last one sealed into a
  deletion certificate -- with whether the log still extends it.

Record counts tell shard sizes: they belong in the workspace's own report, never in a release.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from privacy_accounting.report_models import (
    AuditLogResult,
    PrivacyReport,
    ReleaseEntry,
    DataSourceDetails,
    DeletionEntry,
    LogCheckpoint,
    ShardRecords,
    WorkspaceSections,
)

from ..errors import DPTangentError
from . import data_sources
from .audit_errors import AuditLogError
from .audit_log import AuditEntry
from .certificates import read_certificate
from .checkpoint import Checkpoint, extends, origin_of, read_kept_checkpoint
from .deletion_requests import resolve_now
from .request_register import RequestStatus, held_records, list_requests, open_request_records

if TYPE_CHECKING:
    from .store import Workspace

TRAINING_OPERATIONS = ("training", "retraining")
MAX_PROBLEMS = 100


@dataclass(frozen=True)
class KeptCheckpoint:
    """A checkpoint kept outside the workspace, where it was read from, and whether its signature was checked."""

    checkpoint: Checkpoint
    source: str
    signature: Literal["verified", "not checked"]


def load_checkpoint(ws: Workspace, path: str | os.PathLike[str], verifier_key: str | None = None) -> KeptCheckpoint:
    """Read a signed checkpoint of this workspace's log (from ``dp-tangent audit checkpoint``); with
    ``verifier_key`` its signature must verify. Anything else is a one-line :class:`CheckpointError`."""
    kept = read_kept_checkpoint(path, origin_of(ws.info.manifest_key_id), verifier_key)
    return KeptCheckpoint(kept, f"kept outside the workspace in {Path(path).absolute()}",
                          "verified" if verifier_key is not None else "not checked")


def report_sections(ws: Workspace, *, now: datetime | None = None, report_dir: str | os.PathLike[str] | None = None,
                    checkpoint: KeptCheckpoint | None = None) -> WorkspaceSections:
    """The workspace's sections of its privacy report, as of ``now`` (default: the current time).

    ``report_dir``: the folder the report will be written to (certificate links are relative to
    it); None links by absolute ``file:`` URI. ``checkpoint``: one kept outside the workspace
    (:func:`load_checkpoint`); without it, the latest sealed into a deletion certificate.
    """
    moment = resolve_now(now)
    try:
        entries = ws.audit.entries()
        statuses = list_requests(ws, moment, entries)
    except AuditLogError:
        entries = []  # a broken chain: no count is taken from it, and the audit section says why
        # but every request it received before its damage is listed: damage must not hide an open or overdue one
        statuses = list_requests(ws, moment, ws.audit.entries_before_damage()[0])
    holders = _open_request_holders(ws, statuses)
    return WorkspaceSections(
        workspace=str(ws.root),
        data=_data(ws, entries),
        deletions=_deletions(ws, statuses, report_dir, holders),
        audit=_audit(ws, entries, moment, checkpoint),
        releases=_releases(entries, holders),
    )


def releases_touched_by(ws: Workspace, request_id: str) -> list[ReleaseEntry]:
    """The releases whose released components deletion request ``request_id`` removed: copies it cannot recall,
    whose recipients the operator may owe notice."""
    return [r for r in _releases(ws.audit.entries()) if request_id in r.later_deletions]


def _releases(entries: Sequence[AuditEntry], holders: dict[str, set[str]] | None = None) -> list[ReleaseEntry]:
    """Every release the log recorded, and the deletions completed after it that removed one of the components
    it released (read from the log, as a request's certificate names what it removed)."""
    removals = [(e.seq, str(e.parameters.get("request_id")), set(e.parameters.get("components_removed") or []))
                for e in entries if e.operation == "deletion"]
    # a deletion also removed the records of the other open requests its components held: theirs too
    removals += [(e.seq, str(other), {n for names in (held or {}).values() for n in names})
                 for e in entries if e.operation == "deletion"
                 for other, held in (e.parameters.get("served_open_requests") or {}).items()]
    out = []
    for e in entries:
        if e.operation != "release":
            continue
        p = e.parameters
        released = set(p.get("components") or [])
        guarantee = p.get("guarantee") if isinstance(p.get("guarantee"), dict) else {}
        epsilon = guarantee.get("epsilon")
        bundle = p.get("bundle") if isinstance(p.get("bundle"), dict) else {}
        out.append(ReleaseEntry(
            model=str(p.get("model")), released_at=e.time, operator=e.operator, destination=str(p.get("destination")),
            statement_sha256=bundle.get("release.json"),
            epsilon=float("inf") if epsilon == "inf" else epsilon if isinstance(epsilon, (int, float)) else None,
            delta=guarantee.get("delta") if isinstance(guarantee.get("delta"), (int, float)) else None,
            later_deletions=sorted({request for seq, request, removed in removals
                                    if seq > e.seq and removed & released}),
            pending_deletions=sorted(r for r, names in (holders or {}).items() if names & released)))
    return out



def privacy_report(ws: Workspace, *, title: str = "Privacy report", report_dir: str | os.PathLike[str] | None = None,
                   checkpoint: KeptCheckpoint | None = None, curves: bool = True) -> PrivacyReport:
    """The workspace's privacy report: the ledger's (``privacy_accounting.build_report``) with the workspace's
    sections (:func:`report_sections`) and its runs planned from their shard's own count marked as such.
    ``curves=False`` leaves out each shard's epsilon-against-steps curve (a dozen figures per shard), which only the
    HTML report draws and the JSON report holds."""
    from privacy_accounting import build_report

    from ..components.component import size_public

    return build_report(ws.ledger, title=title, size_public=size_public, curve_points=CURVE_POINTS if curves else 0,
                        workspace=report_sections(ws, report_dir=report_dir, checkpoint=checkpoint))


#: About how many points of each shard's epsilon-against-steps curve a report computes.
CURVE_POINTS = 12


def _data(ws: Workspace, entries: Sequence[AuditEntry]) -> list[DataSourceDetails]:
    latest: dict[tuple[str, str], AuditEntry] = {}
    for entry in entries:
        p = entry.parameters
        if entry.operation in TRAINING_OPERATIONS and p.get("status") == "completed" and isinstance(
                p.get("records"), int):
            latest[(str(p.get("data_source")), str(p.get("shard")))] = entry
    out, public = [], data_sources.declared_public(ws)
    for source in ws.ledger.data_sources():
        loader = _loader(ws, source.name)
        shards = []
        for _, shard in ws.ledger.shards(source.name):
            entry = latest.get((source.name, shard))
            shards.append(ShardRecords(
                data_source=source.name, shard=shard,
                records=None if entry is None else entry.parameters["records"],
                counted_from="" if entry is None else
                f"{entry.operation} of {entry.parameters.get('component')} at {entry.time} (log entry {entry.seq})",
                public=(source.name, shard) in public))
        out.append(DataSourceDetails(data_source=source.name, loader=_describe(loader), shards=shards))
    return out


def _loader(ws: Workspace, name: str) -> object | None:
    """How the workspace re-reads ``name`` (None if it does not, or its registry cannot be read: the
    audit section reports a damaged registry, and no count depends on it)."""
    try:
        return data_sources.source_of(ws, name)
    except DPTangentError:
        return None


def _describe(loader: object | None) -> str:
    if loader is None:
        return ""
    describe = getattr(loader, "describe", None)
    return str(describe()) if callable(describe) else type(loader).__name__


def _href(path: Path, report_dir: str | os.PathLike[str] | None) -> str:
    if report_dir is None:
        return path.as_uri()
    return Path(os.path.relpath(path, Path(report_dir).absolute())).as_posix()


def _open_request_holders(ws: Workspace, statuses: list[RequestStatus]) -> dict[str, set[str]]:
    """Each open deletion request -> the current components whose record manifests hold one of its records (what
    it has yet to remove). Read from the components' manifests and the requests' certificates."""
    from ..components.component import read_metadata

    wanted = open_request_records(ws, statuses)
    holders: dict[str, set[str]] = {s.request_id: set() for s in statuses if s.status == "open"}
    if not wanted:
        return holders
    manifests = {}
    for name in ws.list_components():
        try:
            manifests[name] = read_metadata(ws.component_path(name)).manifest.commitments
        except (OSError, ValueError, DPTangentError):  # a file moved away or broken: audit verification says so
            continue
    for request_id, by_record in held_records(wanted, manifests).items():
        holders[request_id] = {name for names in by_record.values() for name in names}
    return holders


def _deletions(ws: Workspace, statuses: list[RequestStatus], report_dir: str | os.PathLike[str] | None,
               holders: dict[str, set[str]]) -> list[DeletionEntry]:
    models = {}
    for m in ws.list_models() if any(holders.values()) else ():
        try:
            models[m] = set(ws.model_record(m).component_names)
        except (OSError, ValueError, DPTangentError):  # a broken record: the audit section says so; the report stands
            continue
    out = []
    for status in statuses:
        cert = read_certificate(ws, status.request_id)
        if cert is None:  # removed while we read: audit verification reports it
            continue
        _, text_path = ws.certificate_paths(cert.request_id)
        out.append(DeletionEntry(
            request_id=cert.request_id, received_at=cert.received_at, regimes=dict(cert.regimes),
            deadlines=dict(cert.deadlines), due_by=cert.due_by,
            status="unsealed" if status.status == "unsealed" else cert.status, outcome=cert.outcome,
            completed_at=cert.completed_at, on_time=cert.on_time, overdue=status.overdue,
            days_left=status.days_left if cert.status == "open" else None, records=len(cert.record_commitments),
            certificate=str(text_path), certificate_href=_href(text_path, report_dir),
            held_by_models=sorted(m for m, names in models.items() if names & holders.get(cert.request_id, set()))))
    return out


def _audit(ws: Workspace, entries: Sequence[AuditEntry], now: datetime,
           kept: KeptCheckpoint | None) -> AuditLogResult:
    result = ws.audit.verify()
    problems = [str(p) for p in result.problems]  # in order of cause
    if len(problems) > MAX_PROBLEMS:
        problems = problems[:MAX_PROBLEMS] + [f"... and {len(problems) - MAX_PROBLEMS} more"]
    point = _checkpoint(ws, entries, kept)
    if point is not None and not point.extends:  # a log that does not extend its checkpoint was rewritten or rolled back
        problems.insert(0, f"the log does not extend the checkpoint {point.source} ({point.problem})")
    return AuditLogResult(
        log=str(result.path), verified=result.ok and (point is None or point.extends), checked_at=now.isoformat(),
        entries=result.entries, head=result.head, merkle_root=result.merkle_root,
        artifacts_checked=result.artifacts_checked, missing_artifacts=list(result.missing_artifacts),
        problems=problems, checkpoint=point)


def _checkpoint(ws: Workspace, entries: Sequence[AuditEntry], kept: KeptCheckpoint | None) -> LogCheckpoint | None:
    if kept is not None:
        point, source, signature = kept.checkpoint, kept.source, kept.signature
    else:
        sealed = [e for e in entries if e.operation == "certificate_sealed"
                  and isinstance(e.parameters.get("checkpoint"), dict)]
        if not sealed:
            return None
        last = sealed[-1]
        recorded = last.parameters["checkpoint"]
        point = Checkpoint(origin_of(ws.info.manifest_key_id), int(recorded["size"]), str(recorded["root"]))
        source = (f"sealed into the certificate of deletion request {last.parameters.get('request_id')} "
                  f"(log entry {last.seq})")
        signature = "not signed"
    why = extends([e.hash for e in entries], point) if entries else "the log could not be read"
    return LogCheckpoint(origin=point.origin, size=point.size, root=point.root, source=source, extends=why is None,
                         problem=why, signature=signature)

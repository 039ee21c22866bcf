"""Deletion certificates (``certificates/REQUEST.json`` and ``.txt``): what a request asked and what was done.

The certificate records the request, the commitments, components removed and added, every
model's digests before and after, and a check, made after the changes, that no remaining manifest
holds any of the commitments.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from privacy_accounting.figures import fmt_eps, fmt_set

from ..components.manifest import SCHEME
from ..io import atomic_write_bytes, sha256_file
from .audit_log import written_digests
from .commit import FileWrite
from .deletion_requests import ForgetError
from .lock import workspace_lock
from .names import WorkspaceError

if TYPE_CHECKING:
    from .store import Workspace

FORMAT = "dp-tangent-deletion/1"
CAVEATS = (
    "Scope: the components and composed models of this workspace. Copies released before deletion are not "
    "recalled; what they reveal about the record is bounded only by the differential-privacy guarantee of the "
    "components they contain (no bound for non-private components).",
    "The ledger keeps the privacy spend of removed components (budget once spent stays spent).",
    "Record ids are stored only as HMAC-SHA256 commitments under the workspace key.",
    "Deadlines exclude the extensions both regimes allow with notice to the requester.",
)

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ComponentRef(_Strict):
    name: str
    sha256: str
    data_source: str
    shard: str
    records: int


class AddedComponent(ComponentRef):
    replaces: str
    ledger_reservation: str
    epsilon: float | None
    delta: float | None
    seed: int | None  # None: a secure private run (fresh OS key, no seed)
    # A private run planned from its shard's own count: its epsilon tells the shard's size, so the requester's copy
    # leaves it out (review 74); the JSON, the report and `budget show` have it, with that caveat.
    size_public: bool = False


class ModelState(_Strict):
    record_sha256: str
    deltas_file_sha256: str
    deltas_sha256: str
    components: list[str]


class ModelChange(_Strict):
    name: str
    action: Literal["unchanged", "recomposed", "withdrawn"]
    before: ModelState
    after: ModelState | None


class Verification(_Strict):
    verified: bool
    checked_at: str
    components_checked: int
    commitments_checked: int
    statement: str


class LogCheckpoint(_Strict):
    """The audit log right after the deletion was logged: its first ``size`` entries have this RFC 9162
    Merkle ``root``. ``dp-tangent certificate verify`` checks, at any later time, that the log still
    extends it."""

    origin: str
    size: int
    root: str


class DeletionCertificate(_Strict):
    format: Literal["dp-tangent-deletion/1"] = FORMAT
    request_id: str
    status: Literal["open", "completed"]
    outcome: Literal["pending", "deleted", "not_found_in_any_component"]
    received_at: str
    completed_at: str | None = None
    regimes: dict[str, str]
    deadlines: dict[str, str]
    due_by: str
    on_time: bool | None = None
    operator: str
    commitment_scheme: str = SCHEME
    key_id: str
    record_commitments: list[str]
    found_in: dict[str, list[str]] = {}
    # source/shard of each component in found_in that another request's deletion removed while this one was open
    shards_removed_earlier: dict[str, str] = {}
    not_found: list[str] = []
    components_removed: list[ComponentRef] = []
    components_added: list[AddedComponent] = []
    models: list[ModelChange] = []
    verification: Verification | None = None
    checkpoint: LogCheckpoint | None = None
    caveats: list[str] = list(CAVEATS)


@dataclass(frozen=True)
class DeletionResult:
    certificate: DeletionCertificate
    json_path: Path
    text_path: Path
    already_completed: bool = False  # the request was completed by an earlier run: nothing was done now

    @property
    def found(self) -> bool:
        return self.certificate.outcome == "deleted"

    @property
    def message(self) -> str:
        c = self.certificate
        if self.already_completed:
            return f"request {c.request_id} was already completed on {c.completed_at}; nothing was changed"
        if not self.found:
            return f"request {c.request_id}: record(s) not found in any component; nothing to delete"
        changed = sum(m.action != "unchanged" for m in c.models)
        extra = f"; {len(c.not_found)} record(s) not found in any component" if c.not_found else ""
        return (f"request {c.request_id}: removed {len(c.components_removed)} component(s), added "
                f"{len(c.components_added)}, rebuilt or withdrew {changed} model(s){extra}")


#: How a record of a request still open reads in the text: no component was searched for it yet.
PENDING_WHERE = "not searched yet (the request is open)"
#: What versions before 2026-12-02 wrote there instead, which read as "held nowhere" (kept to restore their files).
_PENDING_WHERE_BEFORE = "not found in any component"
#: How a replacement's own figure is named: one run's epsilon, not its records' (which compose every run that read
#: them; the report has those). Versions before 2026-12-03 wrote "epsilon" alone (kept to restore their files).
RUN_EPSILON = "its run's epsilon"
_RUN_EPSILON_BEFORE = "epsilon"


def day_only(stamp: str) -> str:
    """The UTC day of an ISO 8601 time the tool wrote (``2026-12-03T14:38:19.790409+00:00`` -> ``2026-12-03 (UTC)``).

    The requester's copy states days, not times: completed minus received is how long serving took, and a retrain
    takes longer the more records its shard holds, a size the DP guarantee protects (the ``.json`` keeps the
    times)."""
    return f"{stamp[:10]} (UTC)"


def _exact_time(stamp: str) -> str:
    """What versions before 2026-12-03 wrote for a time in the requester's copy (kept to restore their files)."""
    return stamp


def render_certificate(cert: DeletionCertificate, pending_where: str = PENDING_WHERE,
                       run_epsilon: str = RUN_EPSILON, when: Callable[[str], str] = day_only,
                       unchanged_models: bool = False, history: bool = False) -> str:
    """The certificate as plain text for the requester's file (``pending_where``: how a record of an open request
    reads, see :data:`PENDING_WHERE`; ``run_epsilon``: how a replacement's run figure is named; ``when``: how a
    time reads, see :func:`day_only`; ``unchanged_models``: list the models the deletion left unchanged too, as
    versions before 2026-12-03 did: their names and current digests are none of the requester's business;
    ``history``: state what versions before 2026-12-04 stated of the workspace's history, see
    :func:`_requester_shards`)."""
    on_time = "" if cert.on_time is None else f" (on time: {'yes' if cert.on_time else 'NO'})"
    lines = [f"DELETION CERTIFICATE -- request {cert.request_id}", "",
             f"Status:        {cert.status} ({cert.outcome.replace('_', ' ')})",
             f"Received:      {when(cert.received_at)}",
             f"Completed:     {when(cert.completed_at) if cert.completed_at else '-'}",
             f"Due by:        {cert.due_by}{on_time}"]
    lines += [f"  {regime}: {cert.deadlines[regime]} -- {text}" for regime, text in cert.regimes.items()]
    lines += ["", f"Records ({len(cert.record_commitments)}), as {cert.commitment_scheme} commitments "
                  f"under key {cert.key_id}:"]
    shard_of = _requester_shards(cert, history)
    for c in cert.record_commitments:
        where = ", ".join(sorted({shard_of(name) for name in cert.found_in.get(c, [])})) or (
            pending_where if cert.outcome == "pending" and c not in cert.not_found else "not found in any component")
        lines.append(f"  {c}  {where}")
    if history:
        lines += ["", "Components removed:"]
        # The text is the requester's copy: no record counts (they would tell shard sizes); the JSON has them.
        lines += [f"  {r.name} ({r.data_source}/{r.shard}) sha256 {r.sha256}" for r in cert.components_removed] \
            or ["  none"]
        lines += ["Components added (retrained without the records):"]
        lines += [f"  {a.name} replaces {a.replaces} ({_run_figure(a, run_epsilon)}, "
                  f"ledger {a.ledger_reservation}) sha256 {a.sha256}" for a in cert.components_added] or ["  none"]
    else:
        held = {name for names in cert.found_in.values() for name in names}
        nothing = ["  not yet (the request is open)"] if cert.status == "open" else ["  none"]
        lines += ["", "Removed: the components that held the records, trained on"]
        lines += [f"  {shard}" for shard in sorted({shard_of(r.name) for r in cert.components_removed
                                                     if r.name in held})] or nothing
        lines += ["Added (retrained without the records):"]
        lines += [f"  {a.data_source}/{a.shard} ({_run_figure(a, run_epsilon)}, ledger {a.ledger_reservation}) "
                  f"sha256 {a.sha256}" for a in sorted(cert.components_added, key=lambda a: (
                      a.data_source, a.shard, a.sha256))] or nothing
    models = [m for m in cert.models if unchanged_models or m.action != "unchanged"]
    lines += ["", "Models (sha256 of the composed deltas, before -> after):" if unchanged_models else
              "Models rebuilt or withdrawn (sha256 of the composed deltas, before -> after):" if history else
              "Models rebuilt or withdrawn (sha256 of the composed deltas after the deletion):"]
    for m in models:
        after = m.after.deltas_sha256 if m.after else "withdrawn"
        lines.append(f"  {m.name}: {m.action}; {m.before.deltas_sha256} -> {after}" if history else
                     f"  {m.name}: {m.action}" + (f"; {after}" if m.after else ""))
    if not models:
        lines.append("  not yet (the request is open)" if cert.status == "open" and not history else "  none")
    if cert.verification:
        statement = cert.verification.statement
        if not history:  # how many components remain changes when others' deletions withdraw one
            statement = statement.replace(f"none of the {cert.verification.components_checked} remaining components'",
                                          "none of the remaining components'")
        lines += ["", "Verification:", f"  {statement}"]
    if cert.checkpoint:
        size = f"{cert.checkpoint.size} entries, " if history else ""
        lines += ["", "Audit log checkpoint after the deletion (check it later with "
                      "`dp-tangent certificate verify`):",
                  f"  {cert.checkpoint.origin}, {size}Merkle root {cert.checkpoint.root}"]
    lines += ["", "Notes:"] + [f"  - {c}" for c in cert.caveats]
    return "\n".join(lines) + "\n"


def _requester_shards(cert: DeletionCertificate, history: bool) -> Callable[[str], str]:
    """How the requester's copy names a component: by the shard it was trained on, ``source/shard``, with
    ``(removed while this request was open)`` for one another request's deletion removed (``history``: by name).

    Nothing in the copy depends on what the workspace did before the deletion: two certificates held by one
    person would otherwise tell what happened between them, and whether someone else's deletion found records
    (the digest of a component or model a deletion found and rebuilt changes; one that finds nothing changes
    nothing). So no component names (a replacement's ``.r2`` counts its shard's retrains), no count of the
    components removed per shard (another open request's unfinished replacement, which a deletion removes with
    the component it replaces, would add one), no digest of a removed component or of a model before the
    deletion (the earlier certificate may have stated the same digest after its own), no audit log entry count
    (every logged operation adds to it) and no number of components left. The checkpoint's Merkle root alone
    still pins the log: ``certificate verify`` finds the entry count whose root it is. ``history``: as versions
    before 2026-12-04 wrote it, with names, those digests and counts (the JSON keeps them all)."""
    if history:
        return lambda name: name
    shards = {r.name: f"{r.data_source}/{r.shard}" for r in cert.components_removed}
    shards.update({name: f"{where} (removed while this request was open)"
                   for name, where in cert.shards_removed_earlier.items() if name not in shards})
    return lambda name: shards.get(name, name)


def _run_figure(added: AddedComponent, run_epsilon: str) -> str:
    """A replacement's privacy as the requester's copy states it."""
    if added.epsilon is None:
        return "non-private"
    if added.size_public:
        return "private, planned from its shard's size, which its epsilon would tell: the workspace's report has it"
    return f"{run_epsilon} {fmt_eps(added.epsilon)}, delta {fmt_set(added.delta)}"


def certificate_writes(ws: Workspace, cert: DeletionCertificate) -> list[FileWrite]:
    """The certificate's two files (``.txt`` for the requester, ``.json``), for a change to write."""
    json_path, text_path = ws.certificate_paths(cert.request_id)
    return [FileWrite(ws.relative(text_path), render_certificate(cert).encode()),
            FileWrite(ws.relative(json_path), (cert.model_dump_json(indent=2) + "\n").encode())]


def certificate_paths_text(text_path: Path, json_path: Path) -> str:
    """Where a certificate was written, as commands print it: the ``.txt`` is the one to send; the ``.json`` holds
    record counts, which tell shard sizes, and stays in the workspace."""
    return (f"certificate for the requester: {text_path}\n"
            f"internal record (holds record counts, which tell shard sizes: do not send): {json_path}")


def read_certificate(ws: Workspace, request_id: str) -> DeletionCertificate | None:
    path, _ = ws.certificate_paths(request_id)
    if not path.is_file():
        return None
    try:
        return DeletionCertificate.model_validate_json(path.read_bytes())
    except (ValidationError, ValueError) as err:
        raise ForgetError(f"{path} is not a valid deletion certificate ({type(err).__name__})") from err


def restore_text(ws: Workspace, request_id: str) -> tuple[Path, bool]:
    """Rewrite a certificate's requester copy (``.txt``) from its ``.json``, when the bytes rendered are exactly
    those the audit log vouches for: the ``.json`` must be the logged one, and its rendering must have the
    ``.txt``'s logged sha256. The workspace is then the state its log vouches for, as after restoring the file
    from a backup, so nothing is logged; ``audit resolve`` closes a failure recorded meanwhile. Returns the path and
    whether it was rewritten (False: it held those bytes already)."""
    json_path, text_path = ws.certificate_paths(request_id)
    if json_path.is_symlink() or text_path.is_symlink():  # the tool writes files, never links: put there by hand
        raise WorkspaceError(f"{json_path.parent}: the certificate of {request_id!r} is a symbolic link; restore its "
                             "files from a backup")
    names = {ws.relative(json_path), ws.relative(text_path)}
    with workspace_lock(ws.root):
        logged = written_digests(ws.audit.entries(), lambda path: path in names)
        if logged.get(ws.relative(json_path)) is None:
            raise WorkspaceError(f"no certificate of request {request_id!r} in the audit log")
        if not json_path.is_file() or sha256_file(json_path) != logged[ws.relative(json_path)]:
            raise WorkspaceError(f"{json_path} is not the certificate the audit log vouches for; restore it from a "
                              "backup first")
        cert = read_certificate(ws, request_id)
        renderings = [render_certificate(cert, *version).encode()  # type: ignore[arg-type]
                      for version in itertools.product((PENDING_WHERE, _PENDING_WHERE_BEFORE),
                                                       (RUN_EPSILON, _RUN_EPSILON_BEFORE), (day_only, _exact_time),
                                                       (False, True), (False, True))]
        text = next((t for t in renderings if hashlib.sha256(t).hexdigest() == logged.get(ws.relative(text_path))),
                    None)
        if text is None:
            raise WorkspaceError(f"{text_path} as the log vouches for it is not this version's rendering of the "
                              "certificate; restore it from a backup")
        if text_path.is_file() and text_path.read_bytes() == text:
            return text_path, False
        atomic_write_bytes(text_path, text)
    return text_path, True

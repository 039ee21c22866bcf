"""Deletion requests: remove every component that saw a record and rebuild every model without it.

A request names record ids; they are turned at once into keyed commitments
HMAC-SHA256(workspace key, id) and only those are stored. A component saw a record iff its
manifest holds the record's commitment. Because a composed model's delta is a fixed function of
its components' deltas (``dp_tangent.compose``), removing a component and composing the others
gives exactly the model that would have been built had the component never existed; a model with
no component left is withdrawn. With ``retrain=True`` the affected shard is trained again from
theta0 on its remaining records (charged to the ledger as ``retraining_after_deletion``, with a
fresh noise seed) and the new component takes the old one's place and weight.

The certificate (``certificates/REQUEST.json`` and ``.txt``) records the request, the
commitments, components removed and added, every model's digests before and after, and a check,
made after the changes, that no remaining manifest holds any of the commitments. The legal clock:
GDPR Art. 12(3) (one month from receipt) and the CCPA regulations (45 calendar days from the day
of receipt), without extensions, in UTC; this is bookkeeping, not legal advice.
"""

from __future__ import annotations

import calendar
import getpass
import math
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from .audit_log import Artifact
from .backbones import BackboneSpec
from .component import ComponentMetadata, read_metadata
from .compose import compose, tensor_digest
from .data import RecordSet
from .errors import DPTangentError
from .io import atomic_write_text, fsync_dir, sha256_file
from .losses import ConvexLoss
from .manifest import SCHEME, commit
from .training import PrivacySpec, TrainConfig
from .workspace import ModelRecord, Workspace, check_name

FORMAT = "dp-tangent-deletion/1"
REGIMES = {
    "gdpr": "GDPR Art. 12(3): without undue delay and at the latest one month after receipt",
    "ccpa": "CCPA regulations (11 CCR 7021(b)): within 45 calendar days, counted from the day of receipt",
}
CAVEATS = (
    "Scope: the components and composed models of this workspace. Copies released before deletion are not "
    "recalled; what they reveal about the record is bounded only by the differential-privacy guarantee of the "
    "components they contain (no bound for non-private components).",
    "The ledger keeps the privacy spend of removed components (budget once spent stays spent).",
    "Record ids are stored only as HMAC-SHA256 commitments under the workspace key.",
    "Deadlines exclude the extensions both regimes allow with notice to the requester.",
)
ShardRecords = Mapping[str, RecordSet] | Callable[[ComponentMetadata], RecordSet]


class ForgetError(DPTangentError):
    """A deletion request that cannot be carried out as asked."""


# -- requests and the legal clock ---------------------------------------------------------------

def _utc(moment: datetime | date) -> datetime:
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            raise ForgetError("times must be timezone-aware (e.g. datetime.now(timezone.utc))")
        return moment.astimezone(timezone.utc)
    return datetime.combine(moment, time(0), tzinfo=timezone.utc)


def add_months(day: date, months: int) -> date:
    """Same day number ``months`` later, or that month's last day if it has no such day
    (how EU Regulation 1182/71 ends a period expressed in months)."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def deadlines(received_at: datetime | date, regimes: Sequence[str] = ("gdpr", "ccpa")) -> dict[str, date]:
    """Last day (UTC) to complete a request: GDPR -- the same date one month later (or that month's
    last day); CCPA -- day 45 counting the day of receipt as day 1 (received + 44 days)."""
    day = _utc(received_at).date()
    out = {}
    for regime in regimes:
        if regime == "gdpr":
            out[regime] = add_months(day, 1)
        elif regime == "ccpa":
            out[regime] = day + timedelta(days=44)  # the receipt day counts as day 1 (the earlier reading)
        else:
            raise ForgetError(f"unknown regime {regime!r}; known: {', '.join(REGIMES)}")
    return out


@dataclass(frozen=True)
class DeletionRequest:
    """Record ids to forget (kept in memory only), a request id and when it was received."""

    request_id: str
    record_ids: tuple[str, ...]
    received_at: datetime | date
    regimes: tuple[str, ...] = ("gdpr", "ccpa")

    def __post_init__(self) -> None:
        check_name(self.request_id, "request id")
        if isinstance(self.record_ids, str) or not self.record_ids:
            raise ForgetError("a deletion request needs at least one record id (a list, not a string)")
        if not all(isinstance(r, str) and r for r in self.record_ids):
            raise ForgetError("record ids must be non-empty strings")
        if not self.regimes:
            raise ForgetError("name at least one regime for the deadline (gdpr, ccpa)")
        object.__setattr__(self, "record_ids", tuple(dict.fromkeys(self.record_ids)))
        object.__setattr__(self, "received_at", _utc(self.received_at))
        deadlines(self.received_at, self.regimes)

    def commitments(self, key: bytes) -> list[str]:
        return sorted({commit(r, key) for r in self.record_ids})


# -- the certificate (on disk) ---------------------------------------------------------------------

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
    seed: int


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
    not_found: list[str] = []
    components_removed: list[ComponentRef] = []
    components_added: list[AddedComponent] = []
    models: list[ModelChange] = []
    verification: Verification | None = None
    caveats: list[str] = list(CAVEATS)


@dataclass(frozen=True)
class DeletionResult:
    certificate: DeletionCertificate
    json_path: Path
    text_path: Path

    @property
    def found(self) -> bool:
        return self.certificate.outcome == "deleted"

    @property
    def message(self) -> str:
        c = self.certificate
        if not self.found:
            return f"request {c.request_id}: record(s) not found in any component; nothing to delete"
        changed = sum(m.action != "unchanged" for m in c.models)
        extra = f"; {len(c.not_found)} record(s) not found in any component" if c.not_found else ""
        return (f"request {c.request_id}: removed {len(c.components_removed)} component(s), added "
                f"{len(c.components_added)}, rebuilt or withdrew {changed} model(s){extra}")


def render_certificate(cert: DeletionCertificate) -> str:
    """The certificate as plain text for the requester's file."""
    on_time = "" if cert.on_time is None else f" (on time: {'yes' if cert.on_time else 'NO'})"
    lines = [f"DELETION CERTIFICATE -- request {cert.request_id}", "",
             f"Status:        {cert.status} ({cert.outcome.replace('_', ' ')})",
             f"Received:      {cert.received_at}", f"Completed:     {cert.completed_at or '-'}",
             f"Due by:        {cert.due_by}{on_time}"]
    lines += [f"  {regime}: {cert.deadlines[regime]} -- {text}" for regime, text in cert.regimes.items()]
    lines += ["", f"Records ({len(cert.record_commitments)}), as {cert.commitment_scheme} commitments "
                  f"under key {cert.key_id}:"]
    for c in cert.record_commitments:
        where = ", ".join(cert.found_in.get(c, [])) or "not found in any component"
        lines.append(f"  {c}  {where}")
    lines += ["", "Components removed:"]
    lines += [f"  {r.name} ({r.data_source}/{r.shard}, {r.records} records) sha256 {r.sha256}"
              for r in cert.components_removed] or ["  none"]
    lines += ["Components added (retrained without the records):"]
    lines += [f"  {a.name} replaces {a.replaces} ({a.records} records, "
              f"{'non-private' if a.epsilon is None else f'epsilon {a.epsilon:.3g}, delta {a.delta:.3g}'}, "
              f"ledger {a.ledger_reservation}) sha256 {a.sha256}" for a in cert.components_added] or ["  none"]
    lines += ["", "Models (sha256 of the composed deltas, before -> after):"]
    for m in cert.models:
        after = m.after.deltas_sha256 if m.after else "withdrawn"
        lines.append(f"  {m.name}: {m.action}; {m.before.deltas_sha256} -> {after}")
    if not cert.models:
        lines.append("  none")
    if cert.verification:
        lines += ["", "Verification:", f"  {cert.verification.statement}"]
    lines += ["", "Notes:"] + [f"  - {c}" for c in cert.caveats]
    return "\n".join(lines) + "\n"


def _write_certificate(ws: Workspace, cert: DeletionCertificate) -> tuple[Path, Path]:
    json_path, text_path = ws.certificate_paths(cert.request_id)
    atomic_write_text(text_path, render_certificate(cert))
    atomic_write_text(json_path, cert.model_dump_json(indent=2) + "\n")
    return json_path, text_path


def read_certificate(ws: Workspace, request_id: str) -> DeletionCertificate | None:
    path, _ = ws.certificate_paths(request_id)
    if not path.is_file():
        return None
    try:
        return DeletionCertificate.model_validate_json(path.read_bytes())
    except (ValidationError, ValueError) as err:
        raise ForgetError(f"{path} is not a valid deletion certificate ({type(err).__name__})") from err


def _now(now: datetime | None) -> datetime:
    return _utc(now) if now is not None else datetime.now(timezone.utc)


def receive(ws: Workspace, request: DeletionRequest, *, operator: str | None = None,
            now: datetime | None = None) -> DeletionCertificate:
    """Register a request on receipt (starts the clock): an open certificate, logged."""
    operator = operator or getpass.getuser()
    with ws.lock():
        if read_certificate(ws, request.request_id) is not None:
            raise ForgetError(f"request {request.request_id!r} was already received")
        due = deadlines(request.received_at, request.regimes)
        cert = DeletionCertificate(
            request_id=request.request_id, status="open", outcome="pending",
            received_at=request.received_at.isoformat(), regimes={r: REGIMES[r] for r in request.regimes},
            deadlines={r: d.isoformat() for r, d in due.items()}, due_by=min(due.values()).isoformat(),
            operator=operator, key_id=ws.key_id, record_commitments=request.commitments(ws.manifest_key()))
        paths = _write_certificate(ws, cert)
        ws.audit.append("deletion_request", operator=operator, outputs=[ws.artifact(p) for p in paths], parameters={
            "request_id": request.request_id, "record_commitments": cert.record_commitments,
            "received_at": cert.received_at, "deadlines": cert.deadlines, "logged_at": _now(now).isoformat()})
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


def list_requests(ws: Workspace, now: datetime | None = None) -> list[RequestStatus]:
    """Every request in the workspace with its clock: ``overdue`` = still open after ``due_by``."""
    today = _now(now).date()
    out = []
    for path in sorted(ws.certificates_dir.glob("*.json")):
        cert = read_certificate(ws, path.stem)
        if cert is None:  # removed meanwhile
            continue
        due = date.fromisoformat(cert.due_by)
        out.append(RequestStatus(cert.request_id, cert.status, datetime.fromisoformat(cert.received_at), due,
                                 datetime.fromisoformat(cert.completed_at) if cert.completed_at else None,
                                 cert.status == "open" and today > due, (due - today).days))
    return out


def open_requests(ws: Workspace, now: datetime | None = None) -> list[RequestStatus]:
    return [r for r in list_requests(ws, now) if r.status == "open"]


def overdue_requests(ws: Workspace, now: datetime | None = None) -> list[RequestStatus]:
    return [r for r in open_requests(ws, now) if r.overdue]


# -- carrying out a request ---------------------------------------------------------------------------

def _model_state(ws: Workspace, record: ModelRecord) -> ModelState:
    return ModelState(record_sha256=sha256_file(ws.model_path(record.name)),
                      deltas_file_sha256=record.deltas_file_sha256, deltas_sha256=record.deltas_sha256,
                      components=record.component_names)


def _replacement_name(ws: Workspace, old: str) -> str:
    stem = re.sub(r"\.r\d+$", "", old)
    k = 1
    while ws.component_name_used(f"{stem}.r{k}"):
        k += 1
    return f"{stem}.r{k}"


def _retrain_spec(meta: ComponentMetadata, privacy: PrivacySpec | None,
                  config: TrainConfig | None) -> tuple[PrivacySpec, TrainConfig]:
    """The original run's settings, with a fresh seed: reusing the noise seed would correlate the noise
    of the two runs, which the ledger's composition (independent mechanisms) does not allow for."""
    p, t = meta.privacy, meta.training
    if privacy is None:
        privacy = (PrivacySpec(noise_multiplier=p.noise_multiplier, max_grad_norm=p.max_grad_norm or 1.0, delta=p.delta)
                   if p.private else PrivacySpec(epsilon=math.inf))
    if config is None:
        config = TrainConfig(epochs=t.epochs, batch_size=t.batch_size, physical_batch_size=t.physical_batch_size,
                             lr=t.lr, momentum=t.momentum, grad_sample_mode=p.grad_sample_mode or "hooks",
                             seed=secrets.randbelow(2**31), loss=ConvexLoss(**meta.loss))
    return privacy, config


def _remaining_records(meta: ComponentMetadata, records: RecordSet, doomed: set[str], key: bytes) -> RecordSet:
    held = set(meta.manifest.commitments)
    commitments = [commit(r, key) for r in records.record_ids]
    foreign = sum(c not in held for c in commitments)
    if foreign:
        raise ForgetError(f"the records supplied for {meta.name!r} include {foreign} record(s) it was not trained on; "
                          f"pass the records of shard {meta.shard!r} only")
    return records.subset([i for i, c in enumerate(commitments) if c not in doomed])


def _plan_checks(ws: Workspace, affected: dict[str, ComponentMetadata], models: list[ModelRecord], retrain: bool,
                 shard_records: ShardRecords | None, merge_data: Mapping[str, torch.Tensor] | None) -> None:
    """Everything that could stop the request, checked before anything changes."""
    if retrain and shard_records is None:
        raise ForgetError("retrain=True needs shard_records: the records of each affected shard, or a function "
                          "returning them for a component's metadata")
    if retrain and isinstance(shard_records, Mapping):
        missing = sorted(set(affected) - set(shard_records))
        if missing:
            raise ForgetError(f"retrain=True but no records were supplied for component(s) {missing}")
    for record in models:
        if not any(p.name in affected for p in record.components):
            continue
        for part in record.components:
            if part.name in affected:
                continue
            path = ws.component_path(part.name)
            if not path.is_file() or sha256_file(path) != part.sha256:
                raise ForgetError(f"model {record.name!r}: component {part.name!r} is missing or differs from the "
                                  "file it was composed from; cannot rebuild the model exactly")
        if record.method == "regmean":
            for part in record.components:
                if part.name in affected and not retrain:
                    continue  # removed without a replacement: its merge data is not needed
                data = None if merge_data is None else merge_data.get(part.name)
                if data is None or tensor_digest(data) != part.merge_data_sha256:
                    raise ForgetError(f"model {record.name!r} was merged with regmean: pass "
                                      f"merge_data[{part.name!r}], the same public merge inputs it was composed with")


def _recompose(ws: Workspace, record: ModelRecord, affected: set[str], replacements: Mapping[str, str],
               merge_data: Mapping[str, torch.Tensor] | None) -> ModelRecord | None:
    names, weights, data = [], [], {}
    for part in record.components:
        name = replacements.get(part.name) if part.name in affected else part.name
        if name is None:
            continue
        names.append(name)
        weights.append(part.weight)
        if record.method == "regmean":
            data[name] = merge_data[part.name]  # type: ignore[index]  # checked in _plan_checks
    if not names:
        return None
    options = {}
    if record.method == "regmean":
        m = record.merge or {}
        options = {"merge_data": data, "merge_data_public": True, "ridge": m["ridge"], "cg_tol": m["cg_tol"],
                   "cg_max_iter": m["cg_max_iter"], "merge_dtype": getattr(torch, m["dtype"]),
                   "batch_size": m["batch_size"]}
    composition = compose([ws.load_component(n) for n in names], weights if record.weights_given else None,
                          record.method, **options)
    saved = ws.save_model(record.name, composition, replace=True)
    ws.ledger.register_model(record.name, names)
    return saved


def _verify(ws: Workspace, doomed: set[str], removed: set[str], now: datetime) -> Verification:
    """Re-read every remaining manifest and model record after the changes."""
    remaining = ws.list_components()
    for name in remaining:
        meta = read_metadata(ws.component_path(name))
        if meta.manifest.key_id != ws.key_id:
            raise ForgetError(f"component {name!r} was committed under another key; membership cannot be checked")
        if doomed & set(meta.manifest.commitments):
            raise ForgetError(f"verification failed: component {name!r} still holds a requested record")
    for model in ws.list_models():
        left = removed & set(ws.model_record(model).component_names)
        if left:
            raise ForgetError(f"verification failed: model {model!r} still includes {sorted(left)}")
    statement = (f"Checked after the changes: none of the {len(remaining)} remaining components' record manifests "
                 f"contains any of the {len(doomed)} requested record commitment(s), and no composed model "
                 "includes a removed component.")
    return Verification(verified=True, checked_at=now.isoformat(), components_checked=len(remaining),
                        commitments_checked=len(doomed), statement=statement)


def _retrain_all(ws: Workspace, affected: Mapping[str, ComponentMetadata], shard_records: ShardRecords,
                 doomed: set[str], privacy: PrivacySpec | None, config: TrainConfig | None,
                 operator: str) -> list[AddedComponent]:
    """Train a replacement for each affected component on its shard minus the requested records."""
    added = []
    key = ws.manifest_key()
    for name, meta in affected.items():
        records = shard_records[name] if isinstance(shard_records, Mapping) else shard_records(meta)
        remaining = _remaining_records(meta, records, doomed, key)
        if len(remaining) == 0:
            continue  # nothing left to learn from: removed without a replacement
        spec, cfg = _retrain_spec(meta, privacy, config)
        new = _replacement_name(ws, name)
        result = ws.train(BackboneSpec.from_dict(meta.base), meta.trainable, remaining, data_source=meta.data_source,
                          shard=meta.shard, name=new, privacy=spec, config=cfg, operator=operator,
                          purpose="retraining_after_deletion")
        if result.metadata.base_weights_sha256 != meta.base_weights_sha256:
            raise ForgetError(f"retraining {name!r} rebuilt a base model with other weights; {new!r} cannot replace it")
        p = result.metadata.privacy
        added.append(AddedComponent(name=new, sha256=result.sha256, data_source=meta.data_source, shard=meta.shard,
                                    records=len(remaining), replaces=name, ledger_reservation=result.reservation_id,
                                    epsilon=p.epsilon, delta=p.delta, seed=cfg.seed))
    return added


def _rebuild_models(ws: Workspace, models: Sequence[ModelRecord], affected: set[str], replacements: Mapping[str, str],
                    merge_data: Mapping[str, torch.Tensor] | None) -> list[ModelChange]:
    """Recompose every model that uses an affected component; withdraw those left with none."""
    changes = []
    for record in models:
        before = _model_state(ws, record)
        if not affected & set(record.component_names):
            changes.append(ModelChange(name=record.name, action="unchanged", before=before, after=before))
            continue
        saved = _recompose(ws, record, affected, replacements, merge_data)
        if saved is None:
            for path in (ws.model_path(record.name), ws.model_deltas_path(record.name)):
                path.unlink(missing_ok=True)
            changes.append(ModelChange(name=record.name, action="withdrawn", before=before, after=None))
        else:
            changes.append(ModelChange(name=record.name, action="recomposed", before=before,
                                       after=_model_state(ws, saved)))
    return changes


def _log_deletion(ws: Workspace, cert: DeletionCertificate, paths: Sequence[Path], operator: str) -> None:
    changed = [c for c in cert.models if c.action != "unchanged"]
    removed = [(r, ws.relative(ws.component_path(r.name))) for r in cert.components_removed]
    ws.audit.append(
        "deletion", operator=operator,
        inputs=[Artifact(r.name, r.sha256, rel) for r, rel in removed]
        + [Artifact(f"model:{c.name}", c.before.record_sha256, ws.relative(ws.model_path(c.name))) for c in changed],
        outputs=[Artifact(r.name, None, rel) for r, rel in removed]
        + [a for c in changed for a in ws.model_artifacts(c.name)] + [ws.artifact(p) for p in paths],
        parameters={"request_id": cert.request_id, "outcome": cert.outcome,
                    "record_commitments": cert.record_commitments, "not_found": cert.not_found,
                    "components_removed": [r.name for r in cert.components_removed],
                    "components_added": [a.name for a in cert.components_added],
                    "models": {c.name: c.action for c in cert.models}})


def forget(
    ws: Workspace,
    request: DeletionRequest,
    *,
    retrain: bool = False,
    shard_records: ShardRecords | None = None,
    privacy: PrivacySpec | None = None,
    config: TrainConfig | None = None,
    merge_data: Mapping[str, torch.Tensor] | None = None,
    operator: str | None = None,
    now: datetime | None = None,
) -> DeletionResult:
    """Carry out ``request`` (registering it first if needed) and write its certificate.

    ``retrain``: retrain each affected shard on ``shard_records`` (a mapping component name ->
    RecordSet, or a function of the component's metadata) minus the requested records, with the
    original run's settings and a fresh seed unless ``privacy``/``config`` are given.
    ``merge_data``: the public merge inputs of regmean models that must be rebuilt.
    Order: checks, retraining, models, removal of the old component files, verification,
    certificate, log entry. If a step fails the request stays open and can be run again.
    """
    operator = operator or getpass.getuser()
    with ws.lock():
        cert = read_certificate(ws, request.request_id) or receive(ws, request, operator=operator, now=now)
        doomed = set(request.commitments(ws.manifest_key()))
        if cert.status == "completed":
            raise ForgetError(f"request {request.request_id!r} was already completed on {cert.completed_at}")
        if set(cert.record_commitments) != doomed:
            raise ForgetError(f"request {request.request_id!r} was received with other record ids")
        metas = {n: read_metadata(ws.component_path(n)) for n in ws.list_components()}
        for name, meta in metas.items():
            if meta.manifest.key_id != ws.key_id:
                raise ForgetError(f"component {name!r} was committed under another key; membership cannot be checked")
        found_in = {c: sorted(n for n, m in metas.items() if c in set(m.manifest.commitments)) for c in sorted(doomed)}
        affected = {n: metas[n] for n in sorted({n for names in found_in.values() for n in names})}
        models = [ws.model_record(m) for m in ws.list_models()]
        _plan_checks(ws, affected, models, retrain, shard_records, merge_data)
        removed = [ComponentRef(name=n, sha256=sha256_file(ws.component_path(n)), data_source=m.data_source,
                                shard=m.shard, records=m.manifest.records) for n, m in affected.items()]
        added = (_retrain_all(ws, affected, shard_records, doomed, privacy, config, operator)  # type: ignore[arg-type]
                 if retrain else [])
        changes = _rebuild_models(ws, models, set(affected), {a.replaces: a.name for a in added}, merge_data)
        for name in affected:
            ws.component_path(name).unlink()
        fsync_dir(ws.components_dir)
        finished = _now(now)
        verification = _verify(ws, doomed, set(affected), finished)
        cert = DeletionCertificate.model_validate({
            **cert.model_dump(), "status": "completed",
            "outcome": "deleted" if affected else "not_found_in_any_component",
            "completed_at": finished.isoformat(), "on_time": finished.date() <= date.fromisoformat(cert.due_by),
            "found_in": {c: n for c, n in found_in.items() if n},
            "not_found": [c for c, n in found_in.items() if not n],
            "components_removed": [r.model_dump() for r in removed],
            "components_added": [a.model_dump() for a in added],
            "models": [c.model_dump() for c in changes], "verification": verification.model_dump()})
        paths = _write_certificate(ws, cert)
        _log_deletion(ws, cert, paths, operator)
        return DeletionResult(cert, *paths)


"""Deletion requests: remove every component that saw a record and rebuild every model without it.

A request names record ids; they are turned at once into keyed commitments
HMAC-SHA256(workspace key, id) and only those are stored. A component saw a record iff its
manifest holds the record's commitment. Because a composed model's delta is a fixed function of
its components' deltas (``dp_tangent.components.compose``), removing a component and composing the
others gives exactly the model that would have been built had the component never existed; a model
with no component left (or, a weighted mean, none with a weight above 0) is withdrawn. With ``retrain=True``
the affected shard is trained again from theta0 on its remaining records (charged to the ledger as
``retraining_after_deletion``, with fresh secret noise) and the new component takes the old one's place and
weight. Every requested record is tombstoned first: no later training in the workspace, this retraining
included, uses it, and the
same change removes its cached NTK Gram from every gram cache file (:mod:`.gram_cache`; the deletion
change removes any left, and the seal checks on disk that none is), so that nothing derived from it
survives while the retraining still reuses the other records' Grams. The certificate is sealed with
a checkpoint of the audit log after the deletion.

The request and its legal clock: :mod:`~dp_tangent.workspace.deletion_requests`; its register:
:mod:`~dp_tangent.workspace.request_register`; the certificate written at the end:
:mod:`~dp_tangent.workspace.certificates`.
"""

from __future__ import annotations

import dataclasses
import getpass
import math
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING

from ..components.component import ComponentMetadata, read_metadata, size_public
from ..components.manifest import commit
from ..io import sha256_file
from .audit_log import Artifact
from .certificate_check import check_certificate
from .certificates import (AddedComponent, ComponentRef, DeletionCertificate, DeletionResult, ModelChange, ModelState,
                           Verification, certificate_writes, read_certificate)
from .checkpoint import checkpoint_of, origin_of
from . import gram_cache
from .commit import Change, FileRemoval, FileWrite, apply
from .deletion_requests import DeletionRequest, ForgetError, OtherRecordIds, resolve_now
from .ledger_ops import RegisterModel
from .model_record import ModelRecord
from .replacements import Unfinished, unfinished_replacements
from .request_register import held_records, open_request_records, receive
from .tombstoning import tombstone
from .store import Workspace
from .tombstones import Tombstones

# Serving a request without retraining (the remaining components recomposed as numpy arrays, the gram cache
# rewritten, the certificate) imports no torch; what retrains, or merges with RegMean, imports it where it does.
if TYPE_CHECKING:
    import torch

    from ..data.records import RecordSet
    from ..training.config import PrivacySpec, TrainConfig
    from ..training.executors import TaskProgressFn
    from .train import ShardJob

ShardRecords = Mapping[str, "RecordSet"] | Callable[[ComponentMetadata], "RecordSet"]


# -- carrying out a request ---------------------------------------------------------------------------

def _model_state(ws: Workspace, record: ModelRecord) -> ModelState:
    return ModelState(record_sha256=sha256_file(ws.model_path(record.name)),
                      deltas_file_sha256=record.deltas_file_sha256, deltas_sha256=record.deltas_sha256,
                      components=record.component_names)


def _replacement_name(ws: Workspace, old: str, taken: set[str] = frozenset()) -> str:  # type: ignore[assignment]
    stem = re.sub(r"\.r\d+$", "", old)
    k = 1
    while ws.component_name_used(f"{stem}.r{k}") or f"{stem}.r{k}" in taken:
        k += 1
    return f"{stem}.r{k}"


def _retrain_spec(meta: ComponentMetadata, privacy: PrivacySpec | None,
                  config: TrainConfig | None) -> tuple[PrivacySpec, TrainConfig]:
    """The original run's settings and noise mode. A secure run gets fresh noise from a new OS key
    (no seed); a seeded or non-private one a fresh seed: reusing the seed would correlate the noise
    of the two runs, which the ledger's composition (independent mechanisms) does not allow for."""
    from ..training.config import PrivacySpec, TrainConfig
    from ..training.losses import ConvexLoss

    p, t = meta.privacy, meta.training
    seeded = t.noise == "seeded"  # None: written before noise modes; its DP-SGD is retrained securely
    if privacy is None:
        # the same N, and with it the same q, T and sigma: a replacement run is then distributed exactly as a run
        # on a shard that never held the record (planned from its own count, the count changes q and T)
        privacy = (PrivacySpec(noise_multiplier=p.noise_multiplier, max_grad_norm=p.max_grad_norm or 1.0, delta=p.delta,
                               planned_shard_size=p.planned_shard_size)
                   if p.private or seeded else PrivacySpec(epsilon=math.inf))
    if config is None:
        config = TrainConfig(epochs=t.epochs, batch_size=t.batch_size, physical_batch_size=t.physical_batch_size,
                             lr=t.lr, momentum=t.momentum, grad_sample_mode=p.grad_sample_mode or "hooks",
                             seed=secrets.randbelow(2**31), loss=ConvexLoss(**meta.loss),
                             noise="seeded" if seeded else "secure")
    if privacy.private and config.noise == "secure":
        config = dataclasses.replace(config, seed=None)  # nothing seeds it; the certificate must not say otherwise
    return privacy, config


def _remaining_records(meta: ComponentMetadata, records: RecordSet, deleted: set[str], key: bytes) -> RecordSet:
    """The shard's records without every deleted (tombstoned) one, this request's included; the rest
    must be records the component was trained on (a loader re-supplies records deleted earlier)."""
    held = set(meta.manifest.commitments)
    commitments = [commit(r, key) for r in records.record_ids]
    keep = [i for i, c in enumerate(commitments) if c not in deleted]
    foreign = sum(commitments[i] not in held for i in keep)
    if foreign:
        raise ForgetError(f"the records supplied for {meta.name!r} include {foreign} record(s) it was not trained on; "
                          f"pass the records of shard {meta.shard!r} only")
    return records.subset(keep)


def _plan_checks(ws: Workspace, affected: dict[str, ComponentMetadata], models: list[ModelRecord], retrain: bool,
                 shard_records: ShardRecords | None, merge_data: Mapping[str, torch.Tensor] | None,
                 retrained: set[str]) -> None:
    """Everything that could stop the request, checked before anything changes (``retrained``: the affected
    components that take a replacement when ``retrain``)."""
    if retrain and shard_records is None:
        raise ForgetError("retrain=True needs shard_records: the records of each affected shard, or a function "
                          "returning them for a component's metadata")
    if retrain and isinstance(shard_records, Mapping):
        missing = sorted(retrained - set(shard_records))
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
            from ..components.regmean import tensor_digest

            for part in record.components:
                if part.name in affected and not retrain:
                    continue  # removed without a replacement: its merge data is not needed
                data = None if merge_data is None else merge_data.get(part.name)
                if data is None or tensor_digest(data) != part.merge_data_sha256:
                    raise ForgetError(f"model {record.name!r} was merged with regmean: pass "
                                      f"merge_data[{part.name!r}], the same public merge inputs it was composed with")


def _recompose(ws: Workspace, record: ModelRecord, affected: set[str], replacements: Mapping[str, str],
               merge_data: Mapping[str, torch.Tensor] | None) -> tuple[ModelRecord, list[FileWrite]] | None:
    """The model rebuilt without the affected components (with their replacements): its new record
    and files, or None when no component is left, or none a mean weighs (all weights left 0: no mean of them exists,
    and refusing it held up the deletion)."""
    names, weights, data = [], [], {}
    for part in record.components:
        name = replacements.get(part.name) if part.name in affected else part.name
        if name is None:
            continue
        names.append(name)
        weights.append(part.weight)
        if record.method == "regmean":
            data[name] = merge_data[part.name]  # type: ignore[index]  # checked in _plan_checks
    if not names or (record.weights_given and record.method in ("mean", "regmean") and not any(w > 0 for w in weights)):
        return None
    from ..components.compose import compose

    options = {}
    if record.method == "regmean":
        import torch

        m = record.merge or {}
        options = {"merge_data": data, "merge_data_public": True, "ridge": m["ridge"], "cg_tol": m["cg_tol"],
                   "cg_max_iter": m["cg_max_iter"], "merge_dtype": getattr(torch, m["dtype"]),
                   "batch_size": m["batch_size"]}
    composition = compose([ws.load_component(n, arrays=record.method != "regmean") for n in names],
                          weights if record.weights_given else None, record.method, **options)
    return ws.model_writes(record.name, composition)


def _verify(ws: Workspace, remaining: Mapping[str, ComponentMetadata], models: Sequence[ModelChange], doomed: set[str],
            removed: set[str], now: datetime) -> Verification:
    """Check the workspace as the deletion leaves it: every remaining manifest, every model's
    components, and the tombstone list (re-checked on disk before the certificate is sealed)."""
    for name, meta in remaining.items():
        if meta.manifest.key_id != ws.key_id:
            raise ForgetError(f"component {name!r} was committed under another key; membership cannot be checked")
        if doomed & set(meta.manifest.commitments):
            raise ForgetError(f"verification failed: component {name!r} still holds a requested record")
    for model in models:
        left = removed & set(model.after.components if model.after else ())
        if left:
            raise ForgetError(f"verification failed: model {model.name!r} still includes {sorted(left)}")
    if not doomed <= set(Tombstones(ws.root).read()):
        raise ForgetError("verification failed: the requested records are not all on the tombstone list")
    statement = (f"Checked after the changes: none of the {len(remaining)} remaining components' record manifests "
                 f"contains any of the {len(doomed)} requested record commitment(s), no composed model "
                 "includes a removed component, and the records are on the workspace's tombstone list, so no "
                 "later training in this workspace will use them.")
    return Verification(verified=True, checked_at=now.isoformat(), components_checked=len(remaining),
                        commitments_checked=len(doomed), statement=statement)


def _reusable(ws: Workspace, own: Mapping[str, Unfinished], affected: Mapping[str, ComponentMetadata],
              deleted: set[str]) -> dict[str, AddedComponent]:
    """Of this request's unfinished replacements (``own``), those its retraining takes instead of training (and
    charging) them again (old name -> added component): each replaces an affected component at its theta0 and
    holds no record on the tombstone list (``deleted``). One trained before another request tombstoned records
    of its shard holds them (review 77), and one trained at another theta0 (the base checkpoint changed, then
    restored) cannot be composed with the others: such a one is removed, its budget spent, and a new one trained."""
    done = {}
    for name, unfinished in own.items():
        old = affected.get(unfinished.replaces)
        meta = read_metadata(ws.component_path(name))
        if (old is None or meta.base_weights_sha256 != old.base_weights_sha256
                or deleted & set(meta.manifest.commitments)):
            continue
        done[unfinished.replaces] = AddedComponent(
            name=name, sha256=sha256_file(ws.component_path(name)), data_source=meta.data_source, shard=meta.shard,
            records=meta.manifest.records, replaces=unfinished.replaces,
            ledger_reservation=unfinished.ledger_reservation, epsilon=meta.privacy.epsilon, delta=meta.privacy.delta,
            seed=meta.training.seed, size_public=size_public(ws.ledger.event(unfinished.ledger_reservation)))
    return done


def _obsolete(unfinished: Mapping[str, Unfinished], request_id: str, removed: Mapping[str, ComponentMetadata],
              reused: Mapping[str, AddedComponent], current: set[str]) -> set[str]:
    """The unfinished replacements a deletion of ``request_id`` removes with the components it ``removed``: each of
    this request's that it does not reuse, and each of another open request's whose component to replace it
    removes (or that is gone), so that a shard keeps one line of components (review 75, 77: otherwise both lines
    were retrained and charged at every later deletion). The other request, run again, finds its records removed
    while it was open, and trains what its shard needs then."""
    taken = {a.name for a in reused.values()}
    return {name for name, u in unfinished.items() if name not in taken and (
        u.request_id == request_id or name in removed or u.replaces in removed or u.replaces not in current)}


def _retrain_all(ws: Workspace, request_id: str, affected: Mapping[str, ComponentMetadata],
                 shard_records: ShardRecords, deleted: set[str], privacy: PrivacySpec | None,
                 config: TrainConfig | None, operator: str, done: Mapping[str, AddedComponent],
                 progress: TaskProgressFn | None = None) -> list[AddedComponent]:
    """Train a replacement for each affected component on its shard minus every deleted record
    (taking those an interrupted run of the same request finished, ``done``: :func:`_reusable`). Every
    replacement's budget is checked, all together, before any of them trains: a shard out of budget refuses the
    retraining before another shard is retrained and charged for a deletion that could not then finish with
    --retrain."""
    from ..backbones import BackboneSpec
    from .train import ShardJob, reservation_requests

    key = ws.manifest_key()
    planned: list[tuple[str, ComponentMetadata, PrivacySpec, TrainConfig, ShardJob]] = []
    for name, meta in affected.items():
        if name in done:
            continue
        records = shard_records[name] if isinstance(shard_records, Mapping) else shard_records(meta)
        remaining = _remaining_records(meta, records, deleted, key)
        if len(remaining) == 0:
            continue  # nothing left to learn from: removed without a replacement
        spec, cfg = _retrain_spec(meta, privacy, config)
        new = _replacement_name(ws, name, taken={job.name for *_, job in planned})
        planned.append((name, meta, spec, cfg, ShardJob(new, meta.shard, remaining,
                                                        log={"request_id": request_id, "replaces": name})))
    if len(planned) > 1:
        ws.ledger.check_reservations([request for name, meta, spec, cfg, job in planned for request in
                                      reservation_requests(ws, BackboneSpec.from_dict(meta.base), meta.trainable,
                                                           [job], data_source=meta.data_source, privacy=spec,
                                                           config=cfg, operator=operator,
                                                           purpose="retraining_after_deletion")])
    added = {name: done[name] for name in affected if name in done}
    for name, meta, spec, cfg, job in planned:
        run = ws.train_all(BackboneSpec.from_dict(meta.base), meta.trainable, [job], data_source=meta.data_source,
                           privacy=spec, config=cfg, operator=operator, purpose="retraining_after_deletion",
                           progress=progress)
        if run.failed:
            failure = run.failed[0]
            raise failure.error or ForgetError(f"retraining {name!r} failed: {failure.reason}")
        result = run.completed[0]
        if result.metadata.base_weights_sha256 != meta.base_weights_sha256:
            raise ForgetError(f"retraining {name!r} rebuilt a base model with other weights; {job.name!r} cannot "
                              "replace it: restore the base model and run forget again (a new replacement is trained)")
        p = result.metadata.privacy
        added[name] = AddedComponent(name=job.name, sha256=result.sha256, data_source=meta.data_source,
                                     shard=meta.shard, records=len(job.records), replaces=name,
                                     ledger_reservation=result.reservation_id, epsilon=p.epsilon, delta=p.delta,
                                     seed=cfg.seed, size_public=size_public(ws.ledger.event(result.reservation_id)))
    return [added[name] for name in affected if name in added]


@dataclass(frozen=True)
class _ModelPlan:
    changes: list[ModelChange]
    writes: list[FileWrite]
    removals: list[FileRemoval]
    ledger: list[RegisterModel]


def _rebuild_models(ws: Workspace, models: Sequence[ModelRecord], affected: set[str], replacements: Mapping[str, str],
                    merge_data: Mapping[str, torch.Tensor] | None) -> _ModelPlan:
    """Every model that uses an affected component, recomposed (or withdrawn when none is left)."""
    plan = _ModelPlan([], [], [], [])
    for record in models:
        before = _model_state(ws, record)
        if not affected & set(record.component_names):
            plan.changes.append(ModelChange(name=record.name, action="unchanged", before=before, after=before))
            continue
        rebuilt = _recompose(ws, record, affected, replacements, merge_data)
        if rebuilt is None:
            plan.removals.extend([
                FileRemoval(ws.relative(ws.model_path(record.name)), f"model:{record.name}"),
                FileRemoval(ws.relative(ws.model_deltas_path(record.name)), f"model:{record.name} deltas")])
            plan.changes.append(ModelChange(name=record.name, action="withdrawn", before=before, after=None))
            continue
        saved, writes = rebuilt
        plan.writes.extend(writes)
        plan.ledger.append(RegisterModel(record.name, saved.component_names))
        after = ModelState(record_sha256=writes[-1].sha256, deltas_file_sha256=saved.deltas_file_sha256,
                           deltas_sha256=saved.deltas_sha256, components=saved.component_names)
        plan.changes.append(ModelChange(name=record.name, action="recomposed", before=before, after=after))
    return plan


def _open_requests_served(ws: Workspace, affected: Mapping[str, ComponentMetadata],
                          request_id: str) -> dict[str, dict[str, list[str]]]:
    """Records of the *other* open requests that the components this deletion removes hold: request id ->
    commitment -> components. Removed with them (a replacement never trains a tombstoned record, and each open
    request's records are tombstoned), so that each such request's certificate can say where its records were when
    it is completed -- whichever request tombstoned a record first."""
    return held_records(open_request_records(ws, exclude=request_id),
                        {name: meta.manifest.commitments for name, meta in affected.items()})


def _removed_while_open(ws: Workspace, request_id: str,
                        commitments: Sequence[str]) -> dict[str, tuple[list[str], str, str, bool]]:
    """Of ``commitments`` (this request's records in no current component), those other requests' deletions
    removed while this one was open: commitment -> (components, those requests, when, whether they trained
    replacements) -- every such deletion, not only the first."""
    found: dict[str, tuple[list[str], str, str, bool]] = {}
    wanted = set(commitments)
    for entry in ws.audit.entries():
        served = entry.parameters.get("served_open_requests") if entry.operation == "deletion" else None
        for c, names in ((served or {}).get(request_id) or {}).items():
            if c not in wanted:
                continue
            retrained = bool(entry.parameters.get("components_added"))
            other, when = str(entry.parameters.get("request_id")), entry.time
            if c in found:
                was = found[c]
                found[c] = (sorted({*was[0], *names}), f"{was[1]}, {other}", was[2], was[3] or retrained)
            else:
                found[c] = (sorted(names), other, when, retrained)
    return found


def _shards_of(ws: Workspace, names: set[str]) -> dict[str, str]:
    """``source/shard`` of each named component, from the ledger's record of its training (the component itself
    may be gone): how the requester's copy names a component (``certificates._requester_shards``)."""
    return {e.component: f"{e.data_source}/{e.shard}" for e in ws.ledger.events() if e.component in names}


def _earlier_notes(earlier: Mapping[str, tuple[list[str], str, str, bool]], shards: Mapping[str, str]) -> list[str]:
    """A certificate note for each earlier deletion that removed records of this request while it was open. The
    requester's copy does not name the other request (another data subject's; the audit log links the two), only
    the day its deletion was served, nor the components (whose names count their shards' retrains), only their
    shards (``shards``)."""
    by_day: dict[tuple[str, bool], set[str]] = {}
    for names, _, when, retrained in earlier.values():
        by_day.setdefault((when[:10], retrained), set()).update(shards.get(name, name) for name in names)
    return [f"While this request was open, a deletion served on {day} for another request removed the "
            f"component(s) of {', '.join(sorted(names))}, which held records of this request"
            + (": their replacements were trained without them, as without every record on the tombstone list."
               if retrained else "; no replacement was trained.")
            for (day, retrained), names in sorted(by_day.items())]


def _deletion_change(ws: Workspace, cert: DeletionCertificate, plan: _ModelPlan, operator: str,
                     doomed: set[str], served: Mapping[str, Mapping[str, list[str]]] | None = None) -> Change:
    """The deletion in one change: components removed, models rebuilt or withdrawn, any cached Gram of a
    requested record left removed, certificate written (``served``: see :func:`_open_requests_served`)."""
    changed = [c for c in cert.models if c.action != "unchanged"]
    cache_writes, cache_removals = gram_cache.without_records(ws, doomed)
    return Change(
        "deletion", operator=operator,
        inputs=[Artifact(r.name, r.sha256, ws.relative(ws.component_path(r.name))) for r in cert.components_removed]
        + [Artifact(f"model:{c.name}", c.before.record_sha256, ws.relative(ws.model_path(c.name))) for c in changed],
        writes=plan.writes + cache_writes + certificate_writes(ws, cert),
        removals=[FileRemoval(ws.relative(ws.component_path(r.name)), r.name) for r in cert.components_removed]
        + plan.removals + cache_removals,
        ledger=plan.ledger,
        parameters={"request_id": cert.request_id, "outcome": cert.outcome, "completed_at": cert.completed_at,
                    "record_commitments": cert.record_commitments, "not_found": cert.not_found,
                    "components_removed": [r.name for r in cert.components_removed],
                    "components_added": [a.name for a in cert.components_added],
                    "models": {c.name: c.action for c in cert.models},
                    **({"served_open_requests": served} if served else {})})


def _seal(ws: Workspace, cert: DeletionCertificate, operator: str) -> DeletionCertificate:
    """Check the deletion on disk as ``certificate verify`` will, embed the checkpoint of the log as it
    stands after the deletion entry, rewrite the certificate and log that (the certificate cannot
    hold a checkpoint of the entry that hashes it)."""
    point = checkpoint_of([e.hash for e in ws.audit.entries()], origin_of(ws.info.manifest_key_id))
    cert = DeletionCertificate.model_validate({
        **cert.model_dump(), "checkpoint": {"origin": point.origin, "size": point.size, "root": point.root}})
    check = check_certificate(ws, cert)
    if not check.ok:
        raise ForgetError(f"the deletion of request {cert.request_id} does not verify on disk: {check.problems[0]}")
    cached = gram_cache.holding(ws, set(cert.record_commitments))
    if cached:
        raise ForgetError(f"the deletion of request {cert.request_id} does not verify on disk: gram cache file "
                          f"{cached[0]} may still hold a requested record's Theta")
    apply(ws, Change("certificate_sealed", operator=operator, writes=certificate_writes(ws, cert), parameters={
        "request_id": cert.request_id, "checkpoint": {"size": point.size, "root": point.root}}))
    return cert


#: Where the files that may hold a record live: a deletion must see each of them that the log holds as current
HOLDERS = ("components/", "models/")


def _check_nothing_away(missing: Sequence[str], request_id: str) -> None:
    """Refuse a deletion while a component or model file that the log holds as current is missing from the workspace
    (archived or moved away): the deletion could not see, remove or rebuild it, and would certify that no copy of the
    records is kept while one may be. The records stay tombstoned meanwhile. (A missing cached Gram file is derived
    and rebuilt on demand: the tombstoning logs it removed, see :func:`.tombstoning.missing_cache_files`.)
    ``missing``: the paths the log holds as current that are not on disk (``VerifyReport.missing_artifacts``)."""
    away = [p for p in missing if p.startswith(HOLDERS)]
    if away:
        listed = ", ".join(away[:3]) + (f" and {len(away) - 3} more" if len(away) > 3 else "")
        raise ForgetError(f"{len(away)} file(s) the audit log holds as current are not in the workspace ({listed}): "
                          "a deletion must see every component and model that may hold the records; "
                          f"put them back and run forget again (request {request_id} stays open, its records "
                          "tombstoned)")


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
    progress: TaskProgressFn | None = None,
) -> DeletionResult:
    """Carry out ``request`` (registering it first if needed) and write its certificate.

    ``retrain``: retrain each affected shard on ``shard_records`` (a mapping component name ->
    RecordSet, or a function of the component's metadata) minus the requested records, with the
    original run's settings and fresh noise unless ``privacy``/``config`` are given.
    ``merge_data``: the public merge inputs of regmean models that must be rebuilt. ``progress``: called with
    (replacement, step, total) as replacements train.
    Order: registration, tombstoning, checks, retraining, then one change (old components removed,
    models rebuilt, certificate written, logged), then the seal. If a step fails the request stays
    open and running it again finishes it: replacements already trained are reused, a change killed
    half-way is finished when the workspace is next opened, and a deletion done but not sealed is
    sealed.
    """
    operator = operator or getpass.getuser()
    with ws.lock():
        cert = read_certificate(ws, request.request_id) or receive(ws, request, operator=operator, now=now,
                                                                   tombstone_now=False)
        doomed = set(request.commitments(ws.manifest_key()))
        if cert.status == "completed" and cert.checkpoint is None and set(cert.record_commitments) == doomed:
            cert = _seal(ws, cert, operator)  # the deletion was done; a stop before sealing left only this
            return DeletionResult(cert, *ws.certificate_paths(cert.request_id))
        if set(cert.record_commitments) != doomed:
            done = f" and completed on {cert.completed_at}" if cert.status == "completed" else ""
            raise OtherRecordIds(f"request {request.request_id!r} was received with other record ids{done}; the ids "
                                 "given now were not processed (a new request needs a new request id)")
        if cert.status == "completed":  # asked again (e.g. a script that lost the first answer): the same answer
            return DeletionResult(cert, *ws.certificate_paths(cert.request_id), already_completed=True)
        # First of all (receiving did it too, for a request received before), so that nothing from now on -- this
        # request's retraining included, or a run after a crash half-way through -- can train these records again.
        missing = tombstone(ws, request, operator=operator, now=now)
        _check_nothing_away(missing, request.request_id)
        metas = {n: read_metadata(ws.component_path(n)) for n in ws.list_components()}
        for name, meta in metas.items():
            if meta.manifest.key_id != ws.key_id:
                raise ForgetError(f"component {name!r} was committed under another key; membership cannot be checked")
        found_in = {c: sorted(n for n, m in metas.items() if c in set(m.manifest.commitments)) for c in sorted(doomed)}
        affected = {n: metas[n] for n in sorted({n for names in found_in.values() for n in names})}
        earlier = _removed_while_open(ws, request.request_id, [c for c, names in found_in.items() if not names])
        models = [ws.model_record(m) for m in ws.list_models()]
        unfinished = unfinished_replacements(ws)
        lines = {n: m for n, m in affected.items() if n not in unfinished}  # what takes a replacement
        _plan_checks(ws, affected, models, retrain, shard_records, merge_data, retrained=set(lines))
        deleted = set(Tombstones(ws.root).read())
        reused = _reusable(ws, {n: u for n, u in unfinished.items() if u.request_id == request.request_id},
                           lines, deleted) if retrain else {}
        obsolete = _obsolete(unfinished, request.request_id, affected, reused, set(metas))
        removing = {**affected, **{n: metas[n] for n in sorted(obsolete)}}
        removed = [ComponentRef(name=n, sha256=sha256_file(ws.component_path(n)), data_source=m.data_source,
                                shard=m.shard, records=m.manifest.records) for n, m in removing.items()]
        added = (_retrain_all(ws, request.request_id, lines, shard_records, deleted, privacy,  # type: ignore[arg-type]
                              config, operator, reused, progress) if retrain else [])
        plan = _rebuild_models(ws, models, set(affected), {a.replaces: a.name for a in added}, merge_data)
        remaining = {n: m for n, m in metas.items() if n not in removing}
        remaining.update({a.name: read_metadata(ws.component_path(a.name)) for a in added})
        finished = resolve_now(now)
        verification = _verify(ws, remaining, plan.changes, doomed, set(removing), finished)
        for c, (names, *_) in earlier.items():
            found_in[c] = names
        shards_earlier = _shards_of(ws, {name for names, *_ in earlier.values() for name in names})
        cert = DeletionCertificate.model_validate({
            **cert.model_dump(), "status": "completed",
            "outcome": "deleted" if affected or earlier else "not_found_in_any_component",
            "completed_at": finished.isoformat(), "on_time": finished.date() <= date.fromisoformat(cert.due_by),
            "found_in": {c: n for c, n in found_in.items() if n},
            "not_found": [c for c, n in found_in.items() if not n],
            "shards_removed_earlier": shards_earlier,
            "caveats": [*_earlier_notes(earlier, shards_earlier), *cert.caveats],
            "components_removed": [r.model_dump() for r in removed],
            "components_added": [a.model_dump() for a in added],
            "models": [c.model_dump() for c in plan.changes], "verification": verification.model_dump()})
        served = _open_requests_served(ws, removing, request.request_id)
        apply(ws, _deletion_change(ws, cert, plan, operator, doomed, served))
        cert = _seal(ws, cert, operator)
        return DeletionResult(cert, *ws.certificate_paths(cert.request_id))


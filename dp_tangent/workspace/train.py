"""Training several components at once: the driver's side of an executor run.

The privacy bookkeeping never leaves the driver (this process):

1. every task is validated and planned, and the base model checked, before anything is written;
2. the budget of every shard is reserved in the workspace ledger in one transaction, all or
   nothing, before any task is submitted, and logged at once (should that log entry fail, the
   reservations are marked failed and logged so, their budget spent);
3. the executor, started and prepared before step 2 (so an unreachable cluster, workers that do
   not start or a missing GPU cost no budget), trains: in this process, in local worker
   processes or on a Ray cluster;
4. each finished task's component is written atomically by the driver, its reservation
   completed and the worker that trained it logged; a task that failed or was lost is marked
   failed (its budget stays spent) and logged, and comes back in ``TrainingRun.failed`` for a
   retry under a new name. Ctrl-C or an executor error marks every unfinished task failed and
   re-raises.

A private run in the Gram mode is offered the Thetas the workspace's cache holds for its records
(:mod:`.gram_cache`, checked against the audit log first), and its completion change writes the
cache file of its shard with the Thetas of its records; the entry says how many were reused (hits)
and computed (misses), nothing per record.
"""

from __future__ import annotations

import contextlib
import getpass
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from privacy_accounting import Status
from privacy_accounting.budgets import budget_of

from ..backbones import BackboneSpec, weights_digest
from ..components.manifest import commit
from ..data.records import RecordSet
from ..errors import failure_reason, logged_reason
from ..interrupts import deferred_interrupts
from ..tangent import TangentModel
from ..training.config import PrivacySpec, TrainConfig, check_budget_delta
from ..training.executors import Executor, TaskFailed, TaskOutcome, TaskProgressFn
from ..training.executors.serial import SerialExecutor
from ..training.plan import plan_task, reservation_request
from ..training.theta0 import CheckedTheta0, check_theta0
from ..training.validation import check_batch_size
from ..training.write import ComponentFile, TrainedComponent, component_file
from . import data_sources, gram_cache
from .audit_log import Artifact
from .commit import Change, ChangeCommittedError, FileRemoval, FileWrite, apply, finish_interrupted
from .ledger_ops import CompleteReservation, FailReservation, LedgerOp
from .names import WorkspaceError
from .tombstones import Tombstones

DeletedRecords = Literal["refuse", "exclude"]

if TYPE_CHECKING:
    from .store import Workspace


@dataclass(frozen=True)
class ShardJob:
    """One component to train: its (unused) name, the shard it is trained on, and the shard's records;
    ``log``: extra parameters for its audit entries (e.g. the deletion request a retraining serves)."""

    name: str
    shard: str
    records: RecordSet
    log: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FailedShard:
    """A component that was not produced, its reservation marked failed and its budget spent; or, ``committed``, one
    trained whose completion failed past its commit point: the next command finishes it, component included."""

    name: str
    shard: str
    reason: str
    worker: dict[str, object]
    lost: bool = False
    error: BaseException | None = None
    committed: bool = False  # its reservation is then not failed


@dataclass(frozen=True)
class TrainingRun:
    """Outcome of :func:`train_all`: components written, shards to retry, how many deleted
    (tombstoned) records were dropped from each job's shard before training, and for each completed
    component how its Thetas were had (``gram_cache``: hits, misses, and why a cache file was
    ignored; absent when the run did not clip from Grams)."""

    completed: list[TrainedComponent]
    failed: list[FailedShard]
    excluded_deleted: dict[str, int] = field(default_factory=dict)
    gram_cache: dict[str, dict[str, Any]] = field(default_factory=dict)


def train_all(ws: "Workspace", backbone: BackboneSpec, trainable: str | None, jobs: Sequence[ShardJob], *,
              data_source: str, privacy: PrivacySpec, config: TrainConfig = TrainConfig(),
              executor: Executor | None = None, operator: str | None = None, purpose: str = "training",
              progress: TaskProgressFn | None = None, deleted: DeletedRecords = "refuse",
              allow_overlap: bool = False, theta0: CheckedTheta0 | None = None) -> TrainingRun:
    """Train one component per job through ``executor`` (default: serial), as the module doc says.

    Records a deletion request removed (tombstoned) are never trained again: ``deleted="refuse"``
    refuses a job whose records hold one, ``"exclude"`` drops them and says so in the result and
    the log. Each reservation names the records it reads (their commitments), so the ledger charges
    exactly those and refuses records another shard already read unless ``allow_overlap``. ``theta0``: the base
    network (and tangent model) the caller built and checked against these jobs before it registered their data
    (:func:`~dp_tangent.training.theta0.check_theta0`), used rather than built again where it serves this run.
    """
    operator = operator or getpass.getuser()
    executor = executor or SerialExecutor()
    operation = "retraining" if purpose == "retraining_after_deletion" else "training"
    key = ws.manifest_key()

    def log(job: ShardJob, status: str, ledger: Sequence[LedgerOp] = (), **extra: object) -> None:
        apply(ws, Change(operation, operator=operator, ledger=ledger, parameters={
            "component": job.name, "data_source": data_source, "shard": job.shard, "purpose": purpose,
            "records": len(job.records), "trainable": trainable, "base": backbone.to_dict(),
            "executor": executor.name, "status": status, "excluded_deleted": excluded.get(job.name, 0),
            **job.log, **extra}))

    with ws.lock(), contextlib.closing(executor):
        # Under the lock: a deletion served while this run waited for it is seen here.
        jobs, excluded, commitments = _without_deleted(ws, jobs, key, deleted)
        by_name = {job.name: job for job in jobs}
        _check_names(ws, jobs)  # a refused name spends nothing and is not logged
        if purpose == "training":  # (a retraining after a deletion trains no new record, and is never refused)
            # images given directly (the Python API registers no loader) are checked for copies as a registration is
            data_sources.refuse_copied_images(ws, data_source, [job.records for job in jobs])

        reservations: dict[str, str] = {}

        @contextlib.contextmanager
        def unreserved() -> Iterator[None]:
            """A refusal or failure before the reservation is logged: logged per job, nothing spent; or, if the
            ledger had reserved (its log entry is what failed, a disk filling up), the reservation marked failed
            and logged as such, its budget spent (as the next command would, finding it abandoned)."""
            try:
                yield
            except BaseException as err:
                for job in jobs:  # the message may name a record id: it goes to the operator, not into the log
                    if job.name not in reservations:
                        log(job, "failed", error=f"{type(err).__name__} before any budget was reserved",
                            reserved=False)
                        continue
                    cause = err.__cause__ or err.__context__  # an interrupt held back while the disk filled: both
                    why = type(err).__name__ + (f" (after {type(cause).__name__})"
                                                if isinstance(err, KeyboardInterrupt) and cause is not None else "")
                    reason = f"{why} after the budget was reserved, while its reservation was being logged"
                    with contextlib.suppress(Exception):  # else the next command resolves it, as abandoned
                        finish_interrupted(ws)  # a reservation entry that failed after its commit point, first
                        log(job, "failed", ledger=[FailReservation(reservations[job.name], reason)], error=reason,
                            reserved=True, ledger_reservation=reservations[job.name])
                raise

        with unreserved():
            tasks, requests = _planned(backbone, trainable, jobs, commitments, data_source=data_source,
                                       privacy=privacy, config=config, operator=operator, purpose=purpose)
            _check_budget_deltas(ws, data_source, tasks, jobs)
            # what the reservation would refuse (a budget, an overlap, a non-private run under a budget)
            # is refused now, before any worker starts or any feature is computed
            ws.ledger.check_reservations(requests, allow_overlap=allow_overlap)
        executor.start(len(jobs))  # before reserving: an unreachable cluster costs no budget
        with unreserved():
            if theta0 is None or not theta0.serves(backbone, trainable, privacy.private, set(by_name)):
                theta0 = check_theta0(backbone, trainable, {job.name: job.records for job in jobs},
                                      private=privacy.private)
            base, tangent = theta0.base, theta0.tangent
            for task in tasks:  # a data mistake costs no budget: refused before anything is reserved
                check_batch_size(task.records, task.config.batch_size, f"component {task.name!r}", task.plan.size)
            expected_base = weights_digest(base)
            _record_features_choice(ws, data_source, jobs, config, operator)
            caches = _gram_caches(ws, backbone, expected_base, tangent, jobs, key, data_source, config)
            tasks = [replace(task, gram_cache=caches[task.name].known,  # and whether it keeps features, as resolved
                             config=replace(task.config, keep_features=caches[task.name].keep_features))
                     if task.name in caches else task for task in tasks]
            executor.prepare(tasks)  # workers up, devices there: a failure here costs no budget
            # Ctrl-C or SIGTERM from here is held back until the failure handling below is in place, so that it
            # marks the reservations failed instead of finding them half made (a commit takes milliseconds)
            held = contextlib.ExitStack()
            held.enter_context(deferred_interrupts())
            try:
                reservations.update(zip(by_name, ws.ledger.reserve_all(requests, allow_overlap=allow_overlap)))
                # Logged at once, so the ledger never holds rows the log has not seen (a kill -9 from
                # here on leaves reservations the next opening resolves, in the log too).
                apply(ws, Change("reservation", operator=operator, parameters={
                    "purpose": purpose, "data_source": data_source,
                    "reservations": {job.name: {"shard": job.shard, "ledger_reservation": reservations[job.name]}
                                     for job in jobs}}))
            except BaseException:
                held.close()
                raise
        completed: list[TrainedComponent] = []
        failed: list[FailedShard] = []
        gram_use: dict[str, dict[str, Any]] = {}
        open_jobs = dict(by_name)

        def fail(name: str, reason: str, worker: dict[str, object], lost: bool = False,
                 error: BaseException | None = None, logged: str | None = None) -> None:
            """``reason`` is shown to the operator; ``logged`` (default: the reason) is what the ledger and the log
            keep, no error message from the task or the data (:func:`~dp_tangent.errors.logged_reason`)."""
            job = open_jobs.pop(name)
            # a change that failed after its commit point (its files half moved when the disk filled) is finished
            # first, as the next command would: a reservation it completed is not failed over it
            with contextlib.suppress(Exception):  # still failing (the disk still full): the next command does it
                finish_interrupted(ws)
            if ws.ledger.event(reservations[name]).status is not Status.RESERVED:
                return
            failed.append(FailedShard(job.name, job.shard, reason, worker, lost, error))
            kept = " ".join((reason if logged is None else logged).split())
            log(job, "failed", ledger=[FailReservation(reservations[name], kept[:500] or "failed", {"worker": worker})],
                error=kept[:300], worker=worker, lost=lost, ledger_reservation=reservations[name])

        def _handle(outcome: TaskOutcome) -> None:
            if isinstance(outcome, TaskFailed):
                fail(outcome.task.name, outcome.reason, outcome.worker, outcome.lost, outcome.error,
                     logged=None if outcome.lost else logged_reason(outcome.error or outcome.reason))
                return
            task, trained = outcome.task, outcome.result
            if trained.base_weights_sha256 != expected_base:
                fail(task.name, "the worker's base weights differ from the driver's (sha256 "
                                f"{trained.base_weights_sha256[:12]} != {expected_base[:12]}): check its installed "
                                "packages and checkpoint", trained.worker)
                return
            job = by_name[task.name]
            path = ws.component_path(job.name)
            try:
                built = component_file(task, trained, reservation=reservations[job.name], data_source=data_source,
                                       shard=job.shard, output=path, manifest_key=key)
                cache_writes, cache_removals, cache_use = gram_cache.completion(ws, caches.get(job.name),
                                                                                trained.grams)
                if config.keep_features is False:  # none of the shard's features kept, under any key or mode
                    own = caches[job.name].path if job.name in caches else None
                    cache_writes += gram_cache.declining(ws, data_source, job.shard, own)
                try:
                    apply(ws, _completed_change(ws, operation, operator, backbone, job, data_source, purpose, built,
                                                executor.name, trained.worker, excluded.get(job.name, 0),
                                                cache_writes, cache_use, cache_removals))
                except ChangeCommittedError as err:  # the component is committed: finished now, or by a later command
                    try:
                        finish_interrupted(ws)
                    except Exception:  # noqa: BLE001 -- still failing (the disk still full): not yet (review 115)
                        del open_jobs[job.name]
                        failed.append(FailedShard(job.name, job.shard, str(err), trained.worker, error=err,
                                                  committed=True))
                        return
            except Exception as err:  # noqa: BLE001 -- e.g. disk full: this shard failed, go on with the rest
                fail(task.name, failure_reason(err), trained.worker, error=err, logged=logged_reason(err))
                return
            del open_jobs[job.name]
            completed.append(TrainedComponent(path, built.metadata, built.sha256, reservations[job.name]))
            if cache_use is not None:
                gram_use[job.name] = cache_use

        try:
            held.close()  # an interrupt held back while reserving is raised here, and handled below
            with contextlib.closing(executor.run(tasks, progress)) as outcomes:
                for outcome in outcomes:
                    _handle(outcome)
        except BaseException as err:
            reason = failure_reason(err) if str(err) else f"{type(err).__name__}: interrupted before it finished"
            logged = logged_reason(err) if str(err) else reason
            for name in list(open_jobs):
                try:  # best effort for each: the original error is what the caller must see
                    if ws.ledger.event(reservations[name]).status is Status.RESERVED:
                        fail(name, reason, {"executor": executor.name}, logged=logged)
                except Exception:  # noqa: BLE001,S110
                    pass
            raise
    return TrainingRun(completed, failed, excluded, gram_use)


def _gram_caches(ws: "Workspace", backbone: BackboneSpec, base_sha256: str, tangent: TangentModel | None,
                 jobs: Sequence[ShardJob], key: bytes, data_source: str, config: TrainConfig
                 ) -> dict[str, gram_cache.JobCache]:
    """For a private run in the Gram mode: each job's cache file and the Thetas offered from it."""
    if tangent is None or config.grad_sample_mode != "gram":
        return {}
    cache_key = gram_cache.gram_key(backbone, base_sha256, tangent, config)
    deleted, logged = frozenset(Tombstones(ws.root).read()), gram_cache.logged_digests(ws)
    declined = data_sources.features_declined(ws, data_source)
    return {job.name: gram_cache.prepare(ws, cache_key, data_source, job.shard,
                                         [commit(r, key) for r in job.records.record_ids], deleted, logged,
                                         False if config.keep_features is None and job.shard in declined
                                         else config.keep_features)
            for job in jobs}


def _record_features_choice(ws: "Workspace", data_source: str, jobs: Sequence[ShardJob], config: TrainConfig,
                            operator: str | None) -> None:
    """A run that says whether to keep features records it for its shards (logged), so that later runs that do
    not say -- a retraining after a deletion has no recipe -- follow it whatever key their cache files have; a
    decline strips the shards' cache files of their features in the same change (were the run to fail, the record
    and the cache still agree)."""
    if config.keep_features is None:
        return
    shards = sorted({job.shard for job in jobs})
    content = data_sources.features_choice(ws, data_source, shards, config.keep_features)
    stripped = [] if config.keep_features else [w for shard in shards
                                                 for w in gram_cache.declining(ws, data_source, shard)]
    if content is not None or stripped:
        writes = [FileWrite(data_sources.FILE, content, "data-source registry")] if content is not None else []
        apply(ws, Change("data_source", operator=operator, writes=writes + stripped,
                         parameters={"data_source": data_source, "shards": shards,
                                     "features": "kept" if config.keep_features else "declined"}))


def _check_names(ws: "Workspace", jobs: Sequence[ShardJob]) -> None:
    names = [job.name for job in jobs]
    if not names:
        raise WorkspaceError("nothing to train: no shards given")
    if len(set(names)) != len(names):
        raise WorkspaceError(f"component names repeat within one run: {names}")
    for name in names:
        if ws.component_name_used(name):
            raise WorkspaceError(f"component name {name!r} is already used in {ws.root}; choose another name")


def _planned(backbone: BackboneSpec, trainable: str | None, jobs: Sequence[ShardJob],
             commitments: Mapping[str, frozenset[str]], *, data_source: str, privacy: PrivacySpec,
             config: TrainConfig, operator: str, purpose: str) -> tuple[list[Any], list[Any]]:
    """Each job's training task (its plan: q, T, sigma, the event) and the reservation it would make, naming the
    records it reads (``commitments``)."""
    tasks = [plan_task(backbone, trainable, job.records, name=job.name, shard=job.shard, privacy=privacy,
                       config=config) for job in jobs]
    requests = [replace(reservation_request(task, data_source=data_source, shard=job.shard, operator=operator,
                                            purpose=purpose), records=commitments[job.name])
                for task, job in zip(tasks, jobs)]
    return tasks, requests


def reservation_requests(ws: "Workspace", backbone: BackboneSpec, trainable: str | None, jobs: Sequence[ShardJob], *,
                         data_source: str, privacy: PrivacySpec, config: TrainConfig = TrainConfig(),
                         operator: str | None = None, purpose: str = "training",
                         deleted: DeletedRecords = "refuse") -> list[Any]:
    """The reservations :func:`train_all` would make for ``jobs``, made by nobody: for checking the budgets of several
    runs together (``Ledger.check_reservations``) before any of them trains."""
    jobs, _, commitments = _without_deleted(ws, jobs, ws.manifest_key(), deleted)
    tasks, requests = _planned(backbone, trainable, jobs, commitments, data_source=data_source, privacy=privacy,
                               config=config, operator=operator or getpass.getuser(), purpose=purpose)
    _check_budget_deltas(ws, data_source, tasks, jobs)
    return requests


def _check_budget_deltas(ws: "Workspace", data_source: str, tasks: Sequence[Any], jobs: Sequence[ShardJob]) -> None:
    """The budget over each private task's shard has a delta below 1/n for the n the task is planned for (review
    102: a budget set at a delta of 1/n or more made every figure of the shard, stated at it, low or negative); and a
    run planned from its shard's own count does not weaken a release stated without that caveat."""
    budgets = ws.ledger.budgets()  # (the source may not be declared yet: checked before registering it)
    for task, job in zip(tasks, jobs):
        budget = budget_of(budgets, data_source, job.shard)
        if budget is not None and task.privacy.private:
            check_budget_delta(budget.delta, task.plan.size, f"the budget of {data_source}/{job.shard}")
    _check_released_relation(ws, data_source, [job.shard for task, job in zip(tasks, jobs)
                                               if task.privacy.private and task.privacy.planned_shard_size is None])


def _check_released_relation(ws: "Workspace", data_source: str, shards: Sequence[str]) -> None:
    """Refuse a run planned from its shard's own record count on the records of a model released under plain
    add-or-remove-one DP (every run the shard's figure composes was planned then, and is still): the release's
    statement bounds every later run on those records, and this run's figure holds only with the shard's size public,
    which the statement did not say (review 112)."""
    from ..components.component import sizes_public
    from .release import released_shards

    if not shards or not ws.audit_log_path.is_file():
        return
    released = released_shards(ws)
    for shard in shards:
        key = (data_source, shard)
        if key in released and not sizes_public(ws.ledger, [key, *(
                ws.ledger.shard_spend_and_readers(*key, 1e-5)[1] if ws.ledger.overlap_possible() else ())]):
            raise WorkspaceError(
                f"{data_source}/{shard} holds records of model(s) {', '.join(released[key])} released under "
                "add-or-remove-one DP, which bounds every later run on them; a run planned from the shard's own record "
                "count holds only with the shard's size public, which the release did not state: give "
                "privacy.planned_shard_size (an upper bound on the shard's size, fixed in advance)")


def _without_deleted(ws: "Workspace", jobs: Sequence[ShardJob], key: bytes, deleted: DeletedRecords
                     ) -> tuple[list[ShardJob], dict[str, int], dict[str, frozenset[str]]]:
    """The jobs without tombstoned records (``"exclude"``), or a refusal naming them (``"refuse"``);
    with how many each lost and the commitments of the records each keeps."""
    if deleted not in ("refuse", "exclude"):
        raise WorkspaceError(f"deleted must be 'refuse' or 'exclude', got {deleted!r}")
    tombstones = Tombstones(ws.root).read()
    out, excluded, kept = [], {}, {}
    for job in jobs:
        commitments = [commit(r, key) for r in job.records.record_ids]
        found = {c: tombstones[c].request_id for c in commitments if c in tombstones}
        if not found:
            out.append(job)
            kept[job.name] = frozenset(commitments)
            continue
        if deleted == "refuse":
            requests = ", ".join(sorted(set(found.values())))
            raise WorkspaceError(f"shard {job.shard!r} holds {len(found)} record(s) deleted by request(s) {requests}; "
                                 "deleted records are never trained again: drop them from the data, or exclude them "
                                 "(deleted='exclude', or the CLI's default)")
        keep = [i for i, c in enumerate(commitments) if c not in found]
        out.append(ShardJob(job.name, job.shard, job.records.subset(keep)))
        excluded[job.name] = len(found)
        kept[job.name] = frozenset(commitments[i] for i in keep)
    return out, excluded, kept


def _completed_change(ws: "Workspace", operation: str, operator: str, backbone: BackboneSpec, job: ShardJob,
                      data_source: str, purpose: str, built: ComponentFile, executor: str,
                      worker: dict[str, object], excluded_deleted: int = 0, cache_writes: Sequence[FileWrite] = (),
                      cache_use: Mapping[str, Any] | None = None, cache_removals: Sequence[FileRemoval] = ()) -> Change:
    """The component file (and its shard's gram cache file, its superseded ones removed) written and its
    reservation completed, in one logged change."""
    meta, p = built.metadata, built.metadata.privacy
    return Change(
        operation, operator=operator,
        inputs=[Artifact(f"base:{backbone.name}", meta.base_weights_sha256),
                Artifact(f"records:{data_source}/{job.shard} (manifest root)", meta.manifest.root)],
        writes=[FileWrite(ws.relative(ws.component_path(job.name)), built.data, job.name), *cache_writes],
        removals=list(cache_removals),
        ledger=[CompleteReservation(p.ledger_reservation, built.ledger_details)],
        parameters={"component": job.name, "data_source": data_source, "shard": job.shard, "purpose": purpose,
                    "records": len(job.records), "base": backbone.to_dict(), "executor": executor, "worker": worker,
                    "status": "completed", "trainable": meta.trainable, "ledger_reservation": p.ledger_reservation,
                    "private": p.private, "epsilon": p.epsilon, "delta": p.delta,
                    "noise_multiplier": p.noise_multiplier, "max_grad_norm": p.max_grad_norm,
                    "sample_rate": p.sample_rate, "steps": p.steps, "seed": meta.training.seed,
                    "excluded_deleted": excluded_deleted, "deltas_sha256": meta.deltas_sha256,
                    "gram_cache": None if cache_use is None else dict(cache_use), **job.log})

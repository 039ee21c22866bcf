"""``dp-tangent train``: one DP component per shard of a recipe's data, composed into one model.

``train`` spends privacy budget: one DP component per shard (``NAME-shard-K`` on shard ``shard-K``
of the recipe's data source), every shard reserved in the ledger before any record is read, trained
by an executor (local worker processes by default, or Ray), then composes them (mean) into model
``NAME``. A failed shard is retried with ``--shard K`` as ``NAME-shard-K-retry-J``. Training in this
process (``--executor serial``) shows the NTK Gram precompute as a bar of its own; a shard whose Grams
came (partly) from the workspace's cache, or whose cache file was ignored, says so in one line.
"""

from __future__ import annotations

import contextlib
import math
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ..errors import DPTangentError
from .app import DEFAULT_WORKSPACE, WorkspaceOption, app, listen_to_workspaces
from .budget import shard_state

if TYPE_CHECKING:
    from rich.console import Console

    from privacy_accounting.records import Budget

    from ..data import RecordSet
    from ..recipes import Recipe
    from ..training.theta0 import CheckedTheta0
    from ..workspace import Workspace
    from ..workspace.train import ShardJob, TrainingRun

# after an epsilon planned from a shard's own count (no planned_shard_size): it holds with that count public
_SIZE_PUBLIC = " (the shard's size taken as public: planned from its record count)"
_SIZES_PUBLIC = " (the shards' sizes taken as public: a run on them was planned from its shard's record count)"


class ShardsMissingError(DPTangentError):
    """Some shards of a model failed (their budget stays spent); the others are kept."""


RecipeArgument = Annotated[Path, typer.Argument(help="Recipe YAML file (see docs/recipes.md).")]


def _check_model_name(ws: Workspace, name: str) -> None:
    """Refuse a model name compose would refuse after the training spent the budget."""
    from ..workspace import WorkspaceError

    if name in ws.list_models() or name in ws.ledger.models():  # the ledger's too: a model file may be away
        raise WorkspaceError(f"model {name!r} already exists in {ws.root}; choose another --name")
    if ws.component_name_used(name):
        raise WorkspaceError(f"{name!r} is a component's name in {ws.root}; choose another --name")


def _check_unused(ws: Workspace, name: str, shards: int) -> None:
    """Refuse before spending anything if the model or a component name is taken."""
    from ..workspace import WorkspaceError

    _check_model_name(ws, name)
    used = [k for k in range(shards) if ws.component_name_used(f"{name}-shard-{k}")]
    if used:  # e.g. a run stopped (or killed) before composing: its other shards can be trained on their own
        done = _components_by_shard(ws, name)
        missing = [k for k in range(shards) if k not in done]
        taken = f"component name '{name}-shard-{used[0]}' is already used in {ws.root} (names are never reused)"
        if not missing:  # training again under another name would spend the budget again
            raise WorkspaceError(f"{taken}; every shard of an earlier run of {name!r} has a component. To train a "
                                 "new model, choose another --name (its training spends budget again); to finish "
                                 "that run, compose it (no training, no budget) with "
                                 f"{_compose_command(ws, name, done, shards)}")
        raise WorkspaceError(f"{taken}: choose another --name; to finish an earlier run of {name!r}, train only its "
                             "missing shards: " + " ".join(f"--shard {k}" for k in missing))


def _register_source(ws: Workspace, recipe: Recipe, jobs: list[ShardJob]) -> "CheckedTheta0":
    """Declare the data source and its shards, with how to reload it (for retraining, evaluate, predict), once the
    registration's checks, the jobs' batch sizes and theta0 against their records hold; returns that theta0."""
    from ..data.sources import source_for
    from ..training.theta0 import check_theta0
    from ..training.validation import check_batch_size

    checked: list[CheckedTheta0] = []

    def trainable() -> None:
        """Refused after registering, a pilot's records would fix the source's test split for good (review 98), and
        the recipe fixed (its selector, its backbone) be held to the budget it set."""
        planned, batch_size = recipe.privacy_spec().planned_shard_size, recipe.train_config().batch_size
        for job in jobs:
            check_batch_size(job.records, batch_size, f"component {job.name!r}", planned)
        checked.append(check_theta0(recipe.backbone.spec(), recipe.trainable, {j.name: j.records for j in jobs},
                                    private=recipe.privacy_spec().private))

    loader = source_for(recipe.data, recipe.shards)
    ws.declare_data_source(recipe.data_source, description=f"recipe data {recipe.data.kind}",
                           shards=[f"shard-{k}" for k in range(recipe.shards.count)], loader=loader,
                           before_write=trainable)
    budget, current = recipe.budget, _source_budget(ws, recipe.data_source)
    if budget and current is None:
        ws.set_budget(recipe.data_source, None, budget.epsilon, budget.delta)
    else:
        _note_budget_kept(recipe, current)
    return checked[0]


def _source_budget(ws: Workspace, data_source: str) -> "Budget | None":
    return next((b for b in ws.ledger.budgets() if (b.data_source, b.shard) == (data_source, None)), None)


def _note_budget_kept(recipe: Recipe, current: "Budget | None") -> None:
    """A recipe never overrides a budget set in the workspace (a privacy officer may have lowered it): say so."""
    budget = recipe.budget
    if budget and current is not None and (current.epsilon, current.delta) != (budget.epsilon, budget.delta):
        typer.echo(f"note: data source {recipe.data_source!r} keeps its budget epsilon {current.epsilon:g} at delta "
                   f"{current.delta:g}; the recipe's ({budget.epsilon:g}, {budget.delta:g}) is not applied (use "
                   "`dp-tangent budget set` to change it)", err=True)


def _check_reservations(ws: Workspace, recipe: Recipe, jobs: list[ShardJob], allow_overlap: bool) -> None:
    """What the run's reservations would refuse now (records another shard read, a budget), before the recipe's
    data and budget are registered: registered, records refused as an overlap would stay the source's, and the
    data fixed to leave them out would be refused as not the data registered; a recipe's budget for a source that
    has none would be set, and the recipe fixed to fit it would be held to it (review 80). ``train_all`` checks
    again, under the lock."""
    from privacy_accounting import BudgetExceededError
    from privacy_accounting.budgets import enforce_budget
    from privacy_accounting.records import Budget

    from ..training.config import check_budget_delta, planned_size
    from ..workspace.train import reservation_requests

    requests = reservation_requests(ws, recipe.backbone.spec(), recipe.trainable, jobs, data_source=recipe.data_source,
                                    privacy=recipe.privacy_spec(), config=recipe.train_config(), deleted="exclude")
    current = _source_budget(ws, recipe.data_source)
    try:
        ws.ledger.check_reservations(requests, allow_overlap=allow_overlap)
    except BudgetExceededError:
        _note_budget_kept(recipe, current)  # the way out is `budget set`, not the recipe
        raise
    if recipe.budget is not None and current is None:  # the budget registering would set, where no shard's own holds
        limit = Budget(recipe.data_source, None, recipe.budget.epsilon, recipe.budget.delta)
        own = {b.shard for b in ws.ledger.budgets() if b.data_source == recipe.data_source and b.shard is not None}
        for request in (r for r in requests if r.shard not in own):
            check_budget_delta(limit.delta, planned_size(request.details),  # type: ignore[arg-type]
                               f"the recipe's budget of {recipe.data_source}/{request.shard}")
            enforce_budget(data_source=request.data_source, shard=request.shard, budget=limit,
                           existing=[e.tree for e in ws.ledger.events(data_source=request.data_source,
                                                                      shard=request.shard)],
                           new_event=request.event, settings=ws.ledger.settings)


_COMPONENT = r"^{name}-shard-(\d+)(?:-retry-\d+)?(?:\.r\d+)*$"  # a deletion's replacement stands for its shard


def _components_by_shard(ws: Workspace, name: str) -> dict[int, str]:
    """Shard number -> completed component of model ``name`` (``NAME-shard-K``, a ``-retry-J`` of it, or a deletion's
    replacement ``.rN`` of either: review 78, a shard whose component a deletion had replaced was trained again,
    a second line of it); not a replacement an open deletion request has yet to finish."""
    from ..workspace.replacements import unfinished_replacements

    pattern = re.compile(_COMPONENT.format(name=re.escape(name)))
    unfinished = unfinished_replacements(ws)
    found: dict[int, str] = {}
    for event in ws.ledger.events(status="completed"):
        match = pattern.match(event.component)
        if match and event.component not in unfinished and ws.component_path(event.component).exists():
            found[int(match.group(1))] = event.component
    return found


def _retry_name(ws: Workspace, name: str, k: int) -> str:
    """``NAME-shard-K``, or the first unused ``NAME-shard-K-retry-J`` (names are never reused)."""
    candidates = [f"{name}-shard-{k}"] + [f"{name}-shard-{k}-retry-{j}" for j in range(1, 1000)]
    return next(c for c in candidates if not ws.component_name_used(c))


def _check_retry(ws: Workspace | None, name: str, selected: list[int], count: int) -> None:
    from ..workspace import WorkspaceError

    bad = [k for k in selected if not 0 <= k < count]
    if bad:
        raise WorkspaceError(f"--shard {bad[0]} is out of range: the recipe has shards 0..{count - 1}")
    if ws is None:
        return
    _check_model_name(ws, name)
    done = _components_by_shard(ws, name)
    trained = [k for k in selected if k in done]
    if trained:
        raise WorkspaceError(f"shard {trained[0]} of {name!r} already has component {done[trained[0]]!r}; "
                             "retry only shards that failed")


def _executor(kind: str, workers: int | None, address: str | None, recipe: Recipe, jobs: int):  # noqa: ANN202
    from ..training.executors import ExecutorError, create_executor, local_executor_for

    if workers is not None and kind != "local":
        raise ExecutorError("--workers applies to the local executor only")
    if address is not None and kind != "ray":
        raise ExecutorError("--address applies to the ray executor only")
    if kind == "local":
        return local_executor_for(jobs, workers)
    if kind == "ray":
        return create_executor("ray", address=address, num_cpus=recipe.resources.cpus,
                               num_gpus=recipe.resources.gpus)
    return create_executor(kind)


@app.command()
def train(
    recipe_path: RecipeArgument,
    shards: Annotated[Optional[int], typer.Option(help="Number of disjoint shards (default: the recipe's).")] = None,
    epsilon: Annotated[Optional[float], typer.Option(help="Target epsilon of every component.")] = None,
    delta: Annotated[Optional[float], typer.Option(help="Delta of every component.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Model name; components are NAME-shard-K "
                                                     "(default: the recipe file's stem).")] = None,
    only: Annotated[Optional[list[int]], typer.Option(
        "--shard", help="Train only shard K (repeatable): retries shards whose training failed.")] = None,
    executor: Annotated[str, typer.Option(help="Where components train: local (worker processes on this machine), "
                                               "ray (a Ray cluster) or serial (this process).")] = "local",
    workers: Annotated[Optional[int], typer.Option(help="local: worker processes (default: one per core, "
                                                        "at most one per shard).")] = None,
    address: Annotated[Optional[str], typer.Option(help="ray: 'auto' joins the running cluster, "
                                                        "'ray://HOST:10001' a remote one (default: a local instance).")] = None,
    allow_overlap: Annotated[bool, typer.Option(
        "--allow-overlap", help="Train shards whose records other shards already read, charging those records "
                                "every run that read them (default: refuse).")] = False,
    init: Annotated[bool, typer.Option(
        "--init", help="Create the workspace if there is none (a new workspace accounts from zero: it knows no run "
                       "or deletion of any other).")] = False,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
) -> None:
    """Train one DP component per shard of a recipe's data, and compose them (mean) into model NAME.

    Budget for every shard is reserved before any training starts. A shard that fails keeps its
    budget spent and leaves the others intact; retry it with --shard K, and the model is composed
    once every shard has a component. Records deleted by an earlier deletion request are left out
    (and the output says how many); records another shard already read are refused unless
    --allow-overlap.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..recipes import load_recipe
    from ..workspace import Workspace, check_name
    from ..workspace.commit import ChangeCommittedError, EarlierChangeWaitingError, pending_components

    name = check_name(name or recipe_path.stem, "model")
    listen_to_workspaces()  # a change a killed command left, finished here or under the lock, is said (review 108)
    ws = Workspace.open(workspace) if (workspace / "workspace.json").exists() else None
    if ws is None and not init:  # a mistyped -w, or another folder: a fresh ledger would know no earlier run
        from ..workspace import WorkspaceError

        raise WorkspaceError(f"no workspace at {workspace}: create one with `dp-tangent init -w {workspace}` or pass "
                             "--init (a new workspace accounts from zero: it knows no run or deletion of any other)")
    runner, count, selected = None, 0, []
    held = contextlib.ExitStack()  # the workspace's lock, from its checks to the composed model

    def checked(schema: Recipe) -> None:
        """Once the recipe's schema holds, before torch loads: the checks that need no torch, then the executor,
        whose local workers import torch while this process checks the backbone, loads the data and plans
        (not while another run holds the workspace: this one would wait for it with idle workers)."""
        nonlocal runner, count, selected
        count = schema.with_overrides(shards=shards, epsilon=epsilon, delta=delta, schema_only=True).shards.count
        selected = sorted(set(only)) if only else list(range(count))
        if only:
            _check_retry(ws, name, selected, count)
        elif ws is not None:
            _check_unused(ws, name, count)
        tasks = max(1, len(selected))
        runner = _executor(executor, workers, address, schema, tasks)
        if executor == "local" and (ws is None or _workspace_free(ws)):
            runner.start(tasks)

    try:
        recipe = load_recipe(recipe_path, schema_checked=checked).with_overrides(
            shards=shards, epsilon=epsilon, delta=delta)
        # torch loads here, after the recipe's schema was checked: a mistake in it is reported at once
        from ..training.progress import precompute_progress  # not ntk_gram: that imports Opacus
        from ..workspace import ShardJob
        from ..workspace.data_sources import decoding_new, read_as_registered

        if ws is not None:  # ids in the form a source registered before they were read as written holds them
            data = read_as_registered(ws, recipe.data_source, recipe.data)
            # and only its new images decoded up front: _register_source refuses a changed one before any training
            recipe = recipe.model_copy(update={"data": decoding_new(ws, recipe.data_source, data)})
        test, parts = recipe.load_data()  # before creating anything: a data set that does not load leaves no trace
        if only and ws is not None:
            _check_same_split(ws, name, parts)
        if recipe.backbone.checkpoint is not None:  # pretrained on a table: on the one registering checks next
            from ..backbones.provenance import check_pretrained_on

            check_pretrained_on(recipe.backbone.checkpoint, getattr(recipe.data.source, "public_path", None))
        ws = ws or Workspace.create(workspace)
        # held to the end: another command between training and composing (a deletion retraining these components,
        # another run, a budget change) left this run's model uncomposed or its figures contradicting (review 107)
        held.enter_context(ws.lock())
        if only:  # checked again under the lock: a run of the same name may have ended while this one waited for it
            _check_retry(ws, name, selected, count)  # (review 108: it trained, then failed to compose)
        else:
            _check_unused(ws, name, count)
        jobs = [ShardJob(_retry_name(ws, name, k), f"shard-{k}", parts[k]) for k in selected]
        # refused before the data and the budget are registered, which a fixed recipe could not undo
        _check_reservations(ws, recipe, jobs, allow_overlap)
        theta0 = _register_source(ws, recipe, jobs)  # checks the public table, if any, against the workspace's records
        spec, console = recipe.backbone.spec(), Console()
        typer.echo(f"theta0: {spec.describe()}")
        console.print(f"{recipe_path}: {spec.name} ({recipe.trainable}), {len(jobs)} of {count} shards "
                      f"({[len(j.records) for j in jobs]} records), epsilon {recipe.privacy.epsilon:g} each, "
                      f"executor {runner.name}; workspace {ws.root}")
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        options = {"--shards": shards, "--epsilon": epsilon, "--delta": delta, "--executor": executor,
                   "--workers": workers, "--address": address}
        retry = ["dp-tangent", "train", str(recipe_path), "--name", name, "-w", str(ws.root),
                 *(item for flag, value in options.items() if value is not None for item in (flag, str(value))),
                 *(["--allow-overlap"] if allow_overlap else [])]
        try:
            # piped to a log: a plain line every tenth, and no bars (rich would print their last state at the end)
            with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
                bars = {job.name: progress.add_task(job.name, total=None) for job in jobs}
                plain = None if console.is_terminal else _tenths(console)

                gram_bar: list = []  # added on the first report: only training in this process reports here

                def grams(done: int, total: int) -> None:
                    if not gram_bar:
                        gram_bar.append(progress.add_task("NTK Grams (precompute)", total=total))
                    progress.update(gram_bar[0], completed=done, total=total)
                    if plain is not None:
                        plain("NTK Grams (precompute)", done, total)

                def steps(job: str, step: int, total: int | None) -> None:
                    progress.update(bars[job], completed=step, total=total)
                    if plain is not None:
                        plain(job, step, total)

                with precompute_progress(grams):
                    run = ws.train_all(spec, recipe.trainable, jobs, data_source=recipe.data_source,
                                       privacy=recipe.privacy_spec(), config=recipe.train_config(), executor=runner,
                                       progress=steps, deleted="exclude", allow_overlap=allow_overlap,
                                       theta0=theta0)
            _outcome(ws, recipe, name, test, run, retry)
        except (KeyboardInterrupt, OSError, ChangeCommittedError, EarlierChangeWaitingError):
            # stopped, or the disk filled: what is left to do, then the cause (review 116: shards trained whose
            # components wait for the next command were said to be missing, or were not named at all)
            waiting = pending_components(ws.root)
            for component in sorted(waiting & {j.name for j in jobs}):
                typer.secho(f"{component}: trained, its component not yet in place: the next command that is not a "
                            "check finishes it", err=True, fg=typer.colors.YELLOW)
            later = {_shard_number(name, c): c for c in waiting if _shard_number(name, c) is not None}
            done = {**_components_by_shard(ws, name), **later}  # (composing waits for the next command to finish)
            missing = _missing_shards(done, count)
            if missing and any(e.component in {j.name for j in jobs} for e in ws.ledger.events()):
                typer.echo(f"to train the shards without a component: {_retry_command(retry, missing)}", err=True)
            elif not missing and name not in ws.list_models():
                typer.echo(f"every shard has a component; compose the model (no training, no budget): "
                           f"{_compose_command(ws, name, done, count)}", err=True)
            raise
    finally:
        if runner is not None:
            runner.close()  # idempotent: train_all closes it when it ran
        held.close()


def _outcome(ws: Workspace, recipe: Recipe, name: str, test: RecordSet | None, run: TrainingRun,
             retry: list[str]) -> None:
    """After training: what each shard left out or reused, then each component's figures, the composed model
    and its accuracy (:func:`_report`); an interruption here still gets the compose command."""
    for job_name, count_deleted in sorted(run.excluded_deleted.items()):
        typer.echo(f"{job_name}: left out {count_deleted} record(s) deleted by an earlier deletion request")
    for job_name, use in sorted(run.gram_cache.items()):
        if use.get("ignored"):
            typer.echo(f"{job_name}: gram cache {use['ignored']}", err=True)
        features = use.get("features")
        if isinstance(features, str) and features != "declined":  # why none were kept: said, not only logged
            typer.echo(f"{job_name}: frozen-prefix features {features}", err=True)
        if use["hits"]:
            also = (f"; frozen-prefix features of {features['hits']}"
                    if isinstance(features, dict) and features.get("hits") else "")
            typer.echo(f"{job_name}: NTK Grams of {use['hits']} record(s) from the workspace's cache, "
                       f"{use['misses']} computed{also}")
    _report(ws, recipe, name, test, run, retry)


def _workspace_free(ws: Workspace) -> bool:
    """Whether no other run holds ``ws`` now (it may take it before this one does: then the workers wait)."""
    from ..workspace.lock import workspace_lock_if_free

    with workspace_lock_if_free(ws.root) as free:
        return free


def _shard_number(name: str, component: str) -> int | None:
    """The shard number of model ``name``'s component ``component`` (None: not one of its)."""
    match = re.compile(_COMPONENT.format(name=re.escape(name))).match(component)
    return int(match.group(1)) if match else None


def _missing_shards(done: dict[int, str], count: int) -> list[int]:
    return [k for k in range(count) if k not in done]


def _retry_command(retry: list[str], missing: list[int]) -> str:
    return shlex.join([*retry, *(item for k in missing for item in ("--shard", str(k)))])


def _compose_command(ws: Workspace, name: str, done: dict[int, str], count: int) -> str:
    """What ``train`` would have run last: the mean of the model's shard components."""
    return shlex.join(["dp-tangent", "compose", *(done[k] for k in range(count)), "--name", name, "-w", str(ws.root)])


def _check_same_split(ws: Workspace, name: str, parts: list[RecordSet]) -> None:
    """A retry must see the very shards the model's other components were trained on."""
    from ..components.manifest import RecordManifest, commit
    from ..workspace import WorkspaceError
    from ..workspace.tombstones import Tombstones

    key = ws.manifest_key()
    tombstones = Tombstones(ws.root).read()
    for k, component in sorted(_components_by_shard(ws, name).items()):
        manifest = ws.load_component(component).metadata.manifest
        kept = [r for r in parts[k].record_ids if commit(r, key) not in tombstones] if k < len(parts) else []
        if k < len(parts) and RecordManifest.build(kept, key).root == manifest.root:
            continue
        requests = sorted({tombstones[c].request_id for c in manifest.commitments if c in tombstones})
        if requests:  # review 80: a deletion stopped before it replaced this component, not a changed recipe
            raise WorkspaceError(f"{component!r} holds records deletion request(s) {', '.join(requests)} removed, "
                                 f"not finished yet: finish them first (`dp-tangent forget -w {ws.root} --request-id "
                                 f"{requests[0]} [--retrain] -- <its record ids>`), then retry")
        raise WorkspaceError(f"shard {k} of this recipe does not hold the records {component!r} was trained on "
                             "(its data, seed or --shards changed); retry with the same recipe and options")


def _report(ws: Workspace, recipe: Recipe, name: str, test: RecordSet | None, run: TrainingRun,
            retry: list[str]) -> None:
    """Print each new component, the failures with how to retry them, and compose the model if complete."""
    from privacy_accounting.figures import fmt_eps

    from ..components.component import RELATION_SIZE_PUBLIC, guarantee_shards, sizes_public
    from ..tangent import linearize
    from ..training.evaluation import accuracy, majority_share
    from ..training.features import precompute_features
    from ..workspace.data_sources import registered_test

    spec = recipe.backbone.spec()
    # the test split as registered (as evaluate measures it), less deleted records, which count in no figure
    test = None if test is None else registered_test(ws, recipe.data_source, test)
    tangent = linearize(spec.build(), recipe.trainable) if test is not None and len(test) else None
    features = precompute_features(tangent, test.inputs) if tangent is not None else None  # a batch at a time

    def with_accuracy(line: str, deltas: dict) -> str:
        if tangent is None:
            return line
        tangent.load_deltas(deltas)
        return line + (f", test accuracy {accuracy(tangent, test, features=features):.1%} on {len(test)} records "
                       f"(most common label: {majority_share(test):.1%})")

    for result in sorted(run.completed, key=lambda r: r.metadata.name):
        component = ws.load_component(result.metadata.name)
        worker = result.metadata.training.worker or {}
        where = f" [{worker.get('executor')} pid {worker.get('pid')} on {worker.get('host')}]" if worker else ""
        epsilon = component.metadata.epsilon
        line = (f"{component.name}: its run's epsilon {fmt_eps(epsilon)}" + _SIZE_PUBLIC * (
                    component.metadata.privacy.neighbouring_relation == RELATION_SIZE_PUBLIC)
                if math.isfinite(epsilon) else f"{component.name}: NON-PRIVATE (epsilon = inf)")
        typer.echo(with_accuracy(line, component.deltas) + where)
        source, shard = component.metadata.data_source, component.metadata.shard
        typer.echo(f"  {source}/{shard}: {shard_state(ws.ledger, source, shard).text()}")
    from ..workspace.commit import has_pending_changes

    waiting = has_pending_changes(ws.root)  # (a later change of this run finishes a waiting component first)
    committed: dict[int, str] = {}  # shards trained whose component the next command finishes (review 115: they
    for failure in sorted(run.failed, key=lambda f: f.name):  # were said to have none, and to be trained again)
        if failure.committed:
            if waiting:
                committed[_shard_number(name, failure.name)] = failure.name
                typer.secho(f"{failure.name} ({failure.shard}) trained, its component not yet in place: "
                            f"{failure.reason}", err=True, fg=typer.colors.YELLOW)
            continue
        typer.secho(f"{failure.name} ({failure.shard}) FAILED: {failure.reason}; its reserved budget stays spent",
                    err=True, fg=typer.colors.RED)
    done = {k: c for k, c in _components_by_shard(ws, name).items() if k not in committed}
    missing = [k for k in _missing_shards(done, recipe.shards.count) if k not in committed]
    if missing:
        raise ShardsMissingError(f"model {name!r} not composed: shard(s) {', '.join(map(str, missing))} have no "
                                 f"component; retry them with: {_retry_command(retry, missing)}")
    if committed:
        compose = _compose_command(ws, name, {**done, **committed}, recipe.shards.count)
        raise ShardsMissingError(f"model {name!r} not composed: the component of shard(s) "
                                 f"{', '.join(map(str, sorted(committed)))} is finished by the next command that is "
                                 "not a check (e.g. `dp-tangent requests list`); then compose the model (no training, "
                                 f"no budget): {compose}")
    components = [done[k] for k in range(recipe.shards.count)]
    ws.compose_model(name, components, method="mean")
    guarantee = ws.ledger.model_guarantee(name)
    public = math.isfinite(guarantee.epsilon) and sizes_public(ws.ledger, guarantee_shards(guarantee))
    typer.echo(with_accuracy(f"model {name}: mean of {len(components)} components, epsilon "
                             f"{fmt_eps(guarantee.epsilon)} per record" + _SIZES_PUBLIC * public,
                             ws.load_model(name)[1]))


def _tenths(console: "Console"):  # noqa: ANN202 -- a progress function
    """A progress function printing a plain line each time a task passes another tenth of its total (for output
    that is not a terminal, where the bars are drawn only when they end)."""
    shown: dict[tuple[str, int], int] = {}

    def report(name: str, done: int, total: int | None) -> None:
        if not total:
            return
        tenth = min(10, done * 10 // total)
        if tenth > shown.get((name, total), 0):  # a new total (the next shard's Grams) starts again
            shown[(name, total)] = tenth
            console.print(f"{name}: {done} of {total} ({tenth * 10}%)", highlight=False)

    return report

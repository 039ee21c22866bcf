"""The demo's one story, told for any task: what differs between tasks is a :class:`DemoTask` value.

A held-out test set, disjoint private shards and a split declared public. One DP component is
trained per private shard (in parallel, on local worker processes), the components are composed,
and a non-private component is trained for reference on the public split only (no private record
goes through a non-private run), labelled NON-PRIVATE. A deletion request for one record is then
served (drop + retrain from the registered source), the release bundle written, the budget report
printed and the audit log verified. :mod:`.demo_run` (images) and :mod:`.demo_text` (text) build
the task.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from privacy_accounting.figures import fmt_eps, fmt_set

from ..backbones import BackboneSpec
from ..data import RecordSet
from ..data.sources import ReloadableSource
from ..io import atomic_write_text, sha256_file
from ..tangent import linearize
from ..training.config import PrivacySpec, TrainConfig
from ..training.evaluation import accuracy
from ..training.executors import Executor
from ..workspace import data_sources
from ..workspace.certificates import certificate_paths_text
from ..workspace.data_sources import PUBLIC_SPLIT
from ..workspace.deletion_requests import DeletionRequest
from ..workspace.forget import forget
from ..workspace.report_context import privacy_report
from ..workspace.store import Workspace
from ..workspace.train import ShardJob
from .demo_configs import DemoError, demo_executor


class StoryConfig(Protocol):
    """The settings every task's demo has."""

    epsilon: float
    delta: float
    trainable: str
    workers: int | None
    executor: str

    @property
    def budget_epsilon(self) -> float: ...

    def train_config(self) -> TrainConfig: ...


_SET_UP = frozenset({"workspace_created", "data_source", "budget_change"})


def _set_up_only(ws: Workspace) -> bool:
    """Whether ``ws`` holds nothing but a set-up (no run, no deletion request: review 108 saw the advice to delete a
    workspace holding a served request's certificate)."""
    return not ws.ledger.events() and {e.operation for e in ws.audit.entries()} <= _SET_UP


@contextlib.contextmanager
def new_workspace(path: Path) -> Iterator[Workspace]:
    """The story's workspace, created here. If the story stops before any budget is reserved (a setting found
    unworkable while loading or planning: an epsilon too small to calibrate, shards smaller than a batch), the
    workspace goes again, so that the corrected command can run: nothing was spent, and nothing but the story's
    own set-up is lost (a folder that existed, empty, is emptied again and kept, as is a link to one)."""
    existed = Path(path).exists()
    if (Path(path) / "workspace.json").is_file() and _set_up_only(Workspace.open(path, read_only=True)):
        raise DemoError(f"{Path(path).absolute()} is a workspace in which nothing was trained (a demo or init stopped "
                        "before training: nothing was spent there); delete it to run the demo there again, or choose "
                        "another -w")
    ws = Workspace.create(path)
    try:
        yield ws
    except BaseException:
        with contextlib.suppress(Exception):  # the story's own error is the one to report
            if not ws.ledger.events():
                for entry in list(ws.root.iterdir()):
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
                if not existed:
                    ws.root.rmdir()
        raise


@dataclass(frozen=True)
class DemoTask:
    """One task's model, data and wording; component ``k`` is ``{prefix}-shard-{k}``."""

    title: str  # the opening rule
    spec: BackboneSpec
    backbone_text: str  # what the backbone is, for the opening lines
    data_text: str  # what the data is, before the split sizes
    source: str  # the data source's name in the workspace
    source_text: str  # what the data source holds, before the shard list
    loader: ReloadableSource  # how the workspace reloads the source
    test: RecordSet
    shards: tuple[RecordSet, ...]
    public: RecordSet
    prefix: str
    model: str  # the composed model
    accuracy_title: str
    report_title: str
    forget_hint: str  # the record id pattern of the closing hint, e.g. "digit-<row>"
    planned_shard_size: int  # N that every DP run is planned for (see planned_shard_size below)
    base_rate_label: str | None = None  # e.g. "always 'ham'": the majority-class row, for skewed labels


def planned_shard_size(published: int, test_fraction: float, shards: int) -> int:
    """N for each shard's run: the expected size of a shard of a dataset whose size is published (the built-in
    datasets'), after the test split, among the shards and the public split. Stated in advance like this, it is not
    a function of whether any one record is in a shard (docs/threat-model.md)."""
    return max(1, round(published * (1 - test_fraction) / (shards + 1)))


class _Steps:
    """A rich progress bar as a ``progress(step, total)`` callback."""

    def __init__(self, progress: Progress, label: str) -> None:
        self.progress, self.task = progress, progress.add_task(label, total=None)

    def __call__(self, step: int, total: int) -> None:
        self.progress.update(self.task, completed=step, total=total)


def _executor(config: StoryConfig, jobs: int, console: Console, started: Executor | None) -> Executor:
    executor = started or demo_executor(config, jobs)
    if config.executor == "local":
        console.print(f"Training the {jobs} components in parallel: {executor.workers} local worker processes, "
                      f"{executor.threads} torch thread(s) each")
    else:
        console.print(f"Training the {jobs} components on the {config.executor} executor")
    return executor


def tell(ws: Workspace, task: DemoTask, config: StoryConfig, console: Console, started: float,
         executor: Executor | None = None) -> dict[str, object]:
    """Run ``task``'s story in the new workspace ``ws`` (the demo began at ``started``, a
    ``time.perf_counter()``); returns the figures it printed (for tests). ``executor``: the components'
    (default: the one ``config`` names), closed once they are trained."""
    shard_names = [f"shard-{k}" for k in range(len(task.shards))]
    console.rule(f"[bold]{task.title}")
    console.print(f"Backbone: {task.backbone_text}; linearized: [bold]{config.trainable}[/] (tangent model around "
                  "the pretrained weights)")
    console.print(f"Data: {task.data_text}; test set {len(task.test)}, {len(task.shards)} disjoint private shards of "
                  f"{[len(s) for s in task.shards]} records, and a split of {len(task.public)} records declared "
                  "public for the non-private reference")
    console.print(f"Privacy: each component ({config.epsilon:g}, {config.delta:g})-DP per record (add/remove one), "
                  f"Poisson sampling, budget {config.budget_epsilon:g} per shard; workspace {ws.root}")
    ws.declare_data_source(task.source, description=f"{task.source_text}: private shards shard-0.."
                                                    f"{len(task.shards) - 1}; split '{PUBLIC_SPLIT}' declared public "
                                                    "(non-private reference only)",
                           shards=shard_names, loader=task.loader, operator="demo")
    for shard in shard_names:
        ws.set_budget(task.source, shard, config.budget_epsilon, config.delta, operator="demo")

    tangent = linearize(task.spec.build(), config.trainable)
    test_features = tangent.features(task.test.inputs)

    def test_accuracy(deltas: dict[str, torch.Tensor]) -> float:
        tangent.load_deltas(deltas)
        return accuracy(tangent, task.test, features=test_features)

    figures: dict[str, object] = {"components": {}}
    jobs = [ShardJob(f"{task.prefix}-shard-{k}", shard, records)
            for k, (shard, records) in enumerate(zip(shard_names, task.shards))]
    names = [job.name for job in jobs]
    reference = f"{task.prefix}-non-private-reference"
    executor = _executor(config, len(jobs), console, executor)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        bars = {job.name: _Steps(progress, f"DP component {job.name}") for job in jobs}
        run = ws.train_all(task.spec, config.trainable, jobs, data_source=task.source,
                           privacy=PrivacySpec(epsilon=config.epsilon, delta=config.delta,
                                               planned_shard_size=task.planned_shard_size),
                           config=config.train_config(), executor=executor, operator="demo",
                           progress=lambda name, step, total: bars[name](step, total))
        if run.failed:
            raise run.failed[0].error or DemoError(f"{run.failed[0].name} failed: {run.failed[0].reason}")
        ws.train(task.spec, config.trainable, task.public, data_source=task.source, shard=PUBLIC_SPLIT,
                 name=reference, privacy=PrivacySpec(epsilon=math.inf), config=config.train_config(),
                 operator="demo", progress=_Steps(progress, "NON-PRIVATE reference (public split only)"))
    ws.compose_model(task.model, names, method="mean", operator="demo")

    table = Table(title=task.accuracy_title)
    for column, justify in (("model", "left"), ("privacy", "left"), ("accuracy", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for name in names:
        component = ws.load_component(name)
        acc = test_accuracy(component.deltas)
        figures["components"][name] = acc  # type: ignore[index]
        table.add_row(name, f"ε={fmt_eps(component.metadata.privacy.epsilon)}, δ={config.delta:g}", f"{acc:.1%}")
    composed_acc = test_accuracy(ws.load_model(task.model)[1])
    guarantee = ws.ledger.model_guarantee(task.model)
    table.add_row(f"[bold]{task.model}[/] (mean of deltas)",
                  f"ε={fmt_eps(guarantee.epsilon)} per record (every run on its records)", f"[bold]{composed_acc:.1%}")
    reference_acc = test_accuracy(ws.load_component(reference).deltas)
    table.add_row(reference, f"[red]NON-PRIVATE (ε=∞)[/], trained on the public split only ({len(task.public)} "
                  "records)", f"{reference_acc:.1%}")
    if task.base_rate_label:
        base_rate = torch.bincount(task.test.targets).max().item() / max(len(task.test), 1)
        table.add_row(task.base_rate_label, "(no model)", f"{base_rate:.1%}")
        figures["majority"] = base_rate
    console.print(table)
    figures.update(composed=composed_acc, reference=reference_acc, composed_epsilon=guarantee.epsilon)

    # A deletion request for one record of shard 1 (or the only shard): drop + retrain.
    record_id = task.shards[1 if len(task.shards) > 1 else 0].record_ids[0]
    request = DeletionRequest(request_id="demo-request-1", record_ids=(record_id,),
                              received_at=datetime.now(timezone.utc))
    console.rule(f"Deletion request demo-request-1: forget {record_id}")
    result = forget(ws, request, retrain=True, shard_records=data_sources.shard_records_for(ws), operator="demo")
    console.print(result.message)
    after_acc = test_accuracy(ws.load_model(task.model)[1])
    verification = result.certificate.verification
    after = ws.ledger.model_guarantee(task.model)
    figures.update(forgotten=record_id, composed_after_deletion=after_acc, certificate=str(result.json_path),
                   removed=[c.name for c in result.certificate.components_removed],
                   deletion_verified=bool(verification and verification.verified),
                   composed_epsilon_after_deletion=after.epsilon)
    console.print(f"{task.model} after the deletion: {after_acc:.1%} test accuracy; ε={fmt_eps(after.epsilon)} per "
                  "record (the removed component's run still counts for the records it read)")
    if verification:
        console.print(f"Verified: {verification.statement}")

    bundle = ws.root.parent / f"{ws.root.name}-release"
    if not bundle.exists() or (bundle.is_dir() and not bundle.is_symlink() and not any(bundle.iterdir())):
        statement = ws.release(task.model, bundle, operator="demo")
        figures["release"] = str(bundle)
        console.print(f"Release bundle (deltas + base reference + privacy statement, no counts or manifests): {bundle}")
        console.print(f"  release.json sha256 {sha256_file(bundle / 'release.json')}: give it to recipients apart "
                      "from the bundle; they check the bundle with `dp-tangent predict BUNDLE INPUTS.npy --expect SHA`")
        console.print(f"  {statement.privacy.statement}")
    else:  # a release never writes over an existing path (it might be another release, or anything else)
        console.print(f"[yellow]Release bundle not written: {bundle} exists already and is not empty; remove it, "
                      "or release with "
                      f"`dp-tangent release {task.model} -o NEW_FOLDER -w {ws.root}`[/]")

    reports = ws.root / "reports"
    report = privacy_report(ws, title=task.report_title, report_dir=reports)
    atomic_write_text(reports / "privacy-report.html", report.to_html())
    atomic_write_text(reports / "privacy-report.md", report.to_markdown())
    atomic_write_text(reports / "privacy-report.json", report.to_json())
    figures["spent"] = _budget_table(ws, task.source, [*shard_names, PUBLIC_SPLIT], config.delta, console)

    check = ws.audit.verify()
    figures["audit_ok"] = check.ok
    console.print(f"Audit log: {check}")
    console.rule("Done")
    console.print(f"HTML privacy report: {reports / 'privacy-report.html'}")
    console.print(certificate_paths_text(result.text_path, result.json_path))
    figures["seconds"] = time.perf_counter() - started
    console.print(f"Try: dp-tangent forget {task.forget_hint} --workspace {ws.root} --retrain   "
                  f"(finished in {figures['seconds']:.0f} s)")
    return figures


def _budget_table(ws: Workspace, source: str, shards: list[str], delta: float, console: Console) -> dict[str, float]:
    """Print spent and limit ε per shard; returns the spent ε."""
    console.rule("Budget report (per shard)")
    table = Table()
    for column in ("shard", "spent ε", "limit ε", "runs"):
        table.add_column(column)
    spent_by = {}
    for shard in shards:
        runs = len(ws.ledger.events(data_source=source, shard=shard))
        limit = ws.ledger.budget(source, shard)
        spent = spent_by[shard] = ws.ledger.shard_spend(source, shard, delta=delta).epsilon
        table.add_row(shard, fmt_eps(spent) if math.isfinite(spent) else "[red]∞ (non-private)",
                      fmt_set(limit.epsilon) if limit else "no budget", str(runs))
    console.print(table)
    return spent_by

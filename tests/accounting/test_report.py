"""Reports: pydantic models, JSON/Markdown/HTML rendering, plain-language statement."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import dp_accounting
import pytest

from privacy_accounting import Ledger, PrivacyReport, build_report, compose_events, dp_sgd_event, epsilon_bounds

DELTA = 1e-5
RUN = dp_sgd_event(1.2, 0.02, 100)
RETRAIN = dp_sgd_event(1.2, 0.02, 60)
COMPONENT_FIELDS = {"component", "shard", "data_source", "epsilon", "delta", "noise_multiplier", "sample_rate",
                    "steps", "accountant", "purpose", "status"}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> tuple[Ledger, PrivacyReport]:
    ledger = Ledger.open(tmp_path_factory.mktemp("report") / "ledger.sqlite")
    ledger.set_data_source(data_source="digits", unit="record", description="handwritten digits")
    ledger.set_budget(data_source="digits", shard=None, epsilon=3.0, delta=DELTA)
    common = dict(data_source="digits", delta=DELTA, operator="alice")
    first = ledger.reserve(shard="shard-0", event=RUN, purpose="training", component="c0", **common)
    ledger.complete(first, details={"sha256": "00" * 32})
    ledger.complete(ledger.reserve(shard="shard-1", event=RUN, purpose="training", component="c1",
                                   checkpoints_released=True, **common))
    ledger.reserve(shard="shard-0", event=RETRAIN, purpose="retraining_after_deletion", component="c0-v2", **common)
    ledger.register_model("ensemble", components=["c0-v2", "c1"])
    ledger.record_audit("c1", 0.4, DELTA, method="canary membership inference", operator="carol")
    ledger.record_audit("c0", 50.0, DELTA, method="deliberately wrong audit")
    ledger.set_data_source(data_source="people", unit="user")
    ledger.reserve(data_source="people", shard="all", event=dp_accounting.NonPrivateDpEvent(), delta=DELTA,
                   purpose="non_private_baseline", operator="bob", component="baseline")
    return ledger, build_report(ledger, curve_points=6)


def test_empty_ledger_gives_a_valid_empty_report(tmp_path: Path) -> None:
    report = build_report(Ledger.open(tmp_path / "empty.sqlite"))
    assert report.components == [] and report.shards == [] and report.models == [] and report.audits == []
    assert "no privacy events" in report.statement
    assert PrivacyReport.model_validate_json(report.to_json()) == report
    assert "No events." in report.to_markdown()
    assert report.to_html().startswith("<!DOCTYPE html>")


def test_json_has_stable_component_fields(scenario: tuple[Ledger, PrivacyReport]) -> None:
    ledger, report = scenario
    data = json.loads(report.to_json())
    assert len(data["components"]) == 4
    for row in data["components"]:
        assert COMPONENT_FIELDS <= set(row)
    c0 = next(r for r in data["components"] if r["component"] == "c0")
    assert (c0["noise_multiplier"], c0["sample_rate"], c0["steps"], c0["purpose"], c0["status"]) == (
        1.2, 0.02, 100, "training", "completed")
    assert c0["epsilon"] == pytest.approx(epsilon_bounds(RUN, DELTA).epsilon) and c0["accountant"] == "pld"
    baseline = next(r for r in data["components"] if r["component"] == "baseline")
    assert baseline["epsilon"] == "Infinity"  # non-private, serialised as a string
    assert PrivacyReport.model_validate_json(report.to_json()) == report


def test_shard_and_model_figures(scenario: tuple[Ledger, PrivacyReport]) -> None:
    ledger, report = scenario
    shard0 = next(s for s in report.shards if s.shard == "shard-0")
    expected = epsilon_bounds(compose_events([RUN, RETRAIN]), DELTA)
    assert shard0.spent.epsilon == pytest.approx(expected.epsilon)
    assert shard0.budget.scope == "data_source" and shard0.budget_status == "within budget"
    assert shard0.remaining_epsilon == pytest.approx(3.0 - expected.epsilon)
    assert shard0.curve[0].steps == 0 and shard0.curve[-1].steps == 160
    assert shard0.curve[-1].epsilon >= expected.pld  # coarse PLD grid: still above the fine bound
    people = next(s for s in report.shards if s.data_source == "people")
    assert people.budget is None and people.budget_status == "no budget set" and math.isinf(people.spent.epsilon)

    (model,) = report.models
    # Per record: shard-0's records were read by c0 (later replaced) and c0-v2, so they carry both runs;
    # shard-1's by c1 alone. The model states the larger, not the sum over shards.
    assert model.epsilon == pytest.approx(expected.epsilon) and model.epsilon < expected.epsilon + eps_run()
    assert model.binding_shard == "shard-0" and model.checkpoints_released
    totals = {s.shard: s.shard_total_epsilon for s in model.shards}
    assert totals["shard-0"] == pytest.approx(expected.epsilon)
    own = {s.shard: (s.epsilon, s.record_epsilon) for s in model.shards}
    assert own["shard-0"][0] == pytest.approx(epsilon_bounds(RETRAIN, DELTA).epsilon)
    assert own["shard-0"][1] == pytest.approx(expected.epsilon)
    assert own["shard-1"] == pytest.approx((eps_run(), eps_run()))


def eps_run() -> float:
    return epsilon_bounds(RUN, DELTA).epsilon


def test_statement_is_plain_and_complete(scenario: tuple[Ledger, PrivacyReport]) -> None:
    _, report = scenario
    text = report.statement
    for needle in ("one record", "adding or removing one record", "Poisson sampling", "parallel composition",
                   "intermediate checkpoints were released for c1", "empirical lower bound, not a guarantee",
                   "EXCEEDS the accounted upper bound", "no budget set", "unit: user"):
        assert needle in text, needle
    audits = {a.component: a for a in report.audits}
    assert audits["c1"].consistent is True and audits["c0"].consistent is False
    assert all(a.label == "empirical lower bound, not a guarantee" for a in report.audits)


def test_markdown_rendering(scenario: tuple[Ledger, PrivacyReport]) -> None:
    _, report = scenario
    markdown = report.to_markdown()
    assert markdown.startswith("# Privacy report")
    for needle in ("## Privacy statement", "| c0 |", "no budget set", "empirical lower bound, not a guarantee",
                   "add-or-remove-one", "infinite (no guarantee)"):
        assert needle in markdown, needle


def test_html_is_self_contained_with_plots(scenario: tuple[Ledger, PrivacyReport]) -> None:
    _, report = scenario
    page = report.to_html()
    assert "<style>" in page and "http://" not in page.replace("http://www.w3.org", "")
    assert not re.search(r'(src|href)="(?!data:)', page)
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "empirical lower bound, not a guarantee" in page and "no budget set" in page


def test_report_escapes_user_text(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "l.sqlite")
    ledger.reserve(data_source="<script>x</script>", shard="s|0", event=RUN, delta=DELTA, purpose="training",
                   operator="o", component="c")
    report = build_report(ledger, curve_points=0)
    assert "<script>x</script>" not in report.to_html()
    assert "s\\|0" in report.to_markdown()
    assert report.shards[0].curve == []

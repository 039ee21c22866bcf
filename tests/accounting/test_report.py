"""Reports: pydantic models, JSON/Markdown/HTML rendering, plain-language statement."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import dp_accounting
import pytest

from privacy_accounting import Ledger, PrivacyReport, build_report, compose_events, dp_sgd_event, epsilon_bounds
from privacy_accounting.figures import fmt_eps

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
                   "ASSUMED, not checked",
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
    for needle in ("## Summary", "### Privacy statement", "| c0 |", "no budget set",
                   "empirical lower bound, not a guarantee",
                   "add-or-remove-one", "infinite (no guarantee)"):
        assert needle in markdown, needle


def test_html_is_self_contained_with_plots(scenario: tuple[Ledger, PrivacyReport]) -> None:
    _, report = scenario
    page = report.to_html()
    assert "<style>" in page and "http://" not in page.replace("http://www.w3.org", "")
    assert not re.search(r'src="(?!data:)', page) and not re.search(r'href="(?!#)', page)  # no external resource
    assert "<script" not in page and "@media print" in page  # usable without JavaScript, printable
    figures = re.findall(r"<figure>(<svg .*?</svg>)<figcaption>", page, re.S)
    assert len(figures) == 2 and "<img" not in page  # drawn inline, as vector graphics
    assert [ET.fromstring(f).get("role") for f in figures] == ["img", "img"]  # well-formed XML, named for readers
    assert "empirical lower bound, not a guarantee" in page and "no budget set" in page


def test_report_escapes_user_text(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "l.sqlite")
    ledger.reserve(data_source="<script>x</script>", shard="s|0", event=RUN, delta=DELTA, purpose="training",
                   operator="o", component="c")
    report = build_report(ledger, curve_points=0)
    assert "<script>x</script>" not in report.to_html()
    assert "s\\|0" in report.to_markdown()
    assert report.shards[0].curve == []


def test_headline_is_plain_with_a_verdict(scenario: tuple[Ledger, PrivacyReport]) -> None:
    _, report = scenario
    (model,) = report.models
    (head,) = report.headlines
    assert head.model == "ensemble" and head.unit == "record" and head.verdict == "within budget"
    assert head.sentence == (f"Every record used to train model 'ensemble' is protected by differential privacy at "
                             f"ε = {fmt_eps(model.epsilon)} and δ = 0.00001.")
    assert head.odds_factor == pytest.approx(math.exp(float(fmt_eps(model.epsilon))))  # of the epsilon printed
    assert "e^ε ≈" in head.meaning and "k·ε" in head.meaning
    assert head.strength == ("strong" if model.epsilon <= 1 else "reasonable")
    assert head.verdict_text.startswith("WITHIN BUDGET") and "of 3 (" in head.verdict_text
    assert not any(word in head.sentence + head.meaning for word in ("PLD", "RDP", "sigma", "Poisson", "q ="))
    # The run without a guarantee is named as what it is, first screen and audit section alike.
    (run,) = report.non_private
    assert run.component == "baseline" and run.text.startswith("NOT DIFFERENTIALLY PRIVATE")
    assert run.declared_public is None  # the ledger alone cannot know
    page, markdown = report.to_html(), report.to_markdown()
    summary = page[page.index('id="summary"'):page.index('id="data"')]
    assert "NOT DIFFERENTIALLY PRIVATE" in summary and "PLD" not in summary and "RDP" not in summary
    assert markdown.index("## Summary") < markdown.index("## Data") < markdown.index("## Deletion requests") \
        < markdown.index("## Audit log") < markdown.index("## For specialists")
    assert "Not part of this report" in markdown and "Not part of this report" in page


def test_verdicts_against_the_budget(ledger: Ledger) -> None:
    ledger.set_data_source("d", description="survey answers")
    for shard, budget in (("a", 0.5), ("b", None)):
        if budget is not None:
            ledger.set_budget("d", shard, 50.0, DELTA)
        ledger.reserve(data_source="d", shard=shard, event=RUN, delta=DELTA, purpose="training", operator="o",
                       component=f"c-{shard}")
    ledger.set_budget("d", "a", 0.5, DELTA)  # lowered below what was spent: the report says exceeded
    ledger.register_model("over", ["c-a"])
    ledger.register_model("unlimited", ["c-b"])
    heads = {h.model: h for h in build_report(ledger, curve_points=0).headlines}
    assert heads["over"].verdict == "over budget" and "d/a has spent" in heads["over"].verdict_text
    assert heads["unlimited"].verdict == "no budget set" and "NO BUDGET SET for d/b" in heads["unlimited"].verdict_text


def _records(prefix: str, n: int) -> frozenset[str]:
    return frozenset(f"{prefix}{i}" for i in range(n))


def test_a_whole_shards_records_shared_with_another_shard_are_in_its_per_record_table(ledger: Ledger) -> None:
    """Review 70: where a shard's runs named no records, the per-record table showed the shard as one group charged
    its own runs, below the shard's own figure for the records its named runs shared with another shard, and called
    the shards' disjointness unchecked though the ledger recorded the overlap."""
    from privacy_accounting import ReservationRequest

    heavy = dp_sgd_event(0.8, 0.05, 400)
    common = dict(data_source="d", delta=DELTA, operator="o", purpose="training")
    ledger.reserve_all([ReservationRequest(shard="a", event=RUN, component="a-named", records=_records("r", 10),
                                           **common),
                        ReservationRequest(shard="b", event=RUN, component="b-named",
                                           records=frozenset(f"r{i}" for i in range(5, 15)), **common),
                        ReservationRequest(shard="a", event=heavy, component="a-whole", **common),
                        ReservationRequest(shard="b", event=heavy, component="b-whole", **common)],
                       allow_overlap=True)
    ledger.register_model("m", ["a-named", "a-whole"])
    report = build_report(ledger, curve_points=0)
    spent = ledger.shard_spend("d", "a", DELTA).epsilon
    assert spent == pytest.approx(epsilon_bounds(compose_events([RUN, RUN, heavy, heavy]), DELTA).epsilon)
    for groups in (report.record_guarantees[0].groups, report.models[0].record_distribution):
        assert max(g.epsilon for g in groups) == pytest.approx(spent)
        assert [(g.records, g.shards) for g in groups if g.records] == [(5, ["a", "b"])]
    assert report.record_guarantees[0].disjointness == "unchecked"  # the overlap found is stated with it
    from privacy_accounting.report_tables import distribution_table

    rows = distribution_table(report.record_guarantees[0].groups)[1]  # the shard's row covers the rest (review 72)
    assert {r[0] for r in rows} == {"other records (runs named no records)", "5"}
    assert ("ASSUMED, not checked" in report.record_guarantees[0].text
            and "the ledger found 5 record(s) of 'd' on a and b read by runs on more than one shard"
            in report.record_guarantees[0].text)


def test_a_models_per_record_table_lists_records_of_several_sources_once(ledger: Ledger) -> None:
    """Review 71: a record key is one record whatever the data source, but a model drawing on two sources listed the
    records they share once per source (counted twice), and a group read by a whole-shard run of a model's component
    was shown as in no model."""
    from privacy_accounting import ReservationRequest

    def run(source: str, shard: str, component: str, records: frozenset[str] = frozenset()) -> ReservationRequest:
        return ReservationRequest(data_source=source, shard=shard, event=RUN, delta=DELTA, operator="o",
                                  purpose="training", component=component, records=records)

    ledger.reserve_all([run("d1", "a", "a-named", _records("r", 10)),
                        run("d2", "x", "x-named", frozenset(f"r{i}" for i in range(5, 15))),
                        run("d3", "p", "p-named", _records("s", 10)), run("d4", "q", "q-named", _records("s", 10)),
                        run("d4", "q", "q-whole")], allow_overlap=True)
    ledger.register_model("m", ["a-named", "x-named"])
    ledger.register_model("w", ["q-whole"])
    report = build_report(ledger, curve_points=0)
    model = next(m for m in report.models if m.model == "m")
    assert sum(g.records or 0 for g in model.record_distribution) == 15
    assert [(o.records, o.shards) for o in model.overlaps] == [(5, ["d1/a", "d2/x"])]
    source = next(g for g in report.record_guarantees if g.data_source == "d3")
    assert [(g.records, g.in_a_model) for g in source.groups] == [(10, True)]  # q-whole read them, and w holds it


def test_a_non_private_run_on_a_model_of_several_sources_records_names_the_model(ledger: Ledger) -> None:
    """Review 72: a model of several data sources labels its shards in full, and the non-private run's text, which
    matched bare shard names, said it was part of no model."""
    from privacy_accounting import ReservationRequest

    def run(source: str, shard: str, component: str, records: frozenset[str], event=RUN) -> ReservationRequest:
        return ReservationRequest(data_source=source, shard=shard, event=event, delta=DELTA, operator="o",
                                  purpose="training", component=component, records=records)

    ledger.reserve_all([run("d1", "a", "a-named", _records("r", 10)), run("d2", "x", "x-named", _records("s", 10)),
                        run("d1", "b", "leak", frozenset({"r5", "r6", "r7"}), dp_accounting.NonPrivateDpEvent())],
                       allow_overlap=True)
    ledger.register_model("m", ["a-named", "x-named"])
    (leak,) = build_report(ledger, curve_points=0).non_private
    assert leak.affects == ["m"] and "model(s) 'm' were trained on" in leak.text


def test_overlapping_shards_are_stated_never_called_disjoint(ledger: Ledger) -> None:
    """The old demo's bug: a non-private reference read every record, yet the statement said disjoint."""
    from privacy_accounting import ReservationRequest

    common = dict(data_source="d", delta=DELTA, operator="o")
    ledger.reserve_all([ReservationRequest(shard="s0", event=RUN, purpose="training", component="c0",
                                           records=_records("a", 30), **common),
                        ReservationRequest(shard="s1", event=RUN, purpose="training", component="c1",
                                           records=_records("b", 20), **common)])
    ledger.register_model("m", ["c0", "c1"])
    checked = build_report(ledger, curve_points=0)
    assert "hold disjoint records: the ledger checked every record" in checked.models[0].statement
    assert [(g.records, g.shards) for g in checked.models[0].record_distribution] == [(50, ["s0", "s1"])]
    assert checked.record_guarantees[0].disjointness == "checked"

    ledger.reserve_all([ReservationRequest(shard="all", event=dp_accounting.NonPrivateDpEvent(),
                                           purpose="non_private_baseline", component="reference",
                                           records=_records("a", 30) | _records("b", 5), **common)],
                       allow_overlap=True)
    report = build_report(ledger, curve_points=0)
    (model,) = report.models
    assert "disjoint records" not in model.statement.replace("NOT disjoint", "")
    assert "The shards are NOT disjoint: 30 record(s) of 'd' on all and s0; 5 record(s) of 'd' on all and s1" \
        in model.statement
    assert {(o.records, tuple(o.shards)) for o in model.overlaps} == {(30, ("all", "s0")), (5, ("all", "s1"))}
    (head,) = report.headlines
    assert head.verdict == "not differentially private" and math.isinf(head.epsilon) and head.odds_factor is None
    assert "NOT DIFFERENTIALLY PRIVATE" in head.sentence
    groups = {(g.records, tuple(g.shards)): g.epsilon for g in model.record_distribution}
    assert groups[(15, ("s1",))] == pytest.approx(eps_run()) and math.isinf(groups[(35, ("all", "s0", "s1"))])
    (run,) = report.non_private
    assert "also read by runs on s0 (30 record(s)), s1 (5 record(s))" in run.text
    assert run.affects == ["m"] and run.models == [] and "model(s) 'm' were trained on" in run.text
    assert report.record_guarantees[0].disjointness == "overlap"


def test_plots_draw_every_legend_entry(scenario: tuple[Ledger, PrivacyReport]) -> None:
    from privacy_accounting.plots import drawable_curves, epsilon_curve_svg

    _, report = scenario
    curves = drawable_curves(report.shards)
    labels = [label for names, _, _, _ in curves for label in names]
    assert "all" not in labels  # the non-private shard has no finite point to draw: left out, not listed
    assert all(len(points) > 1 for _, points, _, _ in curves)
    same = [s for s in report.shards if s.curve and s.shard != "all"]
    twin = same[0].model_copy(update={"shard": "twin"})
    merged = drawable_curves([same[0], twin])
    assert len(merged) == 1 and merged[0][0] == [same[0].shard, "twin"]  # identical curves: one line, one entry
    only_private = [s for s in report.shards if s.data_source == "people"]
    assert epsilon_curve_svg(only_private) is None


def test_user_level_headline_names_users(ledger: Ledger) -> None:
    ledger.set_data_source("people", unit="user", description="one row per message, grouped by sender")
    ledger.set_budget("people", None, 10.0, DELTA)
    ledger.reserve(data_source="people", shard="all", event=RUN, delta=DELTA, purpose="training", operator="o",
                   component="c")
    ledger.register_model("m{0}", ["c"])  # braces in a name are text, not a template
    (head,) = build_report(ledger, curve_points=0).headlines
    assert head.sentence.startswith("Every user whose records were used to train model 'm{0}' (all of a user's "
                                    "records together) is protected")
    assert "all the records of any one user" in head.meaning and "k·ε" not in head.meaning


def test_a_shard_is_size_public_where_a_run_on_records_it_shares_was_so_whatever_its_names(tmp_path: Path) -> None:
    """Review 96: a shard's size-public mark followed its own runs only, while its figure composes the runs of other
    shards on records it shares; names may hold a slash (this package checks no more than one line)."""
    from privacy_accounting import ReservationRequest

    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    records = frozenset(f"r{i}" for i in range(20))
    for source, shard, planned in (("planned/one", "s/0", 20), ("other", "s0", None)):
        ledger.set_data_source(data_source=source, unit="record")
        ledger.reserve_all([ReservationRequest(data_source=source, shard=shard, event=RUN, delta=DELTA,
                                               purpose="training", operator="alice", component=f"c-{source}",
                                               records=records, details={"planned_shard_size": planned})],
                           allow_overlap=True)
    report = build_report(ledger, curve_points=0,
                          size_public=lambda e: e.details.get("planned_shard_size") is None)
    assert {(s.data_source, s.size_public) for s in report.shards} == {("planned/one", True), ("other", True)}


def test_an_epsilon_is_printed_rounded_up_and_what_is_left_rounded_down_to_the_same_places() -> None:
    """Review 104: the report printed 10.684512 as 10.68 (an upper bound shown lower than it is), "leaving 5.315" of
    16 beside it, and budget show 10.7 and 5.32."""
    from privacy_accounting.figures import fmt_eps, fmt_remaining, significant

    spent = 10.684512069303423
    assert fmt_eps(spent) == "10.69" and fmt_remaining(16, fmt_eps(spent)) == "5.31"
    for value, limit in ((spent, 16.0), (7.99961, 16.0), (0.123456, 3.0), (3.3, 10.0), (2.0, 2.5)):
        shown, left = fmt_eps(value), fmt_remaining(limit, fmt_eps(value))
        assert float(shown) >= value and float(left) <= limit - value  # never a bound stronger than computed
        assert abs(float(shown) + float(left) - limit) < 1e-9, (shown, left, limit)  # and they add up
    assert fmt_eps(8.0) == "8" and fmt_eps(16.0) == "16" and fmt_eps(float("inf")) == "infinite (no guarantee)"
    assert significant(0.41234, 3, up=False) == "0.412" and significant(0.41234, 3, up=True) == "0.413"


def test_a_limit_is_printed_as_set_and_the_odds_factor_rounded_up() -> None:
    """Review 105: rounding every figure up also rounded the limits a user set (6.2 read 6.201, so that "5.865 of
    6.201, leaving 0.335" no longer added up), and the odds factor e^epsilon was rounded to nearest."""
    from privacy_accounting.report_models import ModelEntry
    from privacy_accounting.statement import fmt_factor, verdict

    from .shard_entries import shard_entry

    shard = shard_entry("s0", 5.86471, 6.2)
    shard = shard.model_copy(update={"remaining_epsilon": 6.2 - 5.86471})
    model = ModelEntry(model="m", components=["c0"], delta=1e-5, epsilon=5.86471, accountant="pld",
                       binding_data_source="visits", binding_shard="s0", units=["record"], checkpoints_released=False,
                       shards=[{"data_source": "visits", "shard": "s0", "components": ["c0"], "epsilon": 5.86471,
                                "accountant": "pld", "shard_total_epsilon": 5.86471, "shard_total_accountant": "pld",
                                "n_model_events": 1, "n_shard_events": 1, "record_epsilon": 5.86471,
                                "record_accountant": "pld"}],
                       statement="")
    kind, text = verdict(model, [shard])
    assert kind == "within budget" and "ε = 5.865 of 6.2 (95%), leaving 0.335 " in text, text
    assert fmt_factor(352.4) == "353" and fmt_factor(5.861) == "5.87" and fmt_factor(139_412.0) == "140,000"
    assert fmt_factor(20.32) == "20.4"  # review 110: between 10 and 100 it read 20


def test_a_figure_a_person_set_is_printed_exactly_as_held() -> None:
    """Review 108: a budget of 12.344449 at delta 1.234564e-05 read 12.3444 and 1.23456e-05 (budget set, budget show,
    the release statement: a bound stronger than the one enforced), and the report's delta 1.23e-05."""
    from privacy_accounting.figures import fmt_set
    from privacy_accounting.statement import fmt_delta

    assert [fmt_set(x) for x in (12.344449, 16.0, 1.234564e-05, 1e-05, 0.1)] == [
        "12.344449", "16", "1.234564e-05", "1e-05", "0.1"]
    assert fmt_delta(1.234564e-05) == "0.00001234564" and fmt_delta(1e-05) == "0.00001" and fmt_delta(1e-9) == "1e-09"


def test_only_bounds_are_rounded_in_the_tables_each_its_own_way() -> None:
    """Review 110: every float of the report's tables was rounded up, a noise multiplier too (1.762 beside
    sigma=1.76114: more noise shown than added) and an audit's lower bound (1.235 in the table, >= 1.234 in the
    text)."""
    from types import SimpleNamespace

    from privacy_accounting.render_html import _cell as html_cell
    from privacy_accounting.render_markdown import _cell as md_cell
    from privacy_accounting.report_tables import audits_table

    assert md_cell(1.76114) == "1.761" and html_cell(1.76114) == "1.761"  # to nearest: not a bound
    audit = SimpleNamespace(component="c0", epsilon_lower_bound=1.23456, delta=1e-5, method="canaries",
                            accounted_epsilon=3.98021, consistent=True, label="lower bound")
    [row] = audits_table(SimpleNamespace(audits=[audit]))[1]
    assert row[1] == "1.234" and row[4] == "3.981" and row[2] == "1e-05"  # a lower bound down, an upper bound up

"""Markdown rendering of a :class:`PrivacyReport`: the same sections, words and tables as the HTML page
(summary, data, deletion requests, audit log, for specialists), without the plots."""

from __future__ import annotations

from typing import Iterable, Sequence

from privacy_accounting.renderers import register_renderer
from privacy_accounting.report_models import AUDIT_LABEL, Headline, PrivacyReport
from privacy_accounting.report_tables import (
    NO_WORKSPACE,
    RECORD_COUNTS,
    STRENGTH_WORDS,
    SECTIONS,
    Flag,
    Link,
    audit_facts,
    audits_table,
    components_table,
    data_shards_table,
    deletions_table,
    distribution_table,
    fmt_time,
    legal_bases,
    models_table,
    non_private_table,
    RELEASES_NOTE,
    releases_table,
    shards_table,
    source_facts,
    status_lines,
)
from privacy_accounting.statement import fmt_delta


def _text(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def _cell(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, Flag):
        return f"**{_text(value.text)}**"
    if isinstance(value, Link):
        return f"[{_text(value.text)}]({value.href.replace(' ', '%20').replace(')', '%29')})"
    if isinstance(value, float):
        return f"{value:.4g}"
    return _text(str(value))


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _facts(pairs: Sequence[tuple[str, object]]) -> list[str]:
    return [f"- **{label}:** {_cell(value)}" for label, value in pairs]


def _card(h: Headline) -> list[str]:
    grade = f" · {STRENGTH_WORDS[h.strength].upper()}" if h.strength in STRENGTH_WORDS else ""
    out = [f"### Model {h.model} — {h.verdict.upper()}{grade}", "", f"**{h.sentence}**", ""]
    for text in (h.meaning, h.records_differ, h.scale, h.verdict_text):
        if text:
            out += [text, ""]
    return out


def _summary(report: PrivacyReport) -> list[str]:
    out = [f"## {SECTIONS[0][1]}", ""]
    for h in report.headlines:
        out += _card(h)
    if not report.headlines:
        out += ["No composed model is registered in the ledger; the per-record guarantees of each data source are "
                "under Data." if report.components else report.statement, ""]
    for run in report.non_private:
        out += [f"> **{run.text}**", ""]
    out += [f"- {_cell(line)}" for line in status_lines(report)]
    return out + [""]


def _data(report: PrivacyReport) -> list[str]:
    out = [f"## {SECTIONS[1][1]}", ""]
    if not report.data_sources:
        out += ["No data source is declared.", ""]
    for source in report.data_sources:
        out += [f"### Data source {source.data_source}", ""] + _facts(source_facts(report, source)) + [""]
        out += [table(*data_shards_table(report, source.data_source)), ""]
        guarantees = next((g for g in report.record_guarantees if g.data_source == source.data_source), None)
        if guarantees is not None and guarantees.groups:
            out += [f"#### Per-record guarantee (at δ = {fmt_delta(guarantees.delta)})", "",
                    table(*distribution_table(guarantees.groups)), ""]
        if guarantees is not None:
            out += [guarantees.text, ""]
    if report.workspace is None:
        out += ["Record counts per shard: " + NO_WORKSPACE[0].lower() + NO_WORKSPACE[1:], ""]
    else:
        out += [RECORD_COUNTS, ""]
    return out


def _deletions(report: PrivacyReport) -> list[str]:
    out = [f"## {SECTIONS[2][1]}", ""]
    if report.workspace is None:
        return out + [NO_WORKSPACE, ""]
    if not report.workspace.deletions:
        out += ["No deletion request has been received.", ""]
    else:
        out += [table(*deletions_table(report)), ""]
        out += [f"- {b}" for b in legal_bases(report)]
        out += ["- Deadlines are the last day, in UTC, without the extensions both regimes allow; bookkeeping, "
                "not legal advice.", ""]
    out += ["### Releases (what left the workspace)", ""]
    if not report.workspace.releases:
        return out + ["No model has been released.", ""]
    return out + [table(*releases_table(report)), "", RELEASES_NOTE, ""]


def _audit(report: PrivacyReport) -> list[str]:
    out = [f"## {SECTIONS[3][1]}", ""]
    if report.workspace is None or report.workspace.audit is None:
        out += [NO_WORKSPACE, ""]
    else:
        out += _facts(audit_facts(report)) + [""]
        if report.workspace.audit.problems:
            out += ["### Problems found", ""] + [f"- **{_text(p)}**" for p in report.workspace.audit.problems] + [""]
    out += ["### Runs without a differential-privacy guarantee", ""]
    out += [table(*non_private_table(report)) if report.non_private
            else "None: every run in the ledger was differentially private.", ""]
    return out


def _specialists(report: PrivacyReport) -> list[str]:
    out = [f"## {SECTIONS[4][1]}", "", f"Neighbouring relation: {report.neighbouring_relation}. {report.accountants}",
           "", "### Privacy statement", "", report.statement, ""]
    if report.models:
        out += ["### Models (per-record guarantee)", "", table(*models_table(report)), ""]
    out += ["### Shards (total spend)", "", table(*shards_table(report)) if report.shards else "No shards.", ""]
    out += ["### Components (one row per ledger event)", "",
            table(*components_table(report)) if report.components else "No events.", ""]
    out += [f"### Empirical audits ({AUDIT_LABEL})", "",
            table(*audits_table(report)) if report.audits else "No audit recorded.", ""]
    return out + ["### Assumptions", ""] + [f"- {note}" for note in report.notes]


@register_renderer("markdown")
def render_markdown(report: PrivacyReport) -> str:
    """The report as Markdown, section for section as the HTML page."""
    where = f" · workspace `{report.workspace.workspace}`" if report.workspace else ""
    generated = fmt_time(report.generated_at) or report.generated_at
    out = [f"# {report.title}", "", f"Generated {generated} from ledger `{report.ledger}`{where}.", ""]
    if report.notice:
        out += [f"> {report.notice}", ""]
    for section in (_summary, _data, _deletions, _audit, _specialists):
        out += section(report)
    return "\n".join(out) + "\n"

"""Markdown rendering of a :class:`PrivacyReport`."""

from __future__ import annotations

from typing import Iterable, Sequence

from privacy_accounting.renderers import register_renderer
from privacy_accounting.report_models import AUDIT_LABEL, PrivacyReport
from privacy_accounting.report_tables import audits_table, components_table, models_table, shards_table
from privacy_accounting.statement import fmt_eps


def _cell(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return fmt_eps(value) if value != 0 else "0"
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


@register_renderer("markdown")
def render_markdown(report: PrivacyReport) -> str:
    """The report as Markdown: statement, models, shards, components, audits, notes."""
    out = [
        f"# {report.title}",
        "",
        f"Generated {report.generated_at} from ledger `{report.ledger}`. "
        f"Neighbouring relation: {report.neighbouring_relation}.",
        "",
        "## Privacy statement",
        "",
        report.statement,
        "",
        report.accountants,
        "",
    ]
    if report.models:
        out += ["## Models (per-record guarantee)", ""]
        out.append(table(*models_table(report)))
        out.append("")
    out += ["## Shards (total spend)", ""]
    if report.shards:
        out.append(table(*shards_table(report)))
    else:
        out.append("No shards.")
    out += ["", "## Components (one row per ledger event)", ""]
    if report.components:
        out.append(table(*components_table(report)))
    else:
        out.append("No events.")
    out += ["", f"## Empirical audits ({AUDIT_LABEL})", ""]
    if report.audits:
        out.append(table(*audits_table(report)))
    else:
        out.append("No audit recorded.")
    out += ["", "## Assumptions", ""] + [f"- {note}" for note in report.notes]
    return "\n".join(out) + "\n"


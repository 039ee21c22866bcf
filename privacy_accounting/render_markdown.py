"""Markdown rendering of a :class:`PrivacyReport`."""

from __future__ import annotations

from typing import Iterable, Sequence

from privacy_accounting.report_models import AUDIT_LABEL, PrivacyReport
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
        out.append(table(
            ["model", "components", "epsilon", "delta", "accountant", "binding shard", "unit"],
            [(m.model, ", ".join(m.components), m.epsilon, _delta(m.delta), m.accountant,
              f"{m.binding_data_source}/{m.binding_shard}" if m.binding_shard else None, ", ".join(m.units))
             for m in report.models],
        ))
        out.append("")
    out += ["## Shards (total spend)", ""]
    if report.shards:
        out.append(table(
            ["data source", "shard", "unit", "spent epsilon", "delta", "accountant", "RDP", "PRV", "PLD",
             "budget", "remaining", "status", "events"],
            [(s.data_source, s.shard, s.unit, s.spent.epsilon, _delta(s.spent.delta), s.spent.accountant,
              s.spent.rdp, s.spent.prv, s.spent.pld,
              f"{s.budget.epsilon:.4g} ({s.budget.scope})" if s.budget else "no budget set",
              s.remaining_epsilon, s.budget_status, s.n_events) for s in report.shards],
        ))
    else:
        out.append("No shards.")
    out += ["", "## Components (one row per ledger event)", ""]
    if report.components:
        out.append(table(
            ["component", "data source", "shard", "purpose", "status", "epsilon", "delta", "accountant",
             "noise multiplier", "sample rate", "steps", "checkpoints released"],
            [(c.component, c.data_source, c.shard, c.purpose, c.status, c.epsilon, _delta(c.delta), c.accountant,
              c.noise_multiplier, c.sample_rate, c.steps, "yes" if c.checkpoints_released else "no")
             for c in report.components],
        ))
    else:
        out.append("No events.")
    out += ["", f"## Empirical audits ({AUDIT_LABEL})", ""]
    if report.audits:
        out.append(table(
            ["component", "epsilon lower bound", "delta", "method", "accounted upper bound", "consistent", "label"],
            [(a.component, a.epsilon_lower_bound, _delta(a.delta), a.method, a.accounted_epsilon,
              {True: "yes", False: "NO", None: None}[a.consistent], a.label) for a in report.audits],
        ))
    else:
        out.append("No audit recorded.")
    out += ["", "## Assumptions", ""] + [f"- {note}" for note in report.notes]
    return "\n".join(out) + "\n"


def _delta(value: float | None) -> str | None:
    return None if value is None else f"{value:.3g}"

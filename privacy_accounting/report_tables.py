"""The report's tables as (headers, rows), shared by the Markdown and HTML renderers so that both
always show the same columns; each renderer only formats cells."""

from __future__ import annotations

from privacy_accounting.report_models import PrivacyReport

Table = tuple[list[str], list[tuple[object, ...]]]


def _delta(value: float | None) -> str | None:
    return None if value is None else f"{value:.3g}"


def models_table(report: PrivacyReport) -> Table:
    return (["model", "components", "epsilon", "delta", "accountant", "binding shard", "unit"],
            [(m.model, ", ".join(m.components), m.epsilon, _delta(m.delta), m.accountant,
              f"{m.binding_data_source}/{m.binding_shard}" if m.binding_shard else None, ", ".join(m.units))
             for m in report.models])


def shards_table(report: PrivacyReport) -> Table:
    return (["data source", "shard", "unit", "spent epsilon", "delta", "accountant", "RDP", "PRV", "PLD",
             "budget", "remaining", "status", "events"],
            [(s.data_source, s.shard, s.unit, s.spent.epsilon, _delta(s.spent.delta), s.spent.accountant,
              s.spent.rdp, s.spent.prv, s.spent.pld,
              f"{s.budget.epsilon:.4g} ({s.budget.scope})" if s.budget else "no budget set",
              s.remaining_epsilon, s.budget_status, s.n_events) for s in report.shards])


def components_table(report: PrivacyReport) -> Table:
    return (["component", "data source", "shard", "purpose", "status", "epsilon", "delta", "accountant",
             "noise multiplier", "sample rate", "steps", "mechanism", "checkpoints released", "failure"],
            [(c.component, c.data_source, c.shard, c.purpose, c.status, c.epsilon, _delta(c.delta), c.accountant,
              c.noise_multiplier, c.sample_rate, c.steps, c.mechanism, "yes" if c.checkpoints_released else "no",
              c.failure_reason) for c in report.components])


def audits_table(report: PrivacyReport) -> Table:
    return (["component", "epsilon lower bound", "delta", "method", "accounted upper bound", "consistent", "label"],
            [(a.component, a.epsilon_lower_bound, _delta(a.delta), a.method, a.accounted_epsilon,
              {True: "yes", False: "NO", None: None}[a.consistent], a.label) for a in report.audits])

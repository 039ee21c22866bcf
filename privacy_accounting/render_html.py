"""Self-contained HTML rendering of a :class:`PrivacyReport` (inline CSS, base64 PNG plots)."""

from __future__ import annotations

import base64
import html
from typing import Iterable, Sequence

from privacy_accounting.plots import budget_bars_png, epsilon_curve_png
from privacy_accounting.renderers import register_renderer
from privacy_accounting.report_models import AUDIT_LABEL, PrivacyReport
from privacy_accounting.report_tables import audits_table, components_table, models_table, shards_table
from privacy_accounting.statement import fmt_eps

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 72rem;
       color: #1b1b1b; line-height: 1.45; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.statement { background: #f6f8fa; border-left: 4px solid #1565c0; padding: 0.75rem 1rem; }
.muted { color: #555; font-size: 0.85rem; }
.exceeded { color: #b71c1c; font-weight: 600; } .label { font-style: italic; color: #6a1b9a; }
img { max-width: 100%; }
"""


def _esc(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return html.escape(fmt_eps(value) if value != 0 else "0")
    return html.escape(str(value))


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'



@register_renderer("html")
def render_html(report: PrivacyReport) -> str:
    """One HTML page, no external resources."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(report.title)}</h1>",
        f'<p class="muted">Generated {html.escape(report.generated_at)} from ledger '
        f"<code>{html.escape(report.ledger)}</code>. Neighbouring relation: "
        f"{html.escape(report.neighbouring_relation)}.</p>",
        "<h2>Privacy statement</h2>",
        '<div class="statement">'
        + "".join(f"<p>{html.escape(p)}</p>" for p in report.statement.split("\n\n"))
        + "</div>",
        f'<p class="muted">{html.escape(report.accountants)}</p>',
    ]
    if report.models:
        parts.append("<h2>Models (per-record guarantee)</h2>")
        parts.append(_table(*models_table(report)))
    parts.append("<h2>Shards (total spend)</h2>")
    if report.shards:
        parts.append(_img(budget_bars_png(report.shards), "spent and remaining budget per shard"))
        parts.append(_img(epsilon_curve_png(report.shards), "epsilon against steps per shard"))
        curve_names = sorted({s.curve_accountant for s in report.shards if s.curve_accountant})
        if curve_names:
            parts.append(f'<p class="muted">Curves: {html.escape("; ".join(curve_names))}; '
                         "the tables give the reported (tightest) figures.</p>")
        table_html = _table(*shards_table(report))
        parts.append(table_html.replace("<td>exceeded</td>", '<td class="exceeded">exceeded</td>'))
    else:
        parts.append("<p>No shards.</p>")
    parts.append("<h2>Components (one row per ledger event)</h2>")
    if report.components:
        parts.append(_table(*components_table(report)))
    else:
        parts.append("<p>No events.</p>")
    parts.append(f'<h2>Empirical audits <span class="label">({html.escape(AUDIT_LABEL)})</span></h2>')
    if report.audits:
        parts.append(_table(*audits_table(report)))
    else:
        parts.append("<p>No audit recorded.</p>")
    parts.append("<h2>Assumptions</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)

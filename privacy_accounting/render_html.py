"""Self-contained HTML rendering of a :class:`PrivacyReport` (inline CSS, inline SVG figures, no script).

Layout: the summary first (one card per model, runs without a guarantee, deletions and audit in
a line each), then Data, Deletion requests, Audit log, and the figures for specialists. The page
fits a 1280-px window (wide tables scroll inside their own box), prints on A4 (``@media print``:
no navigation, tables wrap, every section shown), and needs no JavaScript.
"""

from __future__ import annotations

import html
import math
from typing import Iterable, Sequence

from privacy_accounting.plots import budget_bars_svg, epsilon_curve_svg
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

_CSS = """
*, *::before, *::after { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 72rem;
       color: #1b1b1b; line-height: 1.5; padding: 1rem 1.5rem 3rem; overflow-wrap: break-word; }
h1 { font-size: 1.6rem; margin: 0.5rem 0 0.25rem; }
h2 { font-size: 1.3rem; margin-top: 2.2rem; border-bottom: 2px solid #d0d7de; padding-bottom: 0.2rem; }
h3 { font-size: 1.08rem; margin: 1.4rem 0 0.4rem; }
p, li, dd { max-width: 62rem; }
p.alert, p.notice { max-width: none; }
code, .hash { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 0.85em; }
.hash { word-break: break-all; }
.meta, .muted { color: #57606a; font-size: 0.88rem; }
.notice { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 0.4rem 0.8rem;
          font-size: 0.9rem; }
nav { margin: 0.8rem 0; font-size: 0.92rem; }
nav a { margin-right: 1rem; }
.card { border: 1px solid #d0d7de; border-left: 6px solid #57606a; border-radius: 6px; padding: 0.8rem 1.2rem;
        margin: 1rem 0; background: #fafbfc; }
.card.within-budget { border-left-color: #1a7f37; }
.card.over-budget, .card.not-differentially-private { border-left-color: #cf222e; }
.card.no-budget-set { border-left-color: #bf8700; }
.card h3 { margin-top: 0.2rem; display: flex; flex-wrap: wrap; gap: 0.6rem; align-items: baseline; }
.badge { display: inline-block; font-size: 0.78rem; font-weight: 700; letter-spacing: 0.03em; padding: 0.1rem 0.55rem;
         border-radius: 1rem; color: #fff; background: #57606a; text-transform: uppercase; }
.badge.within-budget { background: #1a7f37; } .badge.no-budget-set { background: #9a6700; }
.badge.over-budget, .badge.not-differentially-private { background: #cf222e; }
.badge.strength-strong { background: #1a7f37; } .badge.strength-reasonable { background: #57606a; }
.badge.strength-weak { background: #9a6700; }
.sentence { font-size: 1.22rem; font-weight: 600; margin: 0.4rem 0; }
.verdict { font-weight: 600; }
.alert { border: 2px solid #cf222e; background: #ffebe9; border-radius: 6px; padding: 0.5rem 0.9rem; margin: 0.6rem 0; }
.flag { color: #a40e26; font-weight: 700; }
ul.status { padding-left: 1.2rem; }
dl.facts { display: grid; grid-template-columns: minmax(9rem, max-content) minmax(0, 1fr); gap: 0.2rem 1rem;
           margin: 0.5rem 0; }
dl.facts dt { font-weight: 600; color: #424a53; } dl.facts dd { margin: 0; min-width: 0; }
.table-wrap { max-width: 100%; overflow-x: auto; margin: 0.5rem 0 1rem; }
table { border-collapse: collapse; font-size: 0.86rem; }
th, td { border: 1px solid #d0d7de; padding: 0.3rem 0.55rem; text-align: left; vertical-align: top; }
th { background: #f3f4f6; }
tr.overdue td { background: #ffebe9; }
.wide table { font-size: 0.78rem; }
.statement { background: #f6f8fa; border-left: 4px solid #0969da; padding: 0.6rem 1rem; }
.label { font-style: italic; color: #6639ba; }
figure { margin: 1rem 0; } figure svg { max-width: 100%; height: auto; display: block; }
figcaption { color: #57606a; font-size: 0.85rem; }
@page { size: A4; margin: 14mm; }
@page wide { size: A4 landscape; margin: 12mm; }
@media print {
  body { max-width: none; padding: 0; font-size: 10pt; }
  nav { display: none; }
  a { color: inherit; text-decoration: none; }
  .table-wrap { overflow: visible; }
  table { width: 100%; font-size: 7.5pt; }
  th, td { padding: 0.15rem 0.3rem; }
  .wide-block { page: wide; }
  .wide-block table { font-size: 7pt; }
  tr, .card, .alert, figure, dl.facts { break-inside: avoid; }
  h2, h3 { break-after: avoid; }
  #specialists { break-before: page; }
  .card, .alert, .badge, .notice, tr.overdue td, th { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


def _cell(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, Flag):
        return f'<span class="flag">{html.escape(value.text)}</span>'
    if isinstance(value, Link):
        return f'<a href="{html.escape(value.href, quote=True)}">{html.escape(value.text)}</a>'
    if isinstance(value, float):
        return html.escape(f"{value:.4g}")
    return html.escape(str(value))


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, wide: bool = False,
           row_class: Sequence[str] = ()) -> str:
    head = "".join(f'<th scope="col">{html.escape(h)}</th>' for h in headers)
    body = "".join(
        (f'<tr class="{row_class[i]}">' if i < len(row_class) and row_class[i] else "<tr>")
        + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for i, row in enumerate(rows))
    return (f'<div class="table-wrap{" wide" if wide else ""}"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _facts(pairs: Sequence[tuple[str, object]], hashes: Sequence[str] = ()) -> str:
    hash_class = ' class="hash"'
    items = "".join(f"<dt>{html.escape(k)}</dt><dd{hash_class if k in hashes else ''}>{_cell(v)}</dd>"
                    for k, v in pairs)
    return f'<dl class="facts">{items}</dl>'


def _figure(svg: str | None, caption: str) -> str:
    if svg is None:
        return ""
    return f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _p(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{html.escape(text)}</p>' if cls else f"<p>{html.escape(text)}</p>"


def _slug(verdict: str) -> str:
    return verdict.replace(" ", "-")


def _strength(h: Headline) -> str:
    """The guarantee's strength as a badge as loud as the budget verdict (a model within its budget may still hold
    only a weak guarantee); none where there is no guarantee to grade (the verdict says so)."""
    if h.strength not in STRENGTH_WORDS:
        return ""
    return f'<span class="badge strength-{h.strength}">{html.escape(STRENGTH_WORDS[h.strength])}</span>'


def _card(h: Headline) -> str:
    parts = [f'<article class="card {_slug(h.verdict)}">',
             f"<h3><span>Model {html.escape(h.model)}</span>"
             f'<span class="badge {_slug(h.verdict)}">{html.escape(h.verdict)}</span>{_strength(h)}</h3>',
             _p(h.sentence, "sentence")]
    for text, cls in ((h.meaning, ""), (h.records_differ, ""), (h.scale, "muted"), (h.verdict_text, "verdict")):
        if text:
            parts.append(_p(text, cls))
    parts.append("</article>")
    return "".join(parts)


def _summary(report: PrivacyReport) -> list[str]:
    parts = [f'<section id="summary"><h2>{SECTIONS[0][1]}</h2>']
    parts += [_card(h) for h in report.headlines]
    if not report.headlines:
        parts.append(_p("No composed model is registered in the ledger; the per-record guarantees of each data "
                        "source are under Data." if report.components else report.statement))
    parts += [f'<p class="alert">{html.escape(run.text)}</p>' for run in report.non_private]
    parts.append('<ul class="status">' + "".join(f"<li>{_cell(line)}</li>" for line in status_lines(report))
                 + "</ul></section>")
    return parts


def _data(report: PrivacyReport) -> list[str]:
    parts = [f'<section id="data"><h2>{SECTIONS[1][1]}</h2>']
    if not report.data_sources:
        parts.append(_p("No data source is declared."))
    for source in report.data_sources:
        parts.append(f"<h3>Data source {html.escape(source.data_source)}</h3>")
        parts.append(_facts(source_facts(report, source)))
        parts.append(_table(*data_shards_table(report, source.data_source)))
        guarantees = next((g for g in report.record_guarantees if g.data_source == source.data_source), None)
        if guarantees is not None and guarantees.groups:
            parts.append(f"<h4>Per-record guarantee (at \u03b4 = {html.escape(fmt_delta(guarantees.delta))})</h4>")
            parts.append(_table(*distribution_table(guarantees.groups)))
        if guarantees is not None:
            parts.append(_p(guarantees.text))
    if report.workspace is None:
        parts.append(_p("Record counts per shard: " + NO_WORKSPACE[0].lower() + NO_WORKSPACE[1:], "muted"))
    else:
        parts.append(_p(RECORD_COUNTS, "muted"))
    return parts + ["</section>"]


def _deletions(report: PrivacyReport) -> list[str]:
    parts = [f'<section id="deletions"><h2>{SECTIONS[2][1]}</h2>']
    if report.workspace is None:
        parts.append(_p(NO_WORKSPACE))
    elif not report.workspace.deletions:
        parts.append(_p("No deletion request has been received."))
    else:
        headers, rows = deletions_table(report)
        classes = ["overdue" if d.overdue or d.status == "unsealed" else "" for d in report.workspace.deletions]
        parts.append(_table(headers, rows, row_class=classes))
        parts.append("<ul class=\"muted\">" + "".join(f"<li>{html.escape(b)}</li>" for b in legal_bases(report))
                     + "<li>Deadlines are the last day, in UTC, without the extensions both regimes allow; "
                       "bookkeeping, not legal advice.</li></ul>")
    if report.workspace is not None:
        parts.append("<h3>Releases (what left the workspace)</h3>")
        if not report.workspace.releases:
            parts.append(_p("No model has been released."))
        else:
            headers, rows = releases_table(report)
            parts.append(_table(headers, rows, row_class=["overdue" if r.later_deletions else ""
                                                           for r in report.workspace.releases]))
            parts.append(_p(RELEASES_NOTE, "muted"))
    return parts + ["</section>"]


def _audit(report: PrivacyReport) -> list[str]:
    parts = [f'<section id="audit"><h2>{SECTIONS[3][1]}</h2>']
    if report.workspace is None or report.workspace.audit is None:
        parts.append(_p(NO_WORKSPACE))
    else:
        audit = report.workspace.audit
        parts.append(_facts(audit_facts(report), hashes=("Head (hash of the last entry)", "Merkle root (RFC 9162)",
                                                         "Checkpoint root", "Log")))
        if audit.problems:
            parts.append("<h3>Problems found</h3><ul>" + "".join(
                f'<li class="flag">{html.escape(p)}</li>' for p in audit.problems) + "</ul>")
    parts.append("<h3>Runs without a differential-privacy guarantee</h3>")
    if report.non_private:
        parts.append(_table(*non_private_table(report)))
    else:
        parts.append(_p("None: every run in the ledger was differentially private."))
    return parts + ["</section>"]


def _specialists(report: PrivacyReport) -> list[str]:
    parts = [f'<section id="specialists"><h2>{SECTIONS[4][1]}</h2>',
             _p(f"Neighbouring relation: {report.neighbouring_relation}. {report.accountants}", "muted"),
             "<h3>Privacy statement</h3>",
             '<div class="statement">' + "".join(_p(p) for p in report.statement.split("\n\n")) + "</div>"]
    if report.models:
        parts += ["<h3>Models (per-record guarantee)</h3>", _table(*models_table(report))]
    parts.append("<h3>Shards (total spend)</h3>")
    if report.shards:
        skipped = [f"{s.data_source}/{s.shard}" for s in report.shards if len(s.curve) > 1
                   and not any(math.isfinite(p.epsilon) and p.steps > 0 for p in s.curve)]
        parts.append(_figure(budget_bars_svg(report.shards),
                             "Spent (dark) and remaining (light green, outlined) \u03b5 per shard; hatched grey: no "
                             "budget set; red: over budget; the dark bar across marks the budget."))
        curve_names = sorted({s.curve_accountant for s in report.shards if s.curve_accountant})
        caption = "\u03b5 of each shard's runs against cumulative steps; dashed: the budget. Curves from " + (
            "; ".join(curve_names) or "the PLD accountant") + "; the tables give the reported (tightest) figures."
        if skipped:
            caption += f" Not drawn (no finite \u03b5, non-private): {', '.join(skipped)}."
        parts.append(_figure(epsilon_curve_svg(report.shards), caption))
        parts.append('<div class="wide-block"><h4>Every accountant\'s figure per shard</h4>'
                     + _table(*shards_table(report), wide=True) + "</div>")
    else:
        parts.append(_p("No shards."))
    if report.components:
        parts.append('<div class="wide-block"><h3>Components (one row per ledger event)</h3>'
                     + _table(*components_table(report), wide=True) + "</div>")
    else:
        parts += ["<h3>Components (one row per ledger event)</h3>", _p("No events.")]
    parts.append(f'<h3>Empirical audits <span class="label">({html.escape(AUDIT_LABEL)})</span></h3>')
    parts.append(_table(*audits_table(report)) if report.audits else _p("No audit recorded."))
    parts.append("<h3>Assumptions</h3><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>")
    return parts + ["</section>"]


@register_renderer("html")
def render_html(report: PrivacyReport) -> str:
    """One HTML page, no external resources and no script."""
    where = f" · workspace <code>{html.escape(report.workspace.workspace)}</code>" if report.workspace else ""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{html.escape(report.title)}</h1>",
        f'<p class="meta">Generated {html.escape(fmt_time(report.generated_at) or report.generated_at)} from ledger '
        f"<code>{html.escape(report.ledger)}</code>{where}</p>",
        _p(report.notice, "notice") if report.notice else "",
        "</header>",
        "<nav>On this page: " + "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in SECTIONS) + "</nav>",
        "<main>",
    ]
    for section in (_summary, _data, _deletions, _audit, _specialists):
        parts += section(report)
    parts.append("</main></body></html>")
    return "\n".join(p for p in parts if p)

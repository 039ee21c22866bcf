"""The report's tables as (headers, rows), shared by the Markdown and HTML renderers so that both
always show the same columns and words; each renderer only formats cells (a :class:`Link` becomes
a link, a :class:`Flag` is emphasised)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

from privacy_accounting.report_models import (
    DataSourceEntry,
    DeletionEntry,
    GuaranteeGroup,
    PrivacyReport,
    ReleaseEntry,
    ShardEntry,
    ShardRecords,
)
from privacy_accounting.figures import fmt_eps, fmt_remaining, fmt_set, significant
from privacy_accounting.statement import fmt_delta, unit_text

Table = tuple[list[str], list[tuple[object, ...]]]


@dataclass(frozen=True)
class Link:
    """A cell that links to ``href``."""

    text: str
    href: str


@dataclass(frozen=True)
class Flag:
    """A cell that must stand out (an overdue request, a failed check, a run without a guarantee)."""

    text: str


def _words(value: str) -> str:
    """A machine word as words (``retraining_after_deletion`` -> ``retraining after deletion``)."""
    return value.replace("non_private", "non-private").replace("_", " ")


def _delta(value: float | None) -> str | None:
    return None if value is None else fmt_set(value)  # as the run or budget was set: never rounded


def _upper(value: float | None) -> str | None:
    """An epsilon upper bound as every table prints one: rounded up (other numbers are rounded to nearest)."""
    return None if value is None else fmt_eps(value)


def fmt_time(value: str | None) -> str | None:
    """An ISO timestamp as ``2025-01-31 12:00 UTC`` (a date stays a date)."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if len(value) <= 10:
        return moment.date().isoformat()
    if moment.tzinfo is None:
        return moment.strftime("%Y-%m-%d %H:%M")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


#: The report's sections, in order: (anchor, heading). Both renderers use these words.
SECTIONS = [("summary", "Summary"), ("data", "Data"), ("deletions", "Deletion requests"), ("audit", "Audit log"),
            ("specialists", "For specialists")]
#: The card's words for a guarantee's strength (:func:`~privacy_accounting.statement.strength`).
STRENGTH_WORDS = {"strong": "strong guarantee", "reasonable": "reasonable guarantee", "weak": "weak guarantee"}
NO_WORKSPACE = ("Not part of this report: it was built from the ledger alone; a workspace's report "
                "(dp-tangent report) adds it.")
RECORD_COUNTS = ("Records (latest run): how many records the shard's latest completed run read, deleted ones excluded. "
                 "Per-record counts cover every record any run ever read, deleted ones included: a row no model draws "
                 "on now (its components were removed by a deletion or a retraining, or never composed) still bounds "
                 "what was computed or released from those records before.")


# -- data ------------------------------------------------------------------------------------------

def source_facts(report: PrivacyReport, source: DataSourceEntry) -> list[tuple[str, str]]:
    """(label, value) lines of a data source: description, unit, budget, how it is re-read."""
    details = next((d for d in (report.workspace.data if report.workspace else []) if d.data_source ==
                    source.data_source), None)
    budget = (f"\u03b5 = {fmt_set(source.budget.epsilon)} at \u03b4 = {fmt_delta(source.budget.delta)} for each shard"
              if source.budget else "none for the whole source (see each shard)")
    facts = [("Description", source.description or "(none given)"), ("Unit of privacy", unit_text(source.unit)),
             ("Budget", budget)]
    if details is not None and details.loader:
        facts.append(("Re-read for retraining from", details.loader))
    return facts


def _shard_records(report: PrivacyReport, data_source: str, shard: str) -> ShardRecords | None:
    for details in report.workspace.data if report.workspace else []:
        if details.data_source == data_source:
            return next((s for s in details.shards if s.shard == shard), None)
    return None


def data_shards_table(report: PrivacyReport, data_source: str) -> Table:
    """One row per shard of ``data_source``: records, whether public, runs, spend against the budget."""
    rows: list[tuple[object, ...]] = []
    for s in (s for s in report.shards if s.data_source == data_source):
        known = _shard_records(report, data_source, s.shard)
        records = None if known is None or known.records is None else f"{known.records:,}"
        public = "declared public" if known is not None and known.public else "private" if known else None
        spent = Flag("\u221e: NOT DIFFERENTIALLY PRIVATE") if math.isinf(s.spent.epsilon) else _upper(s.spent.epsilon)
        status = Flag(s.budget_status) if s.budget_status == "exceeded" else s.budget_status
        rows.append((s.shard, records, public, _runs(s), spent,
                     fmt_set(s.budget.epsilon) if s.budget else "none", status))
    return (["shard", "records (latest run)", "kind", "runs", "spent \u03b5", "budget \u03b5", "status"], rows)


def _runs(shard: ShardEntry) -> object:
    """The runs its spend counts: its own, and those of other shards that read some of its records."""
    if not shard.shared_with:
        return shard.n_events
    return f"{shard.n_events} + those of {', '.join(shard.shared_with)} on shared records"


def distribution_table(groups: list[GuaranteeGroup]) -> Table:
    """How many records sit at which epsilon (every run that read each record composed)."""
    rows: list[tuple[object, ...]] = []
    standing = {True: "yes", False: "no: removed or never composed", None: "-"}
    listed = {shard for g in groups if g.records is not None for shard in g.shards}
    for g in groups:
        # a whole shard's row beside rows of its records other shards' runs read too covers the rest (review 72)
        whole = "other records" if set(g.shards) & listed else "whole shard"
        records = f"{whole} (runs named no records)" if g.records is None else f"{g.records:,}"
        eps = Flag("no guarantee (non-private run)") if math.isinf(g.epsilon) else f"\u2264 {fmt_eps(g.epsilon)}"
        rows.append((records, ", ".join(g.shards), eps, standing[g.in_a_model]))
    return (["records", "shards", "\u03b5 per record", "in a model now"], rows)


# -- deletions -------------------------------------------------------------------------------------

def _missed(d: DeletionEntry, day: str) -> str:
    """The regimes whose deadline ``day`` (an ISO date) is past, with their deadlines, and those it meets: the
    earliest deadline is not every regime's."""
    late = [f"{r.upper()} (due {when})" for r, when in sorted(d.deadlines.items()) if day > when]
    kept = [f"{r.upper()} (due {when})" for r, when in sorted(d.deadlines.items()) if day <= when]
    return f"late under {', '.join(late)}" + (f"; on time under {', '.join(kept)}" if kept else "")


def _deletion_status(d: DeletionEntry) -> object:
    held = f"; its records are still in model(s) {', '.join(d.held_by_models)}" if d.held_by_models else ""
    if d.overdue:
        behind = f", {-d.days_left} day(s) overdue" if d.days_left is not None and d.days_left < 0 else ""
        return Flag(f"OVERDUE: open, was due {d.due_by}{behind}{held}")
    if d.status == "open":
        left = "" if d.days_left is None else f", {d.days_left} day(s) left"
        return Flag(f"open{left}{held}") if held else f"open{left}"
    if d.status == "unsealed":
        return Flag("UNSEALED: records deleted, certificate never sealed (run the same forget again)")
    timing = "" if d.on_time is None else " on time" if d.on_time else None
    if timing is None:
        day = (d.completed_at or "")[:10]
        return Flag(f"completed LATE ({d.outcome.replace('_', ' ')}): {_missed(d, day)}" if day
                    else f"completed LATE ({d.outcome.replace('_', ' ')})")
    return f"completed{timing} ({d.outcome.replace('_', ' ')})"


def deletions_table(report: PrivacyReport) -> Table:
    """One row per deletion request with its legal deadlines, status and certificate."""
    entries = report.workspace.deletions if report.workspace else []
    regimes = sorted({r for d in entries for r in d.deadlines})
    headers = ["request", "received"] + [f"{r.upper()} deadline" for r in regimes] + [
        "status", "completed", "certificate"]
    rows = [(d.request_id, fmt_time(d.received_at), *(d.deadlines.get(r) for r in regimes), _deletion_status(d),
             fmt_time(d.completed_at), Link(d.certificate.rsplit("/", 1)[-1], d.certificate_href)) for d in entries]
    return headers, rows


def releases_table(report: PrivacyReport) -> Table:
    """One row per release: what left, when, where, at what figure, and the deletions completed after it that
    removed records of the released version (its copies are not recalled)."""
    entries = report.workspace.releases if report.workspace else []
    headers = ["model", "released", "by", "to", "epsilon then (δ)", "release.json sha256", "deletions after it"]
    rows = [(r.model, fmt_time(r.released_at), r.operator, r.destination,
             None if r.epsilon is None else fmt_eps(r.epsilon) if math.isinf(r.epsilon)
             else f"{fmt_eps(r.epsilon)} ({fmt_delta(r.delta)})",
             r.statement_sha256, _after_release(r)) for r in entries]
    return headers, rows


def _after_release(r: ReleaseEntry) -> object:
    """The deletions a release's copies do not follow: completed after it, or still open on records it holds."""
    parts = ([f"{'; '.join(r.later_deletions)}: copies released before are not recalled"] if r.later_deletions
             else []) + ([f"open request(s) {', '.join(r.pending_deletions)} name records it holds; its copies will "
                          "keep them"] if r.pending_deletions else [])
    return Flag("; ".join(parts)) if parts else "none"


RELEASES_NOTE = ("Releases are read from the audit log. A bundle states its shards' budgets, not the figure shown here "
                 "(which depends on the shards' sizes). A deletion completed after a release does not reach the "
                 "copies already sent: the threat model's \"Copies of a model released before the deletion\".")


def legal_bases(report: PrivacyReport) -> list[str]:
    """What each deadline column counts, once per regime."""
    seen: dict[str, str] = {}
    for d in report.workspace.deletions if report.workspace else []:
        seen.update(d.regimes)
    return [f"{regime.upper()}: {text}" for regime, text in sorted(seen.items())]


# -- audit -----------------------------------------------------------------------------------------

def audit_facts(report: PrivacyReport) -> list[tuple[str, object]]:
    """(label, value) lines of the audit log's verification."""
    audit = report.workspace.audit if report.workspace else None
    if audit is None:
        return []
    facts: list[tuple[str, object]] = [
        ("Result", Flag(f"FAILED: {len(audit.problems)} problem(s)") if not audit.verified else
         "VERIFIED, and the log extends a signed checkpoint kept outside the workspace" if audit.checkpoint is not None
         and audit.checkpoint.signature == "verified" and audit.checkpoint.extends else
         "VERIFIED as internally consistent (chain, artifacts, ledger); it extends the checkpoint below, whose "
         "signature was not checked" if audit.checkpoint is not None and audit.checkpoint.signature == "not checked"
         else "VERIFIED as internally consistent (chain, artifacts, ledger); no signed checkpoint kept outside the "
         "workspace was given to compare it with"),
        ("Checked at", fmt_time(audit.checked_at) or audit.checked_at),
        ("Log", audit.log),
        ("Entries", str(audit.entries)),
        ("Head (hash of the last entry)", audit.head or "(empty log)"),
        ("Merkle root (RFC 9162)", audit.merkle_root or "(empty log)"),
        ("Artifacts checked", f"{audit.artifacts_checked}"
         + (f"; {len(audit.missing_artifacts)} logged but no longer on disk" if audit.missing_artifacts else "")),
    ]
    point = audit.checkpoint
    if point is None:
        facts.append(("Latest checkpoint", "none recorded"))
    else:
        signature = {"verified": "signature verified", "not checked": "signature NOT checked (no verifier key given)",
                     "not signed": "unsigned"}[point.signature]
        facts.append(("Latest checkpoint", f"the first {point.size} entries; {point.source}; {signature}"))
        facts.append(("Checkpoint root", point.root))
        facts.append(("Checkpoint check", "the log extends it (RFC 9162 consistency proof)" if point.extends
                      else Flag(f"the log does NOT extend it: {point.problem}")))
    return facts


def non_private_table(report: PrivacyReport) -> Table:
    """Every run without a differential-privacy guarantee."""
    rows = [(r.component, f"{r.data_source}/{r.shard}", _words(r.purpose), r.status,
             {True: "yes", False: Flag("NO"), None: None}[r.declared_public], ", ".join(r.models) or "none",
             Flag("NOT DIFFERENTIALLY PRIVATE")) for r in report.non_private]
    return (["component", "data", "purpose", "status", "declared public", "in models", "guarantee"], rows)


# -- for specialists ---------------------------------------------------------------------------------

def models_table(report: PrivacyReport) -> Table:
    return (["model", "components", "epsilon", "delta", "accountant", "binding shard", "unit"],
            [(m.model, ", ".join(m.components), _upper(m.epsilon), _delta(m.delta), m.accountant,
              f"{m.binding_data_source}/{m.binding_shard}" if m.binding_shard else None, ", ".join(m.units))
             for m in report.models])


def shards_table(report: PrivacyReport) -> Table:
    return (["data source", "shard", "unit", "spent epsilon", "delta", "accountant", "RDP", "PRV", "PLD",
             "budget", "remaining", "status", "events"],
            [(s.data_source, s.shard, s.unit, _upper(s.spent.epsilon), _delta(s.spent.delta), s.spent.accountant,
              _upper(s.spent.rdp), _upper(s.spent.prv), _upper(s.spent.pld),
              f"{fmt_set(s.budget.epsilon)} ({s.budget.scope})" if s.budget else "no budget set",
              None if s.remaining_epsilon is None or s.budget is None
              else fmt_remaining(s.budget.epsilon, fmt_eps(s.spent.epsilon)),
              Flag(s.budget_status) if s.budget_status == "exceeded" else s.budget_status,
              _runs(s)) for s in report.shards])


def components_table(report: PrivacyReport) -> Table:
    return (["component", "data source", "shard", "purpose", "status", "epsilon", "delta", "accountant",
             "noise multiplier", "sample rate", "steps", "mechanism", "checkpoints released", "failure"],
            [(c.component, c.data_source, c.shard, _words(c.purpose), c.status, _upper(c.epsilon), _delta(c.delta),
              c.accountant,
              c.noise_multiplier, c.sample_rate, c.steps, c.mechanism, "yes" if c.checkpoints_released else "no",
              c.failure_reason) for c in report.components])


def audits_table(report: PrivacyReport) -> Table:
    return (["component", "epsilon lower bound", "delta", "method", "accounted upper bound", "consistent", "label"],
            [(a.component, significant(a.epsilon_lower_bound, 4, up=False), _delta(a.delta), a.method,
              _upper(a.accounted_epsilon),
              {True: "yes", False: Flag("NO"), None: None}[a.consistent], a.label) for a in report.audits])


def status_lines(report: PrivacyReport) -> list[object]:
    """The summary's lines on deletions and the audit log (a :class:`Flag` when something is wrong)."""
    if report.workspace is None:
        return ["Deletion requests and the audit log: " + NO_WORKSPACE[0].lower() + NO_WORKSPACE[1:]]
    lines: list[object] = []
    requests = report.workspace.deletions
    overdue = [d.request_id for d in requests if d.overdue]
    unsealed = [d.request_id for d in requests if d.status == "unsealed"]
    still_open = sum(d.status == "open" for d in requests)
    if unsealed:
        lines.append(Flag(f"Deletion requests: {len(unsealed)} UNSEALED ({', '.join(unsealed)}): deleted, but the "
                          "certificate was never sealed; run the same `dp-tangent forget` again."))
    late_ones = [d.request_id for d in requests if d.on_time is False]
    held = sorted({m for d in requests if d.status == "open" for m in d.held_by_models})
    pending = sum(bool(d.held_by_models) for d in requests if d.status == "open")
    if held:
        lines.append(Flag(f"Models {', '.join(held)} still hold records of {pending} open deletion request(s) "
                          "(see Deletion requests)."))
    if overdue:
        lines.append(Flag(f"Deletion requests: {len(overdue)} OVERDUE ({', '.join(overdue)}); "
                          f"{len(requests)} received, {still_open} open"
                          + (f", {len(late_ones)} completed late ({', '.join(late_ones)})." if late_ones else ".")))
    elif requests:
        late = sum(d.on_time is False for d in requests)
        on_time = sum(d.status == "completed" and d.on_time is not False for d in requests)
        counts = ([f"{on_time} completed on time"] if on_time else []) + ([f"{late} completed late"] if late else [])
        counts += [f"{still_open} open"] + ([f"{len(unsealed)} unsealed"] if unsealed else [])
        lines.append(f"Deletion requests: {len(requests)} received: {', '.join(counts)}, none overdue.")
    else:
        lines.append("Deletion requests: none received.")
    releases = report.workspace.releases
    before = [r for r in releases if r.later_deletions]
    pending_releases = [r for r in releases if r.pending_deletions]
    if releases:
        latest = releases[-1]
        text = (f"Releases: {len(releases)} (the latest: {latest.model} on {fmt_time(latest.released_at)})"
                + (f"; {len(before)} before a deletion that removed records of the released version (copies sent "
                   "are not recalled)" if before else "")
                + (f"; {len(pending_releases)} hold records that open deletion requests name." if pending_releases
                   else "."))
        lines.append(Flag(text) if before or pending_releases else text)
    audit = report.workspace.audit
    if audit is None:
        lines.append(Flag("Audit log: not checked for this report."))
    elif audit.verified:
        point = audit.checkpoint
        if point is not None and point.signature == "verified" and point.extends:
            later = (f"; the {audit.entries - point.size} entries after it are internally consistent"
                     if audit.entries > point.size else "")
            lines.append(f"Audit log: verified when this report was made ({audit.entries} entries, every artifact and "
                         f"the ledger's state matching): it extends a signed checkpoint kept outside the workspace "
                         f"(its first {point.size} entries){later}.")
        elif point is not None and point.signature == "not checked":
            lines.append(f"Audit log: internally consistent when this report was made ({audit.entries} entries, "
                         "every artifact and the ledger's state matching), and it extends the checkpoint given, whose "
                         "signature was not checked (give --verifier-key): a forger could have written both.")
        else:  # the chain alone proves the log consistent, not that it is the log that was written
            lines.append(f"Audit log: internally consistent when this report was made ({audit.entries} entries, "
                         "every artifact and the ledger's state matching); not compared with a signed checkpoint kept "
                         "outside the workspace, so a rewrite of the whole log would not show (report with "
                         "--checkpoint and --verifier-key).")
    else:
        lines.append(Flag(f"Audit log: verification FAILED when this report was made ({len(audit.problems)} "
                          "problem(s)); the figures below may not reflect what happened."))
    return lines

"""Plain-language privacy statements (in the spirit of TF Privacy's ``compute_dp_sgd_privacy_statement``).

Each statement says what is protected, the unit of privacy, the neighbouring relation, the
sampling scheme that was accounted for, whether intermediate checkpoints were released, and
what empirical audits found (labelled as lower bounds, never as guarantees).
"""

from __future__ import annotations

import math
from typing import Sequence

from privacy_accounting.report_models import AUDIT_LABEL, AuditEntry, ComponentEntry, ModelShardEntry, ShardEntry

_UNIT_TEXT = {
    "record": "one record (neighbouring datasets differ by adding or removing one record)",
    "user": (
        "one user, i.e. all records of one user (neighbouring datasets differ by adding or removing "
        "all records of one user; this requires that sampling and clipping were done per user)"
    ),
}


def fmt_eps(value: float | None) -> str:
    """Epsilon for humans: ``inf`` spelled out, else 4 significant digits."""
    if value is None:
        return "n/a"
    return "infinite (no guarantee)" if math.isinf(value) else f"{value:.4g}"


def unit_text(unit: str) -> str:
    """Description of a unit of privacy."""
    return _UNIT_TEXT.get(unit, unit)


def sampling_text(entries: Sequence[ComponentEntry]) -> str:
    """What sampling the accounting assumed for these events."""
    rates = sorted({e.sample_rate for e in entries if e.sampling == "poisson" and e.sample_rate is not None})
    parts = []
    if any(e.sampling == "poisson" for e in entries):
        shown = ", ".join(f"{r:g}" for r in rates) if rates else "several rates"
        parts.append(
            "Poisson sampling was accounted for (each unit joins each batch independently with probability "
            f"q = {shown}); the guarantee does not hold if batches were instead formed by shuffling into "
            "fixed-size batches"
        )
    if any(e.sampling == "none (full batch)" for e in entries):
        parts.append("some releases used no subsampling (full-batch Gaussian mechanism)")
    if any(e.sampling == "n/a" for e in entries):
        parts.append("some releases were non-private")
    return "; ".join(parts) if parts else "no releases"


def checkpoints_text(entries: Sequence[ComponentEntry]) -> str:
    """Whether intermediate checkpoints were released, and what the guarantee covers."""
    released = [e.component for e in entries if e.checkpoints_released]
    cover = "the accounting composes every noisy step, so the guarantee covers the released checkpoints too"
    if released:
        return f"intermediate checkpoints were released for {', '.join(sorted(set(released)))}; {cover}"
    return (
        "intermediate checkpoints were not released (only final components); the accounting composes every "
        "noisy step, so the stated guarantee would also cover releasing them"
    )


def audits_text(audits: Sequence[AuditEntry], scope: str = "") -> str:
    """What empirical audits found, each labelled as a lower bound."""
    if not audits:
        return f"no empirical audit was recorded{scope}"
    lines = []
    for audit in audits:
        method = f" ({audit.method})" if audit.method else ""
        line = (
            f"an audit{method} of component '{audit.component}' found epsilon >= {audit.epsilon_lower_bound:.4g} "
            f"at delta = {audit.delta:.3g}, an {AUDIT_LABEL}"
        )
        if audit.consistent is False:
            line += " — it EXCEEDS the accounted upper bound, which indicates a bug in training or accounting"
        lines.append(line)
    return "; ".join(lines)


def model_statement(
    model: str,
    epsilon: float,
    delta: float | None,
    accountant: str,
    shards: Sequence[ModelShardEntry],
    units: Sequence[str],
    entries: Sequence[ComponentEntry],
    audits: Sequence[AuditEntry],
) -> str:
    """Statement for one composed model."""
    sources = sorted({s.data_source for s in shards})
    if not shards:
        return f"Model '{model}' draws on no recorded events."
    head = (
        f"Model '{model}' is composed of {len({e.component for e in entries})} component(s) trained on "
        f"{len(shards)} shard(s) of data source(s) {', '.join(repr(s) for s in sources)}."
    )
    unit = "; ".join(f"{unit_text(u)}" for u in units)
    if math.isinf(epsilon):
        guarantee = (
            "It has NO differential privacy guarantee: a non-private event fed it (epsilon is infinite)."
        )
    else:
        guarantee = (
            f"Every unit of privacy is protected by (epsilon = {epsilon:.4g}, delta = {delta:.3g})-differential "
            f"privacy, an upper bound from the {accountant.upper()} accountant (the tightest of the RDP, PRV and "
            "PLD upper bounds)."
        )
    per_record = (
        " Each unit is charged every run that ever read it (sequential composition), including runs of "
        "components that were later removed or that feed other models."
    )
    parallel = ""
    if len(shards) > 1:
        worst = max(shards, key=lambda s: s.record_epsilon)
        parallel = (
            " The shards hold disjoint records (the ledger refuses an overlap unless the operator allows it, and then "
            "charges the overlapping records for both), so each unit is protected by the runs on its own records "
            f"(parallel composition); the largest, on shard '{worst.shard}', is the one stated."
        )
    reused = [s for s in shards if s.record_epsilon > s.epsilon * (1 + 1e-9)]
    reuse = ""
    if reused:
        reuse = " This model's own runs alone would give less; the stated figure also counts other runs on its " \
            "records: " + ", ".join(
                f"'{s.shard}' {fmt_eps(s.epsilon)} alone, {fmt_eps(s.record_epsilon)} with every run" for s in reused
            ) + "."
    return (
        f"{head} Unit of privacy: {unit}. {guarantee}{per_record}{parallel}{reuse} Sampling: {sampling_text(entries)}. "
        f"Checkpoints: {checkpoints_text(entries)}. Audits: {audits_text(audits, ' for its components')}."
    )


def shard_statement(shard: ShardEntry) -> str:
    """One sentence on a shard's total spend."""
    spent = shard.spent
    delta = f"{spent.delta:.3g}" if spent.delta is not None else "n/a"
    if shard.budget is None:
        budget = "no budget set"
    else:
        budget = (
            f"budget epsilon = {shard.budget.epsilon:.4g} at delta = {shard.budget.delta:.3g} "
            f"({shard.budget.scope.replace('_', ' ')} budget, {shard.budget_status})"
        )
    return (
        f"Shard '{shard.shard}' of '{shard.data_source}' (unit: {shard.unit}): all {shard.n_events} event(s) ever "
        f"run on it compose to epsilon = {fmt_eps(spent.epsilon)} at delta = {delta}; {budget}."
    )


def overall_statement(
    shards: Sequence[ShardEntry],
    model_statements: Sequence[str],
    entries: Sequence[ComponentEntry],
    audits: Sequence[AuditEntry],
    modelled_components: set[str],
) -> str:
    """The report's statement: models first, then every shard's total, then remaining audits."""
    if not entries:
        return "The ledger records no privacy events: no privacy budget has been spent and no model has been released."
    paragraphs = list(model_statements)
    if not model_statements:
        paragraphs.append(
            "No composed model is registered; the guarantees below are per shard. Sampling: "
            f"{sampling_text(entries)}. Checkpoints: {checkpoints_text(entries)}. Audits: {audits_text(audits)}."
        )
    paragraphs.append(" ".join(shard_statement(s) for s in shards))
    others = [a for a in audits if a.component not in modelled_components]
    if model_statements and others:
        paragraphs.append(f"Audits of components outside the models: {audits_text(others)}.")
    return "\n\n".join(paragraphs)

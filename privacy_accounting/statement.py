"""Plain-language privacy statements (in the spirit of TF Privacy's ``compute_dp_sgd_privacy_statement``).

Two levels. The *headline* of a model is for a reader who is not an ML engineer: who is
protected (the unit), at what (epsilon, delta), what that bounds -- adding or removing one unit
changes the probability of any outcome by at most a factor e^epsilon, plus at most
delta -- where epsilon sits on a commonly used scale, and the verdict against the budget. The
*statement* is for specialists: the unit and neighbouring relation, the sampling that was
accounted for, whether shards were checked to be disjoint (never claimed when runs read the same
records), whether intermediate checkpoints were released, and what empirical audits found
(labelled as lower bounds, never as guarantees).
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Sequence

from privacy_accounting.figures import fmt_eps, fmt_remaining, fmt_set, significant
from privacy_accounting.report_models import (
    AUDIT_LABEL,
    AuditEntry,
    ComponentEntry,
    GuaranteeGroup,
    Headline,
    ModelEntry,
    ModelShardEntry,
    ShardEntry,
    ShardOverlap,
    Verdict,
)

_UNIT_TEXT = {
    "record": "one record (neighbouring datasets differ by adding or removing one record)",
    "user": (
        "one user, i.e. all records of one user (neighbouring datasets differ by adding or removing "
        "all records of one user; this requires that sampling and clipping were done per user)"
    ),
}
#: Who is protected, as the headline names it (``{model}``: the model's name).
_WHO = {"record": "Every record used to train model '{model}'",
        "user": "Every user whose records were used to train model '{model}' (all of a user's records together)"}
_ONE = {"record": "any one record", "user": "all the records of any one user"}
#: Ponomareva et al., "How to DP-fy ML: A Practical Guide to Machine Learning with Differential
#: Privacy" (JAIR 2023), section 5.2: tiers of epsilon for ML models.
SCALE = ("For orientation (Ponomareva et al., “How to DP-fy ML”, 2023): ε ≤ 1 is a strong "
         "guarantee, ε ≤ 10 a reasonable one for machine learning, above 10 a weak formal guarantee.")


#: The caveat of a guarantee some of whose runs were planned from their shard's own size (see build_report).
SIZES_PUBLIC = ("This holds with the shards' sizes taken as public: some runs were planned from their shard's own "
                "record count (sampling rate, steps and noise follow it), so the model can reveal a shard's size, "
                "and with it whether one record (one user, for user-level data) is in it.")
SHARD_SIZE_PUBLIC = ("A run on it, or on records it shares with other shards, was planned from its shard's own record "
                     "count: the figure holds with that shard's size taken as public.")


def fmt_delta(delta: float | None) -> str:
    """Delta for humans: a plain decimal down to 1e-8 (``0.00001``), else scientific."""
    if delta is None:
        return "n/a"
    exact = fmt_set(delta)  # never rounded: a delta printed lower would claim more than holds
    if 1e-8 <= delta < 1 and "e" in exact:
        return format(Decimal(exact), "f")
    return exact


def odds_factor(epsilon: float) -> float | None:
    """e^epsilon (inf when it overflows); None without a guarantee."""
    if math.isinf(epsilon):
        return None
    return math.exp(epsilon) if epsilon < 709 else math.inf


def fmt_factor(factor: float) -> str:
    """e^epsilon for humans: 3 significant digits with thousands separators (``139,000``)."""
    if math.isinf(factor) or factor >= 1e15:
        return f"{factor:.2e}"
    if factor < 1000:
        return significant(factor, 3, up=True)  # a bound on a factor: rounded up, as epsilon is
    scale = 10.0 ** (int(math.floor(math.log10(factor))) - 2)
    return f"{math.ceil(factor / scale) * scale:,.0f}"


def strength(epsilon: float) -> str:
    """Where epsilon sits on :data:`SCALE`: strong, reasonable, weak or none."""
    if math.isinf(epsilon):
        return "none"
    return "strong" if epsilon <= 1 else "reasonable" if epsilon <= 10 else "weak"


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
        lower = significant(audit.epsilon_lower_bound, 4, up=False)  # a lower bound: rounded down
        line = (
            f"an audit{method} of component '{audit.component}' found epsilon >= {lower} "
            f"at delta = {fmt_set(audit.delta)}, an {AUDIT_LABEL}"
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
    disjointness: str = "unchecked",
    overlaps: Sequence[ShardOverlap] = (),
    sizes_public: bool = False,
) -> str:
    """Statement for one composed model (``disjointness``, ``overlaps``: what the ledger found about
    the records its shards share, see :func:`disjointness_text`; ``sizes_public``: a run on one of its
    shards was planned from that shard's own size, see :data:`SIZES_PUBLIC`)."""
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
            "It has NO differential privacy guarantee: a non-private run fed it or read its records (epsilon is "
            "infinite)."
        )
    else:
        guarantee = (
            f"Every unit of privacy is protected by (epsilon = {fmt_eps(epsilon)}, delta = {fmt_set(delta)})-"
            f"differential privacy, an upper bound from the {accountant.upper()} accountant (the tightest of the "
            "upper bounds the RDP, PRV and PLD accountants gave)."
        )
    per_record = (
        " Each unit is charged every run that ever read it (sequential composition), including runs of "
        "components that were later removed or that feed other models."
    )
    parallel = " " + disjointness_text(disjointness, overlaps, shards) if len(shards) > 1 or overlaps else ""
    reused = [s for s in shards if s.record_epsilon > s.epsilon * (1 + 1e-9)]
    reuse = ""
    if reused:
        reuse = " This model's own runs alone would give less; the stated figure also counts other runs on its " \
            "records: " + ", ".join(
                f"'{s.shard}' {fmt_eps(s.epsilon)} alone, {fmt_eps(s.record_epsilon)} with every run" for s in reused
            ) + "."
    if sizes_public and not math.isinf(epsilon):
        guarantee += " " + SIZES_PUBLIC
    return (
        f"{head} Unit of privacy: {unit}. {guarantee}{per_record}{parallel}{reuse} Sampling: {sampling_text(entries)}. "
        f"Checkpoints: {checkpoints_text(entries)}. Audits: {audits_text(audits, ' for its components')}."
    )


def shard_statement(shard: ShardEntry) -> str:
    """One sentence on a shard's total spend (and, where a run was planned from its size, that caveat)."""
    spent = shard.spent
    delta = fmt_set(spent.delta) if spent.delta is not None else "n/a"
    if shard.budget is None:
        budget = "no budget set"
    elif shard.budget_status == "declared public":
        budget = (f"its records are declared public, so the {shard.budget.scope.replace('_', ' ')} budget "
                  f"(epsilon = {fmt_set(shard.budget.epsilon)}) does not apply")
    else:
        budget = (
            f"budget epsilon = {fmt_set(shard.budget.epsilon)} at delta = {fmt_set(shard.budget.delta)} "
            f"({shard.budget.scope.replace('_', ' ')} budget, {shard.budget_status})"
        )
    at = "" if math.isinf(spent.epsilon) else f" at delta = {delta}"
    figure = (f"all {shard.n_events} event(s) ever run on it compose to epsilon = {fmt_eps(spent.epsilon)}{at}"
              if not shard.shared_with else
              f"its most charged records have spent epsilon = {fmt_eps(spent.epsilon)}{at}, counting its "
              f"{shard.n_events} event(s) and the runs of {', '.join(shard.shared_with)} that read some of its "
              "records too (an overlap allowed on purpose)")
    return (
        f"Shard '{shard.shard}' of '{shard.data_source}' (unit: {shard.unit}): {figure}; {budget}."
        + (" " + SHARD_SIZE_PUBLIC if shard.size_public else "")
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


def _overlap_list(overlaps: Sequence[ShardOverlap]) -> str:
    return "; ".join(f"{o.records} record(s) of '{o.data_source}' on {' and '.join(o.shards)}" for o in overlaps)


def disjointness_text(disjointness: str, overlaps: Sequence[ShardOverlap],
                      shards: Sequence[ModelShardEntry] = ()) -> str:
    """Whether the shards were checked to hold disjoint records, in one or two sentences: never claimed
    when runs on several shards read the same records, nor when runs did not name their records."""
    worst = max(shards, key=lambda s: s.record_epsilon) if shards else None
    stated = f"; the largest, on shard '{worst.shard}', is the one stated" if worst is not None else ""
    if disjointness == "overlap":
        return (f"The shards are NOT disjoint: {_overlap_list(overlaps)} were read by runs on more than one shard. "
                "Each such record is charged every run that read it, on every shard, and the figures include that.")
    if disjointness == "checked":
        return ("The shards hold disjoint records: the ledger checked every record each run read, and none was read "
                "on two shards; so each unit is protected by the runs on its own records (parallel composition)"
                f"{stated}.")
    if disjointness == "no events":
        return "No run has read these records."
    found = (f" Where runs named their records, the ledger found {_overlap_list(overlaps)} read by runs on more than "
             "one shard; each such record is charged every run that read it, and the figures include that."
             if overlaps else "")
    return ("That the shards hold disjoint records is ASSUMED, not checked: some runs did not name the records they "
            "read. Each shard is charged everything run on it (parallel composition across shards)"
            f"{stated}; a record present on several shards would be protected only by the composition of their runs."
            f"{found}")


def source_guarantee_text(data_source: str, disjointness: str, overlaps: Sequence[ShardOverlap]) -> str:
    """Whether a data source's shards were checked to hold disjoint records (its per-record guarantees
    are a table next to it)."""
    if disjointness == "no events":
        return f"No run has read data source '{data_source}'."
    return disjointness_text(disjointness, overlaps)


def _group_text(group: GuaranteeGroup) -> str:
    who = "the records" if group.records is None else f"{group.records:,} record{'s' if group.records != 1 else ''}"
    where = ", ".join(group.shards)
    if math.isinf(group.epsilon):
        return f"{who} of {where}: NO guarantee (a non-private run read them)"
    return f"{who} of {where} at ε ≤ {fmt_eps(group.epsilon)}"


def records_differ_text(groups: Sequence[GuaranteeGroup]) -> str:
    """"Records differ: ..." when records carry different guarantees; empty when they all carry one."""
    if len(groups) < 2:
        return ""
    return "Records differ: " + "; ".join(_group_text(g) for g in groups) + "."


def verdict(model: ModelEntry, shards: Sequence[ShardEntry]) -> tuple[Verdict, str]:
    """The model against the budgets of the shards it draws on."""
    if not model.shards:
        return "no events", "No run fed this model: nothing was spent."
    if math.isinf(model.epsilon):
        return "not differentially private", (
            "NOT DIFFERENTIALLY PRIVATE: a run without any privacy guarantee read records this model was trained "
            "on; nothing bounds what the model reveals about them.")
    # its own shards and, where an overlap was allowed, every other shard holding its records (each budget binds):
    # there, what the model's records have spent, not what the shard's other records have
    own = {(s.data_source, s.shard) for s in model.shards}
    reached = {(r.data_source, r.shard): r.epsilon for r in model.record_shards if (r.data_source, r.shard) not in own}
    key = lambda s: (s.data_source, s.shard)  # noqa: E731
    mine = [s for s in shards if key(s) in own or key(s) in reached]
    spent = lambda s: reached.get(key(s), s.spent.epsilon)  # noqa: E731
    label = lambda s: f"{s.data_source}/{s.shard}"  # noqa: E731
    over = [s for s in mine if s.budget_status == "exceeded" and (key(s) in own or spent(s) > s.budget.epsilon)]
    if over:
        return "over budget", "OVER BUDGET: " + "; ".join(
            f"{label(s)} has spent ε = {fmt_eps(spent(s))} of its limit {fmt_set(s.budget.epsilon)}"
            + ("" if key(s) in own else " on the model's records it holds")
            for s in over if s.budget is not None) + "."
    unlimited = [s for s in mine if s.budget is None]  # reached ones too: a run reading its whole shard is held
    if unlimited:                                        # to its own shard's budget only
        return "no budget set", (f"NO BUDGET SET for {', '.join(label(s) for s in unlimited)}: nothing limits further "
                                 "runs on their records.")
    worst = max(mine, key=lambda s: spent(s) / s.budget.epsilon if s.budget and s.budget.epsilon else 0.0)
    assert worst.budget is not None
    share = spent(worst) / worst.budget.epsilon if worst.budget.epsilon else 1.0
    held = "" if key(worst) in own else " on the model's records it holds"
    return "within budget", (
        f"WITHIN BUDGET: every shard it draws on is within its limit. The most used, {label(worst)}, has spent "
        f"ε = {fmt_eps(spent(worst))} of {fmt_set(worst.budget.epsilon)}{held} ({share:.0%}), leaving "
        f"{fmt_remaining(worst.budget.epsilon, fmt_eps(spent(worst)))} of that total for further runs on its records "
        "(runs compose: a further run may spend more than that on its own and still fit).")


def headline(model: ModelEntry, shards: Sequence[ShardEntry]) -> Headline:
    """The first screen for ``model``: one plain sentence, what it bounds, the scale, the verdict."""
    unit = model.units[0] if len(model.units) == 1 else "mixed" if model.units else "record"
    kind, judged = verdict(model, shards)
    eps, delta = model.epsilon, model.delta
    # of the epsilon as printed (rounded up): e^11.85 beside "ε = 11.85", not e^11.840 (review 110)
    factor = odds_factor(float(fmt_eps(eps)) if math.isfinite(eps) else eps)
    who = _WHO.get(unit, "Every unit of privacy (" + ", ".join(model.units) + ") used to train model '{model}'")
    one = _ONE.get(unit, "any one unit of privacy")
    if not model.shards:
        sentence = f"Model '{model.model}' draws on no recorded run."
        meaning = ""
    elif factor is None:
        sentence = (f"Model '{model.model}' is NOT DIFFERENTIALLY PRIVATE: no ε bounds what it reveals about "
                    "the records it was trained on.")
        meaning = (f"A run without any privacy guarantee read its training data: {one} may change what the model "
                   "shows by any amount.")
    else:
        sentence = (f"{who.replace('{model}', model.model)} is protected by differential privacy at "
                    f"ε = {fmt_eps(eps)} and δ = {fmt_delta(delta)}"
                    + (" only if its shards' sizes are taken as public: otherwise the model may reveal whether a "
                       "given record was used." if model.sizes_public else "."))
        noun = "record" if unit == "record" else "user" if unit == "user" else "unit"
        group = (" A person who contributed k records is protected only at k·ε, with δ growing to about "
                 "k·e^((k−1)ε)·δ (group privacy): where one person may hold several records, make them one unit."
                 if unit == "record" else "")
        meaning = (f"What this bounds: adding or removing {one} changes the probability of any outcome computed from "
                   f"the model — any prediction, any conclusion drawn about that {noun} "
                   f"— by at most a factor e^ε ≈ {fmt_factor(factor)} (so an observer's odds that it was "
                   f"used can grow at most that much), plus at most δ = {fmt_delta(delta)} (a small absolute "
                   f"slack).{group}"
                   + (" " + SIZES_PUBLIC if model.sizes_public else ""))
    tier = strength(eps) if model.shards else "n/a"
    scale = f"{SCALE} This model: {tier} (ε = {fmt_eps(eps)})." if model.shards else ""
    return Headline(model=model.model, unit=unit, epsilon=eps, delta=delta, odds_factor=factor,
                    strength=tier, sentence=sentence, meaning=meaning, scale=scale,
                    records_differ=records_differ_text(model.record_distribution), verdict=kind, verdict_text=judged)

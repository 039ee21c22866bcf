"""Build a :class:`PrivacyReport` from a ledger; render it with its ``to_json/to_markdown/to_html``.

The report opens with a headline per model (who is protected, at what, what that bounds, the
verdict against the budget) and any run without a guarantee; the figures behind them follow for
specialists. Sections only a workspace knows (record counts per shard, deletion requests, the
audit log) are passed in as :class:`WorkspaceSections`.

Which delta each figure uses:

* a shard with a budget: the budget's delta (so spent and remaining match enforcement);
  otherwise the ``delta`` argument, else the smallest delta recorded on the shard's events;
* a component (one event): the delta recorded with it at reservation;
* a model: the ``delta`` argument, else the smallest delta recorded on its events.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence

from privacy_accounting.accountants import (NEIGHBOURING_RELATION, AccountantSettings, EpsilonBounds, epsilon_bounds,
                                            prefetch)
from privacy_accounting.budgets import budget_of
from privacy_accounting.composition import (ModelGuarantee, RecordClasses, SharedRecordClasses, group_by_shard,
                                           model_guarantee, record_shards_at, shard_records_bounds)
from privacy_accounting.errors import AccountingError, InvalidParameterError
from privacy_accounting.event_tree import EventTree, compose, sgd
from privacy_accounting.events import (
    describe_event,
    is_non_private,
    sgd_parameters,
    total_steps,
    uses_poisson_sampling,
)
from privacy_accounting.ledger import Ledger
from privacy_accounting.records import AuditRecord, Budget, DataSource, Status, StoredEvent, utc_now
from privacy_accounting.report_models import (
    AuditEntry,
    BudgetEntry,
    ComponentEntry,
    CurvePoint,
    DataSourceEntry,
    Figures,
    ModelEntry,
    ModelShardEntry,
    NonPrivateRun,
    PrivacyReport,
    RecordShardSpend,
    ShardEntry,
    SourceGuarantees,
    WorkspaceSections,
)
from privacy_accounting.report_records import labelled_shard, record_distribution
from privacy_accounting.statement import headline, model_statement, overall_statement, source_guarantee_text
from privacy_accounting.validation import check_delta

__all__ = [
    "build_report",
    "PrivacyReport",
    "AuditEntry",
    "BudgetEntry",
    "ComponentEntry",
    "CurvePoint",
    "DataSourceEntry",
    "Figures",
    "ModelEntry",
    "ModelShardEntry",
    "ShardEntry",
    "WorkspaceSections",
]

ACCOUNTANTS_TEXT = (
    "Epsilon figures are upper bounds: the minimum of RDP (Opacus RDPAccountant), PRV (Opacus PRVAccountant, "
    "upper end of its error interval) and PLD (dp-accounting PLDAccountant, pessimistic discretisation), all "
    "for the add-or-remove-one relation. Opacus's GDP accountant is not used: it is an approximation that can "
    "fall below the true epsilon, hence not a guarantee."
)

NOTES = [
    "A data-source budget bounds each of its shards separately; each record is also checked against the budgets "
    "of every shard whose runs read it. Whether shards hold disjoint records is checked record by record where "
    "runs name their records, and stated per data source under Data.",
    "Events on one shard compose sequentially and are accounted jointly (ComposedDpEvent); adding per-event "
    "epsilons would only be a looser upper bound.",
    "Reserved, completed and failed events all count as spent: a run that failed may already have touched data.",
    "Data sources are accounted separately: a person present in several data sources is protected by the "
    "composition of the corresponding guarantees.",
    "Empirical audits give empirical lower bounds, not guarantees.",
]

NOTICE = (
    "Internal document: do not share it beyond the data owner and the privacy officer. It holds record counts, exact "
    "epsilons, sampling rates and steps (functions of the shards' sizes), file paths and deletion requests, from "
    "which whether one record was used can be inferred; what may leave is a release bundle's statement, which "
    "states only the budget."
)


def build_report(
    ledger: Ledger,
    *,
    delta: float | None = None,
    curve_points: int = 12,
    title: str = "Privacy report",
    workspace: WorkspaceSections | None = None,
    size_public: Callable[[StoredEvent], bool] | None = None,
) -> PrivacyReport:
    """Assemble the report (an empty ledger gives a valid, empty report).

    ``curve_points``: about how many points of the epsilon-versus-steps curve to compute per
    shard (0 disables the curves); curves use a coarse PLD grid (still an upper bound).
    ``workspace``: sections the ledger cannot know (record counts, deletions, the audit log),
    shown as given. ``size_public``: whether an event's mechanism (sampling rate, steps, noise) was set
    from its shard's own size, so that its figure holds only with that size taken as public (the
    standard DP-SGD assumption); such shards and the models drawing on them say so. Default: none.
    """
    if delta is not None:
        delta = check_delta(delta)
    if isinstance(curve_points, bool) or not isinstance(curve_points, int) or curve_points < 0:
        raise InvalidParameterError(f"curve_points must be an integer >= 0, got {curve_points!r}")
    settings = ledger.settings
    events = ledger.events()
    budgets = ledger.budgets()
    sources = {s.name: s for s in ledger.data_sources()}
    audits = ledger.audits()
    by_shard = group_by_shard(events)

    shards = ledger.shards()
    _prefetch(events, shards, by_shard, budgets, delta, curve_points, settings)
    components = [_component_entry(e, settings) for e in events]
    shard_entries = [
        _shard_entry(ds, shard, events, budgets, sources[ds].unit.value, delta, curve_points, settings,
                     ledger.shared_record_classes)
        for ds, shard in shards
    ]
    if size_public is not None:  # over every run the shard's figure composes: its own and those sharing its records
        keys = {f"{ds}/{shard}": [] for ds, shard in by_shard}  # ``shared_with``'s text -> the shards it may name
        for ds, shard in by_shard:
            keys[f"{ds}/{shard}"].append((ds, shard))
        shard_entries = [s.model_copy(update={"size_public": any(
            size_public(e) for key in [(s.data_source, s.shard), *(k for t in s.shared_with for k in keys.get(t, []))]
            for e in by_shard.get(key, []))}) for s in shard_entries]
    if workspace is not None:  # a budget (its data source's) does not apply to records declared public
        public = {(d.data_source, s.shard) for d in workspace.data for s in d.shards if s.public}
        shard_entries = [s.model_copy(update={"budget_status": "declared public", "remaining_epsilon": None})
                         if (s.data_source, s.shard) in public else s for s in shard_entries]
    public_sizes = {(s.data_source, s.shard) for s in shard_entries if s.size_public}
    audit_entries = [_audit_entry(a, events, settings) for a in audits]
    models = ledger.models()
    model_entries = [
        _model_entry(name, comps, events, components, audit_entries, sources, delta, settings, ledger.record_classes,
                     public_sizes, budgets)
        for name, comps in sorted(models.items())
    ]
    guarantees = [_source_guarantees(s, events, budgets, delta, settings, ledger) for s in sources.values()]
    return PrivacyReport(
        title=title,
        generated_at=utc_now(),
        ledger=ledger.location,
        neighbouring_relation=NEIGHBOURING_RELATION + (
            "; for runs planned from their shard's own record count, with that count taken as public"
            if public_sizes else ""),
        accountants=ACCOUNTANTS_TEXT,
        data_sources=[_source_entry(s, budgets, ledger.shards(s.name)) for s in sources.values()],
        shards=shard_entries,
        components=components,
        models=model_entries,
        audits=audit_entries,
        statement=overall_statement(
            shard_entries,
            [m.statement for m in model_entries],
            components,
            audit_entries,
            {c for m in model_entries for c in m.components},
        ),
        notes=list(NOTES),
        notice=NOTICE,
        headlines=[headline(m, shard_entries) for m in model_entries],
        non_private=[_non_private(e, model_entries, guarantees, workspace) for e in events
                     if is_non_private(e.tree)],
        record_guarantees=guarantees,
        workspace=workspace,
    )


def _source_guarantees(source: DataSource, events: Sequence[StoredEvent], budgets: Sequence[Budget],
                       report_delta: float | None, settings: AccountantSettings, ledger: Ledger) -> SourceGuarantees:
    """Per-record guarantees of one data source, at its budget's delta (else the report's, else the
    smallest recorded on its events)."""
    mine = [e for e in events if e.data_source == source.name]
    delta = _delta_of(_find_budget(budgets, source.name, None), report_delta, mine)
    if delta is None:
        return SourceGuarantees(data_source=source.name, delta=None, groups=[], disjointness="no events",
                                text=source_guarantee_text(source.name, "no events", []))
    held = {c for components in ledger.models().values() for c in components}
    live = frozenset(e.seq for e in events if e.component in held)
    found = record_distribution(mine, events, delta, settings, ledger.record_classes, live)
    return SourceGuarantees(data_source=source.name, delta=delta, groups=found.groups,
                            disjointness=found.disjointness, overlaps=found.overlaps,  # type: ignore[arg-type]
                            text=source_guarantee_text(source.name, found.disjointness, found.overlaps))


def _purpose(event: StoredEvent) -> str:
    return event.purpose.value.replace("non_private", "non-private").replace("_", " ")


def _non_private(event: StoredEvent, models: Sequence[ModelEntry], guarantees: Sequence[SourceGuarantees],
                 workspace: WorkspaceSections | None) -> NonPrivateRun:
    """A run without a guarantee: what it fed, whose records it read, whether they were declared public."""
    feeds = sorted(m.model for m in models if event.component in m.components)
    here = (event.data_source, event.shard)
    reads = sorted(m.model for m in models if m.model not in feeds and any(  # labels of a model of several sources
        labelled_shard(s, o.data_source) == here for o in m.overlaps for s in o.shards))  # are in full (review 72)
    public = None
    if workspace is not None:
        public = any(s.public for d in workspace.data if d.data_source == event.data_source
                     for s in d.shards if s.shard == event.shard)
    source = next((g for g in guarantees if g.data_source == event.data_source), None)
    shared = [o for o in (source.overlaps if source else []) if event.shard in o.shards]
    where = f"'{event.data_source}/{event.shard}'"
    parts = [f"NOT DIFFERENTIALLY PRIVATE: component '{event.component}' ({_purpose(event)}, "
             f"{event.status.value}) read {where} without any privacy guarantee (\u03b5 = \u221e)."]
    if public:
        parts.append(f"Its data owner declared {where} public.")
    elif public is False:
        parts.append(f"{where} is NOT declared public: its records have no protection.")
    if shared:
        parts.append("Records it read were also read by runs on " + ", ".join(
            f"{' and '.join(s for s in o.shards if s != event.shard)} ({o.records} record(s))" for o in shared)
            + ": those records have no guarantee.")
    elif event.records_read is not None and source is not None and source.disjointness != "unchecked":
        parts.append("No record it read was read by any other shard's run (checked record by record).")
    if feeds:
        parts.append(f"It feeds model(s) {', '.join(repr(m) for m in feeds)}, which therefore have no guarantee.")
    if reads:
        parts.append(f"It read records that model(s) {', '.join(repr(m) for m in reads)} were trained on, which "
                     "therefore have no guarantee for them.")
    if not feeds and not reads:
        parts.append("It is part of no model in this report.")
    return NonPrivateRun(component=event.component, data_source=event.data_source, shard=event.shard,
                         purpose=event.purpose.value, status=event.status.value, created_at=event.created_at,
                         models=feeds, affects=reads, declared_public=public, text=" ".join(parts))


def _figures(bounds: EpsilonBounds) -> Figures:
    return Figures(
        delta=bounds.delta,
        epsilon=bounds.epsilon,
        accountant=bounds.accountant,
        rdp=bounds.rdp,
        prv=bounds.prv,
        pld=bounds.pld,
        notes=list(bounds.notes),
    )


def _budget_entry(budget: Budget | None) -> BudgetEntry | None:
    if budget is None:
        return None
    return BudgetEntry(epsilon=budget.epsilon, delta=budget.delta, scope=budget.scope)


def _find_budget(budgets: Sequence[Budget], data_source: str, shard: str | None) -> Budget | None:
    return next((b for b in budgets if b.data_source == data_source and b.shard == shard), None)


def _source_entry(source: DataSource, budgets: Sequence[Budget], shards: Sequence[tuple[str, str]]) -> DataSourceEntry:
    return DataSourceEntry(
        data_source=source.name,
        unit=source.unit.value,
        description=source.description,
        budget=_budget_entry(_find_budget(budgets, source.name, None)),
        shards=[s for _, s in shards],
    )


def _sampling(event: EventTree) -> str:
    if is_non_private(event):
        return "n/a"
    return "poisson" if uses_poisson_sampling(event) else "none (full batch)"


def _non_private_steps(event: StoredEvent) -> int | None:
    """A non-private run is one event in the ledger, whatever its steps: those its details state, if any."""
    steps = event.details.get("steps")
    ok = is_non_private(event.tree) and isinstance(steps, int) and not isinstance(steps, bool) and steps > 0
    return steps if ok else None


def _component_entry(event: StoredEvent, settings: AccountantSettings) -> ComponentEntry:
    tree = event.tree
    bounds = epsilon_bounds(tree, event.delta, settings)
    params = sgd_parameters(tree)
    return ComponentEntry(
        reservation_id=event.reservation_id,
        component=event.component,
        data_source=event.data_source,
        shard=event.shard,
        purpose=event.purpose.value,
        status=event.status.value,
        operator=event.operator,
        created_at=event.created_at,
        updated_at=event.updated_at,
        epsilon=bounds.epsilon,
        delta=event.delta,
        accountant=bounds.accountant,
        rdp_epsilon=bounds.rdp,
        prv_epsilon=bounds.prv,
        pld_epsilon=bounds.pld,
        noise_multiplier=None if params is None else params.noise_multiplier,
        sample_rate=None if params is None else params.sample_rate,
        steps=params.steps if params is not None else _non_private_steps(event) or total_steps(tree),
        mechanism=describe_event(tree),
        sampling=_sampling(tree),
        checkpoints_released=event.checkpoints_released,
        failure_reason=event.failure_reason,
        details=event.details,
    )


def _shard_entry(
    data_source: str,
    shard: str,
    every_event: Sequence[StoredEvent],
    budgets: Sequence[Budget],
    unit: str,
    report_delta: float | None,
    curve_points: int,
    settings: AccountantSettings,
    record_classes: SharedRecordClasses | None = None,
) -> ShardEntry:
    events = [e for e in every_event if (e.data_source, e.shard) == (data_source, shard)]
    budget = budget_of(budgets, data_source, shard)
    delta = _delta_of(budget, report_delta, events)
    shared_with: frozenset[tuple[str, str]] = frozenset()
    if delta is None:  # no events, no budget, no report delta: nothing spent
        spent = Figures(delta=None, epsilon=0.0, accountant="none")
    else:
        bounds, shared_with = shard_records_bounds(data_source, shard, every_event, delta, settings, record_classes)
        spent = _figures(bounds)
    remaining = None
    status = "no budget set"
    if budget is not None:
        remaining = max(0.0, budget.epsilon - spent.epsilon) if math.isfinite(spent.epsilon) else 0.0
        status = "within budget" if spent.epsilon <= budget.epsilon else "exceeded"
    curve, curve_name = ([], "")
    if curve_points and events and delta is not None:
        curve, curve_name = _curve([e.tree for e in events], delta, curve_points, settings)
    return ShardEntry(
        data_source=data_source,
        shard=shard,
        unit=unit,
        budget=_budget_entry(budget),
        budget_status=status,
        spent=spent,
        remaining_epsilon=remaining,
        n_events=len(events),
        n_reserved=sum(e.status is Status.RESERVED for e in events),
        n_completed=sum(e.status is Status.COMPLETED for e in events),
        n_failed=sum(e.status is Status.FAILED for e in events),
        components=list(dict.fromkeys(e.component for e in events)),
        curve=curve,
        curve_accountant=curve_name,
        shared_with=[f"{ds}/{other}" for ds, other in sorted(shared_with)],
    )


def _delta_of(budget: Budget | None, report_delta: float | None, events: Sequence[StoredEvent]) -> float | None:
    """The delta of a shard's or data source's figures: its budget's, else the report's, else the smallest of its
    runs'."""
    return budget.delta if budget else report_delta if report_delta is not None else min(
        (e.delta for e in events), default=None)


def _prefetch(events: Sequence[StoredEvent], shards: Sequence[tuple[str, str]],
              by_shard: Mapping[tuple[str, str], Sequence[StoredEvent]], budgets: Sequence[Budget],
              report_delta: float | None, curve_points: int, settings: AccountantSettings) -> None:
    """Name the figures the report asks for first (each run's and each shard's, then the shards' curves, whose
    figures cost least), so that where figures are computed elsewhere they are computed side by side, ahead of its
    asking."""
    figures = [(e.tree, e.delta) for e in events]
    curves = []
    for data_source, shard in shards:
        runs = by_shard.get((data_source, shard), [])
        own = [e.tree for e in runs]
        budget = budget_of(budgets, data_source, shard)
        delta = _delta_of(budget, report_delta, runs)
        if delta is not None and own:
            figures.append((compose(own), delta))
            curves += [(tree, delta) for _, tree in _curve_events(own, curve_points)] if curve_points else []
    prefetch(figures, settings)
    prefetch(curves, _plot_settings(settings))


def _curve(
    events: Sequence[EventTree], delta: float, points: int, settings: AccountantSettings
) -> tuple[list[CurvePoint], str]:
    """Epsilon of the shard's composition against cumulative steps, at ~``points`` step counts."""
    plot_settings = _plot_settings(settings)
    out, others = [CurvePoint(steps=0, epsilon=0.0)], False
    for steps, tree in _curve_events(events, points):
        try:
            epsilon = epsilon_bounds(tree, delta, plot_settings).epsilon
        except AccountingError:  # PLD not run there (``pld_epsilon_limit``): the others' tightest (review 117)
            epsilon, others = epsilon_bounds(tree, delta, settings).epsilon, True
        out.append(CurvePoint(steps=steps, epsilon=epsilon))
    name = f"pld (plotting grid {plot_settings.pld_value_discretization_interval:g}, upper bound)"
    return out, name + ("; where PLD is not run, the tightest of the other accountants" if others else "")


def _plot_settings(settings: AccountantSettings) -> AccountantSettings:
    """The curves' accountant: PLD alone, on a grid no finer than 1e-3 (still an upper bound)."""
    interval = max(settings.pld_value_discretization_interval, 1e-3)
    return dataclasses.replace(settings, pld_value_discretization_interval=interval, accountants=("pld",))


def _curve_events(events: Sequence[EventTree], points: int) -> list[tuple[int, EventTree]]:
    """The curve's points: (cumulative steps, the composition run up to them), about ``points`` of them, spread over
    the events by their steps."""
    steps_per_event = [total_steps(e) for e in events]
    total = max(sum(steps_per_event), 1)
    out: list[tuple[int, EventTree]] = []
    done: list[EventTree] = []
    offset = 0
    for event, n in zip(events, steps_per_event):
        params = sgd_parameters(event)
        ks = [n]
        if params is not None and n > 1:
            share = max(1, round(points * n / total))
            ks = sorted({max(1, round(n * (i + 1) / share)) for i in range(share)})
        for k in ks:
            if params is not None and k < n:
                partial = sgd(params.noise_multiplier, params.sample_rate, k)
            else:
                partial = event
            out.append((offset + k, compose([*done, partial])))
        done.append(event)
        offset += n
    return out


def _audit_entry(audit: AuditRecord, events: Sequence[StoredEvent], settings: AccountantSettings) -> AuditEntry:
    own = [e.tree for e in events if e.component == audit.component]
    accounted = epsilon_bounds(compose(own), audit.delta, settings).epsilon if own else None
    return AuditEntry(
        component=audit.component,
        epsilon_lower_bound=audit.epsilon_lower_bound,
        delta=audit.delta,
        method=audit.method,
        operator=audit.operator,
        created_at=audit.created_at,
        accounted_epsilon=accounted,
        consistent=None if accounted is None else audit.epsilon_lower_bound <= accounted,
        details=audit.details,
    )


def _record_shard_spend(guarantee: ModelGuarantee, budgets: Sequence[Budget],
                        at_delta: Callable[[float], ModelGuarantee]) -> list[RecordShardSpend]:
    """Per shard holding the model's records, what those records have spent, at that shard's budget delta."""
    def delta_of(key: tuple[str, str]) -> float | None:
        budget = budget_of(budgets, *key)
        return budget.delta if budget else None

    return [RecordShardSpend(data_source=source, shard=shard, delta=delta, epsilon=bounds.epsilon)
            for (source, shard), (delta, bounds) in record_shards_at(guarantee, delta_of, at_delta).items()]


def _model_entry(
    name: str,
    components: Sequence[str],
    events: Sequence[StoredEvent],
    component_entries: Sequence[ComponentEntry],
    audits: Sequence[AuditEntry],
    sources: dict[str, DataSource],
    report_delta: float | None,
    settings: AccountantSettings,
    record_classes: RecordClasses | None = None,
    public_sizes: set[tuple[str, str]] = frozenset(),  # type: ignore[assignment]
    budgets: Sequence[Budget] = (),
) -> ModelEntry:
    wanted = set(components)
    mine = [e for e in events if e.component in wanted]
    entries = [c for c in component_entries if c.component in wanted]
    delta = report_delta if report_delta is not None else min((e.delta for e in mine), default=None)
    units = sorted({sources[e.data_source].unit.value for e in mine}) if mine else []
    my_audits = [a for a in audits if a.component in wanted]
    record_shards: list[RecordShardSpend] = []
    if delta is None:
        shards: list[ModelShardEntry] = []
        epsilon, accountant, binding = 0.0, "none", None
    else:
        guarantee = model_guarantee(name, components, events, delta, settings, record_classes)
        shards = [
            ModelShardEntry(
                data_source=s.data_source,
                shard=s.shard,
                components=list(s.components),
                epsilon=s.model_bounds.epsilon,
                accountant=s.model_bounds.accountant,
                shard_total_epsilon=s.shard_total_bounds.epsilon,
                shard_total_accountant=s.shard_total_bounds.accountant,
                record_epsilon=s.record_bounds.epsilon,
                record_accountant=s.record_bounds.accountant,
                n_model_events=s.n_model_events,
                n_shard_events=s.n_shard_events,
            )
            for s in guarantee.shards
        ]
        epsilon, accountant, binding = guarantee.epsilon, guarantee.accountant, guarantee.binding
        record_shards = _record_shard_spend(guarantee, budgets,
                                            lambda at: model_guarantee(name, components, events, at, settings,
                                                                       record_classes))
    found = record_distribution(mine, events, delta, settings, record_classes) if delta is not None else None
    disjointness = found.disjointness if found else "no events"
    overlaps = found.overlaps if found else []
    sizes_public = any(key in public_sizes for key in [*((s.data_source, s.shard) for s in shards),
                                                       *((r.data_source, r.shard) for r in record_shards)])
    return ModelEntry(
        model=name,
        components=list(components),
        delta=delta,
        epsilon=epsilon,
        accountant=accountant,
        binding_data_source=binding[0] if binding else None,
        binding_shard=binding[1] if binding else None,
        units=units,
        checkpoints_released=any(e.checkpoints_released for e in mine),
        shards=shards,
        statement=model_statement(name, epsilon, delta, accountant, shards, units, entries, my_audits,
                                  disjointness, overlaps, sizes_public),
        record_distribution=found.groups if found else [],
        overlaps=overlaps,
        sizes_public=sizes_public,
        record_shards=record_shards,
    )

"""Pydantic models of a privacy report (stable, machine-readable field names).

Infinite epsilons (non-private events) serialise as the JSON string ``"Infinity"``. The
:class:`WorkspaceSections` are plain data that a caller who keeps more than a ledger (a
workspace: record counts, deletion requests, an audit log) passes in; the ledger alone cannot
know them, and this package never reads them itself.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from privacy_accounting.renderers import render

AUDIT_LABEL = "empirical lower bound, not a guarantee"
REPORT_SCHEMA_VERSION = 7  # 4: a deletion's status may be "unsealed"; 5: size_public/sizes_public, releases;
# 6: an open request's models (DeletionEntry.held_by_models) and a release's open requests (pending_deletions);
# 7: whether a model draws on a per-record group now (GuaranteeGroup.in_a_model)


class _Model(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="strings", extra="forbid")


class Figures(_Model):
    """Epsilon upper bounds at ``delta``; ``epsilon`` is the reported (tightest valid) one."""

    delta: float | None
    epsilon: float
    accountant: str
    rdp: float | None = None
    prv: float | None = None
    pld: float | None = None
    notes: list[str] = Field(default_factory=list)


class BudgetEntry(_Model):
    """A budget and where it was set (``shard`` or ``data_source``)."""

    epsilon: float
    delta: float
    scope: Literal["shard", "data_source"]


class DataSourceEntry(_Model):
    data_source: str
    unit: Literal["record", "user"]
    description: str = ""
    budget: BudgetEntry | None = None
    shards: list[str] = Field(default_factory=list)


class CurvePoint(_Model):
    """Epsilon of the shard's composition after ``steps`` elementary steps."""

    steps: int
    epsilon: float


class ShardEntry(_Model):
    """A shard's total spend: the sequential composition of every event ever run on it, or, where runs of other
    shards read some of its records too (``shared_with``: an overlap allowed on purpose), the largest composition of
    every event that read one of its records."""

    data_source: str
    shard: str
    unit: Literal["record", "user"]
    budget: BudgetEntry | None
    #: "declared public": its data owner declared the shard's records public, so no budget applies to it (the
    #: workspace's report says which; a budget inherited from its data source is not held against it).
    budget_status: Literal["no budget set", "within budget", "exceeded", "declared public"]
    spent: Figures
    remaining_epsilon: float | None
    n_events: int
    n_reserved: int
    n_completed: int
    n_failed: int
    components: list[str]
    curve: list[CurvePoint] = Field(default_factory=list)
    curve_accountant: str = ""
    size_public: bool = False  # a run on it was planned from its own size: its figure takes that size as public
    #: "data_source/shard" of every other shard whose runs read some of its records (counted in ``spent``)
    shared_with: list[str] = Field(default_factory=list)


class ComponentEntry(_Model):
    """One ledger event (a component retrained after a deletion appears once per run)."""

    reservation_id: str
    component: str
    data_source: str
    shard: str
    purpose: str
    status: str
    operator: str
    created_at: str
    updated_at: str
    epsilon: float
    delta: float
    accountant: str
    rdp_epsilon: float | None
    prv_epsilon: float | None
    pld_epsilon: float | None
    noise_multiplier: float | None
    sample_rate: float | None
    steps: int
    mechanism: str
    sampling: str
    checkpoints_released: bool
    failure_reason: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class ModelShardEntry(_Model):
    """A shard feeding a model: the model's own events there (``epsilon``), every event on the
    records the model read there (``record_epsilon``: the guarantee), and the shard's all-time total."""

    data_source: str
    shard: str
    components: list[str]
    epsilon: float
    accountant: str
    shard_total_epsilon: float
    shard_total_accountant: str
    n_model_events: int
    n_shard_events: int
    record_epsilon: float
    record_accountant: str


class GuaranteeGroup(_Model):
    """``records`` records whose guarantee is ``epsilon``: the composition of every event that read
    each of them. ``records`` is None where the events named no records (the whole shard is one group)."""

    epsilon: float
    accountant: str
    records: int | None
    shards: list[str]
    #: Whether a registered model draws on these records now (False: every component that read them was removed,
    #: by a deletion or a retraining, or never composed); None where not told apart (a model's own distribution).
    in_a_model: bool | None = None


class ShardOverlap(_Model):
    """``records`` records of ``data_source`` that events on more than one shard read (``shards``:
    ``shard`` or ``source/shard`` for another data source's)."""

    data_source: str
    shards: list[str]
    records: int


class SourceGuarantees(_Model):
    """The per-record guarantees of one data source at ``delta``: how many records sit at which epsilon,
    and whether its shards were checked to be disjoint (``disjointness``: checked, overlap or unchecked)."""

    data_source: str
    delta: float | None
    groups: list[GuaranteeGroup]
    disjointness: Literal["checked", "overlap", "unchecked", "no events"]
    overlaps: list[ShardOverlap] = Field(default_factory=list)
    text: str


class RecordShardSpend(_Model):
    """A shard holding records of a model, and the largest composition, over those records, of every event that read
    them, at the delta of the shard's budget (the report's where it has none): the figure its budget binds them to."""

    data_source: str
    shard: str
    delta: float
    epsilon: float


class ModelEntry(_Model):
    """Per-record guarantee of a composed model: over its records, the largest composition of every
    event that read the record (max over shards; disjoint shards compose in parallel)."""

    model: str
    components: list[str]
    delta: float | None
    epsilon: float
    accountant: str
    binding_data_source: str | None
    binding_shard: str | None
    units: list[str]
    checkpoints_released: bool
    shards: list[ModelShardEntry]
    statement: str
    record_distribution: list[GuaranteeGroup] = Field(default_factory=list)
    overlaps: list[ShardOverlap] = Field(default_factory=list)
    sizes_public: bool = False  # a run on one of its shards was planned from that shard's own size
    #: every shard whose runs read a record of the model: its own and, where an overlap was allowed, others (each of
    #: whose budgets those records must fit), with what the model's records held there have spent
    record_shards: list[RecordShardSpend] = Field(default_factory=list)


Verdict = Literal["within budget", "over budget", "no budget set", "not differentially private", "no events"]


class Headline(_Model):
    """The first screen for one model: who is protected, at what (epsilon, delta), what that bounds,
    and the verdict against the budget, in plain language (the figures are the model entry's)."""

    model: str
    unit: str
    epsilon: float
    delta: float | None
    odds_factor: float | None  # e^epsilon: the most any one unit's presence can multiply the odds of an outcome
    strength: Literal["strong", "reasonable", "weak", "none", "n/a"]
    sentence: str
    meaning: str
    scale: str
    records_differ: str
    verdict: Verdict
    verdict_text: str


class NonPrivateRun(_Model):
    """A ledger event without any differential-privacy guarantee, shown as what it is."""

    component: str
    data_source: str
    shard: str
    purpose: str
    status: str
    created_at: str
    models: list[str]  # the models it feeds
    affects: list[str] = Field(default_factory=list)  # other models whose records it read
    declared_public: bool | None
    text: str


class AuditEntry(_Model):
    """An empirical audit: a lower bound on epsilon, never a guarantee."""

    component: str
    epsilon_lower_bound: float
    delta: float
    method: str
    operator: str
    created_at: str
    label: str = AUDIT_LABEL
    accounted_epsilon: float | None = None
    consistent: bool | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class ShardRecords(_Model):
    """A shard as the workspace knows it: ``records`` is how many records its latest completed run read
    (None: unknown), ``public`` that its data owner declared it public (no private record in it)."""

    data_source: str
    shard: str
    records: int | None = None
    counted_from: str = ""
    public: bool = False


class DataSourceDetails(_Model):
    """What the workspace knows of a data source beyond the ledger: its shards' record counts and
    how it is re-read for retraining (``loader``; empty if it is not)."""

    data_source: str
    loader: str = ""
    shards: list[ShardRecords] = Field(default_factory=list)


class DeletionEntry(_Model):
    """One deletion request and its legal clock (``deadlines``: regime -> last day, UTC)."""

    request_id: str
    received_at: str
    regimes: dict[str, str]
    deadlines: dict[str, str]
    due_by: str
    #: unsealed: the records were deleted but the run stopped before the certificate was sealed with the log's
    #: checkpoint (running the same deletion again seals it)
    status: Literal["open", "completed", "unsealed"]
    outcome: str
    completed_at: str | None = None
    on_time: bool | None = None
    overdue: bool
    days_left: int | None = None
    records: int
    certificate: str
    certificate_href: str
    #: an open request: the models whose components still hold its records (what it has yet to change)
    held_by_models: list[str] = Field(default_factory=list)


class ReleaseEntry(_Model):
    """One release of a model's files out of the workspace (as the audit log recorded it), and the deletion
    requests completed after it that removed records of the released version (its copies are not recalled)."""

    model: str
    released_at: str
    operator: str
    destination: str
    statement_sha256: str | None = None  # of the bundle's release.json: what a recipient checks the bundle by
    epsilon: float | None = None  # the model's per-record figure when released (internal; the bundle states budgets)
    delta: float | None = None
    later_deletions: list[str] = Field(default_factory=list)
    #: open deletion requests whose records a released component still holds: copies sent hold them too
    pending_deletions: list[str] = Field(default_factory=list)


class LogCheckpoint(_Model):
    """A checkpoint of the audit log (the Merkle ``root`` of its first ``size`` entries), where it came
    from, whether the log still extends it, and whether its signature was checked."""

    origin: str
    size: int
    root: str
    source: str
    extends: bool
    problem: str | None = None
    signature: Literal["verified", "not checked", "not signed"] = "not signed"


class AuditLogResult(_Model):
    """The audit log as verified when the report was made."""

    log: str
    verified: bool
    checked_at: str
    entries: int
    head: str | None
    merkle_root: str | None
    artifacts_checked: int
    missing_artifacts: list[str] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)
    checkpoint: LogCheckpoint | None = None


class WorkspaceSections(_Model):
    """Sections only a workspace can fill, passed in as plain data (see the module doc)."""

    workspace: str
    data: list[DataSourceDetails] = Field(default_factory=list)
    deletions: list[DeletionEntry] = Field(default_factory=list)
    audit: AuditLogResult | None = None
    releases: list[ReleaseEntry] = Field(default_factory=list)


class PrivacyReport(_Model):
    """The whole report; render with :meth:`to_json`, :meth:`to_markdown` or :meth:`to_html`."""

    report_schema_version: int = REPORT_SCHEMA_VERSION
    title: str
    generated_at: str
    ledger: str
    neighbouring_relation: str
    accountants: str
    data_sources: list[DataSourceEntry]
    shards: list[ShardEntry]
    components: list[ComponentEntry]
    models: list[ModelEntry]
    audits: list[AuditEntry]
    statement: str
    notes: list[str]
    notice: str = ""
    headlines: list[Headline] = Field(default_factory=list)
    non_private: list[NonPrivateRun] = Field(default_factory=list)
    record_guarantees: list[SourceGuarantees] = Field(default_factory=list)
    workspace: WorkspaceSections | None = None

    def to_json(self, indent: int | None = 2) -> str:
        """Machine-readable JSON (infinite epsilon as ``"Infinity"``)."""
        return self.model_dump_json(indent=indent)

    def to_markdown(self) -> str:
        """Markdown document with the statement and tables."""
        return render(self, "markdown")

    def to_html(self) -> str:
        """Self-contained HTML page (inline CSS, plots as base64 PNG)."""
        return render(self, "html")

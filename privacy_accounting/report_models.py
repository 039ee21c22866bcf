"""Pydantic models of a privacy report (stable, machine-readable field names).

Infinite epsilons (non-private events) serialise as the JSON string ``"Infinity"``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from privacy_accounting.renderers import render

AUDIT_LABEL = "empirical lower bound, not a guarantee"
REPORT_SCHEMA_VERSION = 2


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
    """A shard's total spend: the sequential composition of every event ever run on it."""

    data_source: str
    shard: str
    unit: Literal["record", "user"]
    budget: BudgetEntry | None
    budget_status: Literal["no budget set", "within budget", "exceeded"]
    spent: Figures
    remaining_epsilon: float | None
    n_events: int
    n_reserved: int
    n_completed: int
    n_failed: int
    components: list[str]
    curve: list[CurvePoint] = Field(default_factory=list)
    curve_accountant: str = ""


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

    def to_json(self, indent: int | None = 2) -> str:
        """Machine-readable JSON (infinite epsilon as ``"Infinity"``)."""
        return self.model_dump_json(indent=indent)

    def to_markdown(self) -> str:
        """Markdown document with the statement and tables."""
        return render(self, "markdown")

    def to_html(self) -> str:
        """Self-contained HTML page (inline CSS, plots as base64 PNG)."""
        return render(self, "html")

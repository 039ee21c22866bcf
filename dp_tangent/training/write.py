"""The driver's side of a finished task: the component written atomically, its reservation completed.

Any failure marks the reservation failed by the caller: the budget stays spent, and no component
file appears without a completed reservation.
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING

from privacy_accounting import EpsilonBounds, Ledger, epsilon_bounds
from privacy_accounting.events import is_non_private
from privacy_accounting.figures import fmt_eps

from ..components.component import (NON_PRIVATE_LABEL, RELATION, RELATION_SIZE_PUBLIC, SEEDED_LABEL, ComponentMetadata,
                                    ManifestInfo, PrivacyInfo, TrainingInfo, component_bytes, deltas_digest)
from ..components.manifest import RecordManifest
from ..io import atomic_write_bytes
from .config import TrainingError, differentially_private
from .noise_sources import noise_generator_name
from .plan import TrainingTask

if TYPE_CHECKING:
    from .deltas import TrainedDeltas


@dataclass(frozen=True)
class TrainedComponent:
    path: Path
    metadata: ComponentMetadata
    sha256: str
    reservation_id: str


@dataclass(frozen=True)
class ComponentFile:
    """A finished task's component, not yet written: the file's bytes, its metadata, and the details
    its reservation is completed with."""

    data: bytes
    metadata: ComponentMetadata
    ledger_details: dict[str, object]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def component_file(task: TrainingTask, trained: TrainedDeltas, *, reservation: str, data_source: str, shard: str,
                   output: str | Path, manifest_key: bytes) -> ComponentFile:
    """Check a finished task against its plan and build its component file (see :func:`write_component`)."""
    if trained.steps != task.plan.steps:
        raise TrainingError(f"took {trained.steps} steps but planned {task.plan.steps}")
    bounds = epsilon_bounds(task.plan.event, task.plan.delta)
    if differentially_private(task.privacy, task.config) == is_non_private(task.plan.event):
        raise TrainingError("the task's planned event does not match its privacy and noise mode; "
                            "plan it with plan_task")
    metadata = _metadata(task, trained, bounds, data_source, shard, manifest_key, reservation)
    data = component_bytes(trained.deltas, metadata)
    details = {"artifact": str(output), "sha256": hashlib.sha256(data).hexdigest(),
               "epsilon": metadata.privacy.epsilon, "accountant": bounds.accountant, "worker": trained.worker}
    return ComponentFile(data, metadata, details)


def write_component(task: TrainingTask, trained: TrainedDeltas, *, ledger: Ledger, reservation: str,
                    data_source: str, shard: str, output: str | Path, manifest_key: bytes) -> TrainedComponent:
    """Write the component atomically and complete its reservation (the driver's side of a task
    outside a workspace; a workspace commits both through one change)."""
    output = Path(output)
    built = component_file(task, trained, reservation=reservation, data_source=data_source, shard=shard,
                           output=output, manifest_key=manifest_key)
    atomic_write_bytes(output, built.data)
    try:
        ledger.complete(reservation, details=built.ledger_details)
    except BaseException:
        output.unlink(missing_ok=True)  # no component without a completed reservation
        raise
    return TrainedComponent(output, built.metadata, built.sha256, reservation)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("dp-tangent", "torch", "opacus", "timm", "dp-accounting", "cryptography"):
        try:
            out[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def _metadata(task: TrainingTask, trained: TrainedDeltas, bounds: EpsilonBounds, data_source: str, shard: str,
              manifest_key: bytes, reservation: str) -> ComponentMetadata:
    records, plan, privacy, config, backbone = task.records, task.plan, task.privacy, task.config, task.backbone
    manifest = RecordManifest.build(records.record_ids, manifest_key)
    private = differentially_private(privacy, config)
    noise = ("secure" if private else "seeded") if privacy.private else "none"  # DP-SGD ran iff privacy.private
    relation = RELATION if plan.planned_size is not None else RELATION_SIZE_PUBLIC
    return ComponentMetadata(
        name=task.name,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        base=backbone.to_dict(),
        base_weights_sha256=trained.base_weights_sha256,
        trainable=trained.trainable,
        loss={"kind": config.loss.kind, "kappa": config.loss.kappa, "l2": config.loss.l2},
        data_source=data_source,
        shard=shard,
        manifest=ManifestInfo(scheme=manifest.scheme, key_id=manifest.key_id, root=manifest.root,
                              records=len(manifest), commitments=list(manifest.commitments)),
        privacy=PrivacyInfo(
            private=private,
            label=(f"(epsilon={fmt_eps(bounds.epsilon, 3)}, delta={plan.delta:.3g})-DP for each record of shard "
                   f"{shard!r} ({relation})" if private else
                   SEEDED_LABEL if noise == "seeded" else NON_PRIVATE_LABEL),
            epsilon=bounds.epsilon if private else None,
            delta=plan.delta if private else None,
            accountant=bounds.accountant if private else None,
            epsilon_by_accountant={"rdp": bounds.rdp, "prv": bounds.prv, "pld": bounds.pld} if private else {},
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=privacy.max_grad_norm if privacy.private else None,
            sample_rate=plan.sample_rate,
            steps=plan.steps,
            sampling={"secure": "poisson", "seeded": "poisson (seeded)"}.get(noise, "shuffled batches (non-private)"),
            neighbouring_relation=relation,
            planned_shard_size=plan.planned_size,
            grad_sample_mode=(trained.grad_sample_mode or config.grad_sample_mode) if privacy.private else None,
            noise_generator=noise_generator_name(config) if privacy.private else "none (no noise)",
            secure_mode=private,
            ledger_reservation=reservation,
        ),
        training=TrainingInfo(seed=None if private else config.seed, noise=noise, epochs=config.epochs,
                              batch_size=config.batch_size, physical_batch_size=config.physical_batch_size,
                              optimizer="sgd", lr=config.lr, momentum=config.momentum, l2=config.loss.l2,
                              device=config.device, worker=trained.worker or None),
        versions=_versions(),
        deltas_sha256=deltas_digest(trained.deltas),
    )

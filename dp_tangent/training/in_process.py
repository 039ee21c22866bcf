"""One component trained in this process without a workspace: plan, reserve, train, write.

Executors run the same steps with the training in a worker (see :mod:`dp_tangent.workspace.train`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from privacy_accounting import Ledger

from ..backbones import BackboneSpec
from ..components.manifest import RecordManifest
from ..data.records import RecordSet
from ..errors import logged_reason
from ..tangent import linearize
from . import sgd  # noqa: F401 -- all of training runs here: a broken Opacus fails before anything is reserved
from .config import PrivacySpec, ProgressFn, TrainConfig
from .deltas import train_deltas
from .plan import plan_task, reservation_request
from .validation import check_per_sample_support, validate_task
from .write import TrainedComponent, write_component


def train_component(
    backbone: BackboneSpec,
    trainable: str | None,
    records: RecordSet,
    *,
    ledger: Ledger,
    data_source: str,
    shard: str,
    name: str,
    output: str | Path,
    manifest_key: bytes,
    privacy: PrivacySpec,
    config: TrainConfig = TrainConfig(),
    operator: str | None = None,
    purpose: str = "training",
    progress: ProgressFn | None = None,
    allow_overlap: bool = False,
) -> TrainedComponent:
    """Train one component on ``records`` (one shard) in this process and write it to ``output``.

    Plan, reserve, :func:`train_deltas`, :func:`write_component` (see the module doc); executors
    run the same steps with the middle one in a worker. ``allow_overlap``: see
    :meth:`privacy_accounting.Ledger.reserve_all`.
    """
    task = plan_task(backbone, trainable, records, name=name, shard=shard, privacy=privacy, config=config)
    validate_task(task)
    if privacy.private:
        check_per_sample_support(linearize(backbone.build(), trainable))
    # The records it reads, as the manifest's commitments: the ledger charges exactly those and
    # refuses records another shard already read (no workspace here, so no tombstone list).
    read = frozenset(RecordManifest.build(records.record_ids, manifest_key).commitments)
    reservation = ledger.reserve_all([replace(reservation_request(task, data_source=data_source, shard=shard,
                                                                  operator=operator, purpose=purpose), records=read)],
                                      allow_overlap=allow_overlap)[0]
    try:
        trained = train_deltas(task, progress)
        return write_component(task, trained, ledger=ledger, reservation=reservation, data_source=data_source,
                               shard=shard, output=output, manifest_key=manifest_key)
    except BaseException as err:
        ledger.fail(reservation, reason=logged_reason(err))
        raise

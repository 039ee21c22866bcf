"""What a worker runs: theta0 built, linearized and fit as planned, the trained deltas sent back.

Holds no ledger, key or path: the part of training that touches records, the same in this
process, a local worker process or a Ray node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..backbones import weights_digest
from ..tangent import linearize
from .config import ProgressFn, TrainingError
from .plan import TrainingTask
from .sgd import fit


@dataclass(frozen=True)
class TrainedDeltas:
    """What a worker sends back: the trained deltas (on the CPU) and what they were trained from."""

    name: str
    deltas: dict[str, torch.Tensor]
    steps: int
    trainable: str
    base_weights_sha256: str
    worker: dict[str, object] = field(default_factory=dict)


def train_deltas(task: TrainingTask, progress: ProgressFn | None = None) -> TrainedDeltas:
    """Build theta0, linearize and :func:`fit` as planned; the part of training that touches records."""
    base = task.backbone.build()
    tangent = linearize(base, task.trainable)
    steps = fit(tangent, task.records, task.plan, task.privacy, task.config, progress)
    if steps != task.plan.steps:
        raise TrainingError(f"took {steps} steps but planned {task.plan.steps}")
    deltas = {n: p.detach().cpu().clone() for n, p in tangent.named_deltas()}
    check_finite_deltas(task, deltas)
    return TrainedDeltas(task.name, deltas, steps, tangent.trainable, weights_digest(base))


def check_finite_deltas(task: TrainingTask, deltas: dict[str, torch.Tensor]) -> None:
    """Every trained delta is finite; a NaN or infinite one means training diverged (nothing is kept)."""
    for name, delta in deltas.items():
        bad = int((~torch.isfinite(delta)).sum())
        if bad:
            raise TrainingError(f"training diverged: delta {name!r} has {bad} non-finite values; lower lr "
                                f"(now {task.config.lr:g}) and train again under a new name")

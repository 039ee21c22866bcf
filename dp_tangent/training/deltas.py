"""What a worker runs: theta0 built, linearized and fit as planned, the trained deltas sent back.

Holds no ledger, key or path: the part of training that touches records, the same in this
process, a local worker process or a Ray node.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..backbones import weights_digest
from ..tangent import linearize
from .config import ProgressFn, TrainingError
from .gram_reuse import GramReuse, GramsUsed
from .plan import TrainingTask


@dataclass(frozen=True)
class TrainedDeltas:
    """What a worker sends back: the trained deltas (on the CPU) and what they were trained from."""

    name: str
    deltas: dict[str, torch.Tensor]
    steps: int
    trainable: str
    base_weights_sha256: str
    worker: dict[str, object] = field(default_factory=dict)
    grad_sample_mode: str | None = None  # the mode that ran ("gram" may have fallen back to "ghost")
    grams: GramsUsed | None = None  # the Thetas it computed and reused, when the task asked (task.gram_cache)


def train_deltas(task: TrainingTask, progress: ProgressFn | None = None) -> TrainedDeltas:
    """Build theta0, linearize and :func:`fit` as planned; the part of training that touches records."""
    # here, not above: a driver unpickling the TrainedDeltas a worker sends imports this module, not Opacus
    from .sgd import features_first, fit, resolved_grad_sample_mode

    base = task.backbone.build()
    tangent = linearize(base, task.trainable)
    mode = resolved_grad_sample_mode(tangent, tangent.deltas(), task.records.inputs, task.privacy, task.config,
                                     read_once=features_first(tangent, task.config))
    reuse = None if task.gram_cache is None else GramReuse(task.gram_cache)
    steps = fit(tangent, task.records, task.plan, task.privacy, replace(task.config, grad_sample_mode=mode), progress,
                grams=reuse)
    if steps != task.plan.steps:
        raise TrainingError(f"took {steps} steps but planned {task.plan.steps}")
    deltas = {n: p.detach().cpu().clone() for n, p in tangent.named_deltas()}
    check_finite_deltas(task, deltas)
    return TrainedDeltas(task.name, deltas, steps, tangent.trainable, weights_digest(base), grad_sample_mode=mode,
                         grams=None if reuse is None else reuse.used)


def check_finite_deltas(task: TrainingTask, deltas: dict[str, torch.Tensor]) -> None:
    """Every trained delta is finite; a NaN or infinite one means training diverged (nothing is kept)."""
    for name, delta in deltas.items():
        bad = int((~torch.isfinite(delta)).sum())
        if bad:
            raise TrainingError(f"training diverged: delta {name!r} has {bad} non-finite values; lower lr "
                                f"(now {task.config.lr:g}) and train again under a new name")

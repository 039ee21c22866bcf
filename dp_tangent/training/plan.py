"""Planning a run before any record is read: what it will spend, and the task a worker runs.

Sample rate q = 1/ceil(N/B) (Opacus's Poisson rate for expected batch size B), steps
T = epochs · ceil(N/B), noise multiplier (given, or calibrated for the target epsilon with the
chosen accountant), the default delta and the divisor of the batch mean N·q; the ledger reserves the
planned event PoissonSampled(q, Gaussian(sigma)) composed T times, and refuses it if the shard's budget
would be exceeded. N is the shard size the run is planned for: ``PrivacySpec.planned_shard_size``, a
public figure stated in advance, so that nothing of the mechanism depends on whether one record is in
the shard (add/remove-one DP as accounted); without it, the shard's own count n, which the guarantee
then treats as public (q, T, sigma and the divisor are functions of it, and so are the deltas).
"""

from __future__ import annotations

import getpass
import math
from dataclasses import dataclass

import dp_accounting

from privacy_accounting import ReservationRequest, calibrate_noise_multiplier, dp_sgd_event

from ..backbones import BackboneSpec
from ..data.records import RecordSet
from .config import PrivacySpec, TrainConfig, TrainingError, differentially_private, uses_seed
from .gram_reuse import KnownGrams


@dataclass(frozen=True)
class Plan:
    """What a run will spend, fixed before any data is read."""

    records: int
    delta: float
    sample_rate: float
    steps: int
    noise_multiplier: float
    event: object
    planned_size: int | None = None  # N when stated in advance (public); None: planned from ``records``

    @property
    def size(self) -> int:
        """N, the shard size q, T, sigma, delta and the mean's divisor come from."""
        return self.planned_size if self.planned_size is not None else self.records

    @property
    def expected_batch_size(self) -> int:
        """N·q, the divisor of the batch mean (as Opacus's ``make_private`` takes it: ``int(n * q)``)."""
        return max(1, int(self.size * self.sample_rate))

    @property
    def batches(self) -> int:
        """Poisson batches per epoch, ceil(N/B) = 1/q."""
        return round(1 / self.sample_rate)


def plan_run(n: int, privacy: PrivacySpec, config: TrainConfig) -> Plan:
    """Sample rate, steps, sigma and the DP event of a run on ``n`` records (no data touched).

    A ``noise="seeded"`` run gets its sigma as usual but the event ``NonPrivateDpEvent`` (epsilon =
    infinity): its noise can be recomputed from the public seed, so it protects nobody."""
    config.validate()
    planned = privacy.planned_shard_size
    size = planned if planned is not None else n
    delta = privacy.validate(size)
    if uses_seed(privacy, config) and config.seed is None:
        raise TrainingError("this run draws from config.seed (non-private or noise='seeded'): give an integer seed")
    if not privacy.private:  # no mechanism to keep independent of n: shuffled mini-batches of the records themselves
        batches = math.ceil(n / config.batch_size)
        return Plan(n, delta, 1.0 / batches, config.epochs * batches, 0.0, dp_accounting.NonPrivateDpEvent(),
                    planned)
    batches = math.ceil(size / config.batch_size)
    sample_rate, steps = 1.0 / batches, config.epochs * batches
    sigma = privacy.noise_multiplier or calibrate_noise_multiplier(
        privacy.epsilon, delta, sample_rate, steps, accountant=privacy.accountant)
    if not differentially_private(privacy, config):
        return Plan(n, delta, sample_rate, steps, sigma, dp_accounting.NonPrivateDpEvent(), planned)
    return Plan(n, delta, sample_rate, steps, sigma, dp_sgd_event(sigma, sample_rate, steps), planned)


@dataclass(frozen=True)
class TrainingTask:
    """One component's training, as a value a worker process or a Ray node can run.

    Holds no ledger, key or path: budget is reserved and the component written by the driver.
    ``gram_cache``: Thetas a workspace kept from earlier runs on these records (None: the run keeps
    none and reports none back; see :mod:`.gram_reuse`).
    """

    name: str
    backbone: BackboneSpec
    trainable: str | None
    records: RecordSet
    plan: Plan
    privacy: PrivacySpec
    config: TrainConfig
    gram_cache: KnownGrams | None = None


def reservation_request(task: TrainingTask, *, data_source: str, shard: str, operator: str | None,
                        purpose: str) -> ReservationRequest:
    """The ledger reservation of ``task``'s planned event (the driver makes it before training starts)."""
    private, plan = task.privacy.private, task.plan
    return ReservationRequest(
        data_source=data_source, shard=shard, event=plan.event, delta=plan.delta,
        purpose=purpose if private else "non_private_baseline", operator=operator or getpass.getuser(),
        component=task.name,
        details={"noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate, "steps": plan.steps,
                 "max_grad_norm": task.privacy.max_grad_norm if private else None, "records": plan.records,
                 "planned_shard_size": plan.planned_size,
                 "trainable": task.trainable, "grad_sample_mode": task.config.grad_sample_mode})


def plan_task(backbone: BackboneSpec, trainable: str | None, records: RecordSet, *, name: str, shard: str,
              privacy: PrivacySpec, config: TrainConfig) -> TrainingTask:
    """Validate and plan one component's training (no ledger, no training)."""
    if len(records) == 0:
        raise TrainingError(f"shard {shard!r} has no records")
    return TrainingTask(name, backbone, trainable, records, plan_run(len(records), privacy, config), privacy, config)

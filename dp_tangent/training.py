"""Train a component: the delta of a tangent model on one shard, with DP-SGD done by Opacus.

Order of operations (the privacy contract):

1. validate everything and plan the run: sample rate q = 1/ceil(n/B) (Opacus's Poisson rate for
   expected batch size B), steps T = epochs · ceil(n/B), noise multiplier (given, or calibrated
   for the target epsilon with the chosen accountant);
2. reserve the planned event PoissonSampled(q, Gaussian(sigma)) composed T times in the ledger,
   which refuses it if the shard's budget would be exceeded -- before any record is read;
3. train: frozen-prefix features computed once, then Opacus's ``PrivacyEngine`` (Poisson
   ``DPDataLoader``, per-sample clipping at C, Gaussian noise of std sigma·C on the summed
   gradient, ``BatchMemoryManager`` for physical batches), hooks or ghost clipping;
4. write the component atomically and mark the reservation completed. Any failure, Ctrl-C
   included, marks it failed: the budget stays spent, and no component file appears.

``epsilon = inf`` trains without clipping or noise, for comparison only: the component and the
ledger say NON-PRIVATE, and a shard with a finite budget refuses it.
"""

from __future__ import annotations

import getpass
import math
import platform
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path

import dp_accounting
import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleModuleFastGradientClipping
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch.utils.data import DataLoader, TensorDataset

from privacy_accounting import (EpsilonBounds, Ledger, ReservationRequest, calibrate_noise_multiplier, dp_sgd_event,
                                epsilon_bounds)

from . import opacus_ext  # noqa: F401 -- registers the twins' grad samplers
from .backbones import BackboneSpec, weights_digest
from .component import (NON_PRIVATE_LABEL, ComponentMetadata, ManifestInfo, PrivacyInfo, TrainingInfo,
                        deltas_digest, save_component)
from .data import RecordSet
from .errors import DPTangentError
from .features import precompute_features
from .losses import ConvexLoss
from .manifest import RecordManifest
from .per_sample import check_per_sample_support
from .tangent import TangentModel, linearize

GRAD_SAMPLE_MODES = ("hooks", "ghost")
NOISE_GENERATOR = "torch.Generator (Mersenne Twister, seeded); Opacus secure_mode off: not a CSPRNG"
ProgressFn = Callable[[int, int], None]


class TrainingError(DPTangentError):
    """A training request that cannot run as asked (nothing was spent or written)."""


@dataclass(frozen=True)
class PrivacySpec:
    """Target (epsilon, delta), or an explicit noise multiplier; ``epsilon=inf`` is non-private.

    ``delta=None`` becomes min(1e-5, 0.1/n) for a shard of n records (well below 1/n).
    """

    epsilon: float | None = None
    delta: float | None = None
    noise_multiplier: float | None = None
    max_grad_norm: float = 1.0
    accountant: str = "pld"

    @property
    def private(self) -> bool:
        return not (self.epsilon is not None and math.isinf(self.epsilon))

    def validate(self, n: int) -> float:
        """Checks the request against a shard of ``n`` records; returns the delta to use."""
        if self.private and (self.epsilon is None) == (self.noise_multiplier is None):
            raise TrainingError("give exactly one of epsilon (a target) or noise_multiplier")
        if self.epsilon is not None and not self.epsilon > 0:
            raise TrainingError(f"epsilon must be > 0 (or inf for non-private), got {self.epsilon}")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            raise TrainingError(f"noise_multiplier must be > 0, got {self.noise_multiplier}")
        if not self.max_grad_norm > 0:
            raise TrainingError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        delta = self.delta if self.delta is not None else min(1e-5, 0.1 / n)
        if not 0 < delta < 1:
            raise TrainingError(f"delta must be in (0, 1), got {delta}")
        if self.private and delta >= 1.0 / n:
            raise TrainingError(f"delta {delta:g} >= 1/n = {1.0 / n:g} for a shard of {n} records: "
                                "such a delta allows releasing a record outright; use delta well below 1/n")
        return delta


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64  # expected logical batch size (Poisson)
    physical_batch_size: int = 64
    lr: float = 0.5
    momentum: float = 0.9
    grad_sample_mode: str = "hooks"
    seed: int = 0
    loss: ConvexLoss = field(default_factory=ConvexLoss)
    cache_features: bool = True
    device: str = "cpu"  # "cuda" / "cuda:K" to train on a GPU (deltas come back on the CPU)

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "physical_batch_size"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise TrainingError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise TrainingError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise TrainingError(f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}, got {self.grad_sample_mode!r}")
        try:
            kind = torch.device(self.device).type
        except RuntimeError as err:
            raise TrainingError(f"device must be 'cpu' or 'cuda[:K]', got {self.device!r}") from err
        if kind not in ("cpu", "cuda"):
            raise TrainingError(f"device must be 'cpu' or 'cuda[:K]', got {self.device!r}")


@dataclass(frozen=True)
class Plan:
    """What a run will spend, fixed before any data is read."""

    records: int
    delta: float
    sample_rate: float
    steps: int
    noise_multiplier: float
    event: object


@dataclass(frozen=True)
class TrainedComponent:
    path: Path
    metadata: ComponentMetadata
    sha256: str
    reservation_id: str


def plan_run(n: int, privacy: PrivacySpec, config: TrainConfig) -> Plan:
    """Sample rate, steps, sigma and the DP event of a run on ``n`` records (no data touched)."""
    config.validate()
    delta = privacy.validate(n)
    batches = math.ceil(n / config.batch_size)
    sample_rate, steps = 1.0 / batches, config.epochs * batches
    if not privacy.private:
        return Plan(n, delta, sample_rate, steps, 0.0, dp_accounting.NonPrivateDpEvent())
    sigma = privacy.noise_multiplier or calibrate_noise_multiplier(
        privacy.epsilon, delta, sample_rate, steps, accountant=privacy.accountant)
    return Plan(n, delta, sample_rate, steps, sigma, dp_sgd_event(sigma, sample_rate, steps))


class _Criterion:
    """``ConvexLoss`` with the ``reduction`` switch Opacus's ghost-clipping wrapper expects."""

    def __init__(self, loss: ConvexLoss, reduction: str = "mean") -> None:
        self.loss, self.reduction = loss, reduction

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_sample = self.loss.per_sample(logits, target)
        return {"none": per_sample, "mean": per_sample.mean(), "sum": per_sample.sum()}[self.reduction]


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("dp-tangent", "torch", "opacus", "timm", "dp-accounting"):
        try:
            out[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def _inputs_for(tangent: TangentModel, inputs: torch.Tensor, config: TrainConfig) -> tuple[torch.nn.Module, torch.Tensor]:
    if config.cache_features and tangent.cut is not None:
        return tangent.on_features(), precompute_features(tangent, inputs, batch_size=256)
    return tangent, inputs


def _fit_private(module: torch.nn.Module, params: list[torch.nn.Parameter], dataset: TensorDataset, plan: Plan,
                 privacy: PrivacySpec, config: TrainConfig, progress: ProgressFn | None) -> int:
    """Opacus DP-SGD; returns the number of optimizer steps taken."""
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.loss.l2)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=False)
    # Twins hold theta0 and pretraining statistics in buffers: public, frozen, never updated from
    # this data, so Opacus's buffer check (strict) does not apply.
    if config.grad_sample_mode == "ghost":
        gsm = GradSampleModuleFastGradientClipping(module, batch_first=True, loss_reduction="mean", strict=False,
                                                   max_grad_norm=privacy.max_grad_norm, use_ghost_clipping=True)
    else:
        gsm = GradSampleModule(module, batch_first=True, loss_reduction="mean", strict=False)
    gsm.train()
    criterion = _Criterion(config.loss)
    with warnings.catch_warnings():  # the component's metadata states the generator instead
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant="rdp", secure_mode=False)
        prepared = engine.make_private(
            module=gsm, optimizer=optimizer, criterion=criterion, data_loader=loader,
            noise_multiplier=plan.noise_multiplier, max_grad_norm=privacy.max_grad_norm, poisson_sampling=True,
            grad_sample_mode=config.grad_sample_mode,
            noise_generator=torch.Generator(device=config.device).manual_seed(config.seed + 1))
    if config.grad_sample_mode == "ghost":
        model, dp_optimizer, dp_criterion, dp_loader = prepared
    else:
        (model, dp_optimizer, dp_loader), dp_criterion = prepared, criterion
    if abs(1.0 / len(dp_loader) - plan.sample_rate) > 1e-12:
        raise TrainingError("Opacus's sample rate differs from the planned one")
    steps = 0
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for _ in range(config.epochs):
                with BatchMemoryManager(data_loader=dp_loader, max_physical_batch_size=config.physical_batch_size,
                                        optimizer=dp_optimizer) as physical:
                    for h, y in physical:
                        dp_optimizer.zero_grad(set_to_none=True)
                        dp_criterion(model(h), y).backward()
                        dp_optimizer.step()
                        if not dp_optimizer._is_last_step_skipped:
                            steps += 1
                            if progress:
                                progress(steps, plan.steps)
    finally:
        model._close() if hasattr(model, "_close") else None
        for p in params:
            p.grad, p.grad_sample = None, None
    return steps


def _fit_non_private(module: torch.nn.Module, params: list[torch.nn.Parameter], dataset: TensorDataset, plan: Plan,
                     config: TrainConfig, progress: ProgressFn | None) -> int:
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.loss.l2)
    generator = torch.Generator().manual_seed(config.seed + 1)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=generator)
    module.train()
    steps = 0
    for _ in range(config.epochs):
        for h, y in loader:
            optimizer.zero_grad(set_to_none=True)
            config.loss.per_sample(module(h), y).mean().backward()
            optimizer.step()
            steps += 1
            if progress:
                progress(steps, plan.steps)
    return steps


def run_sgd(module: torch.nn.Module, params: list[torch.nn.Parameter], inputs: torch.Tensor, targets: torch.Tensor,
            plan: Plan, privacy: PrivacySpec, config: TrainConfig, progress: ProgressFn | None = None) -> int:
    """The planned optimisation of ``params`` (of ``module``) on (inputs, targets); returns steps taken.

    Private: Opacus DP-SGD with Poisson sampling at ``plan.sample_rate``, clipping at C and noise
    sigma·C (hooks or ghost clipping); else shuffled mini-batches. Seeded by ``config.seed``. Any
    module whose trainable layers Opacus supports will do (the benchmarks train non-linear
    baselines with it); :func:`fit` calls it on a tangent model.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        dataset = TensorDataset(inputs, targets)
        try:
            if privacy.private:
                return _fit_private(module, params, dataset, plan, privacy, config, progress)
            return _fit_non_private(module, params, dataset, plan, config, progress)
        finally:
            module.train(False)


def fit(tangent: TangentModel, records: RecordSet, plan: Plan, privacy: PrivacySpec, config: TrainConfig,
        progress: ProgressFn | None = None) -> int:
    """Train ``tangent``'s deltas in place on ``records`` as planned; returns optimizer steps.

    Runs on ``config.device`` (the model is moved there); the result depends only on the inputs and
    ``config.seed``, not on the process it runs in, which is what lets executors farm shards out.
    """
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"device {config.device!r} was asked for but this machine has no CUDA GPU")
    if privacy.private:
        check_per_sample_support(tangent)
    tangent.to(config.device)
    try:
        module, inputs = _inputs_for(tangent, records.inputs.to(config.device), config)
        return run_sgd(module, tangent.deltas(), inputs, records.targets.to(config.device), plan, privacy, config,
                       progress)
    finally:
        tangent.train(False)


@dataclass(frozen=True)
class TrainingTask:
    """One component's training, as a value a worker process or a Ray node can run.

    Holds no ledger, key or path: budget is reserved and the component written by the driver.
    """

    name: str
    backbone: BackboneSpec
    trainable: str | None
    records: RecordSet
    plan: Plan
    privacy: PrivacySpec
    config: TrainConfig


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
    return TrainedDeltas(task.name, deltas, steps, tangent.trainable, weights_digest(base))


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
                 "trainable": task.trainable, "grad_sample_mode": task.config.grad_sample_mode})


def plan_task(backbone: BackboneSpec, trainable: str | None, records: RecordSet, *, name: str, shard: str,
              privacy: PrivacySpec, config: TrainConfig) -> TrainingTask:
    """Validate and plan one component's training (no ledger, no training)."""
    if len(records) == 0:
        raise TrainingError(f"shard {shard!r} has no records")
    return TrainingTask(name, backbone, trainable, records, plan_run(len(records), privacy, config), privacy, config)


def write_component(task: TrainingTask, trained: TrainedDeltas, *, ledger: Ledger, reservation: str,
                    data_source: str, shard: str, output: str | Path, manifest_key: bytes) -> TrainedComponent:
    """Write the component atomically and complete its reservation (the driver's side of a task)."""
    output = Path(output)
    if trained.steps != task.plan.steps:
        raise TrainingError(f"took {trained.steps} steps but planned {task.plan.steps}")
    bounds = epsilon_bounds(task.plan.event, task.plan.delta)
    metadata = _metadata(task, trained, bounds, data_source, shard, manifest_key, reservation)
    sha = save_component(output, trained.deltas, metadata)
    try:
        ledger.complete(reservation, details={"artifact": str(output), "sha256": sha,
                                              "epsilon": metadata.privacy.epsilon, "accountant": bounds.accountant,
                                              "worker": trained.worker})
    except BaseException:
        output.unlink(missing_ok=True)  # no component without a completed reservation
        raise
    return TrainedComponent(output, metadata, sha, reservation)


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
) -> TrainedComponent:
    """Train one component on ``records`` (one shard) in this process and write it to ``output``.

    Plan, reserve, :func:`train_deltas`, :func:`write_component` (see the module doc); executors
    run the same steps with the middle one in a worker.
    """
    task = plan_task(backbone, trainable, records, name=name, shard=shard, privacy=privacy, config=config)
    if privacy.private:
        check_per_sample_support(linearize(backbone.build(), trainable))
    reservation = ledger.reserve_all([reservation_request(task, data_source=data_source, shard=shard,
                                                          operator=operator, purpose=purpose)])[0]
    try:
        trained = train_deltas(task, progress)
        return write_component(task, trained, ledger=ledger, reservation=reservation, data_source=data_source,
                               shard=shard, output=output, manifest_key=manifest_key)
    except BaseException as err:
        ledger.fail(reservation, reason=failure_reason(err))
        raise


def failure_reason(err: BaseException) -> str:
    """The one-line reason stored with a failed reservation."""
    return f"{type(err).__name__}: {err}".strip()[:500]


def _metadata(task: TrainingTask, trained: TrainedDeltas, bounds: EpsilonBounds, data_source: str, shard: str,
              manifest_key: bytes, reservation: str) -> ComponentMetadata:
    records, plan, privacy, config, backbone = task.records, task.plan, task.privacy, task.config, task.backbone
    manifest = RecordManifest.build(records.record_ids, manifest_key)
    private = privacy.private
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
            label=(f"(epsilon={bounds.epsilon:.3g}, delta={plan.delta:.3g})-DP for each record of shard "
                   f"{shard!r} (add/remove one record)" if private else NON_PRIVATE_LABEL),
            epsilon=bounds.epsilon if private else None,
            delta=plan.delta if private else None,
            accountant=bounds.accountant if private else None,
            epsilon_by_accountant={"rdp": bounds.rdp, "prv": bounds.prv, "pld": bounds.pld} if private else {},
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=privacy.max_grad_norm if private else None,
            sample_rate=plan.sample_rate,
            steps=plan.steps,
            sampling="poisson" if private else "shuffled batches (non-private)",
            neighbouring_relation="add or remove one record",
            grad_sample_mode=config.grad_sample_mode if private else None,
            noise_generator=NOISE_GENERATOR if private else "none (no noise)",
            secure_mode=False,
            ledger_reservation=reservation,
        ),
        training=TrainingInfo(seed=config.seed, epochs=config.epochs, batch_size=config.batch_size,
                              physical_batch_size=config.physical_batch_size, optimizer="sgd", lr=config.lr,
                              momentum=config.momentum, l2=config.loss.l2, device=config.device,
                              worker=trained.worker or None),
        versions=_versions(),
        deltas_sha256=deltas_digest(trained.deltas),
    )


"""The DP-SGD loop: Opacus's ``PrivacyEngine`` on a tangent model's deltas (or any Opacus-ready module).

Frozen-prefix features are computed once, then Opacus's ``PrivacyEngine`` runs: Poisson
``DPDataLoader``, per-sample clipping at C, Gaussian noise of std sigma·C on the summed gradient,
``BatchMemoryManager`` for physical batches, hooks or ghost clipping.
"""

from __future__ import annotations

import warnings

import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleModuleFastGradientClipping
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch.utils.data import DataLoader, TensorDataset

from ..data.records import RecordSet
from ..tangent import TangentModel
from . import grad_samplers  # noqa: F401 -- registers the twins' grad samplers
from .config import PrivacySpec, ProgressFn, TrainConfig, TrainingError
from .features import precompute_features
from .losses import ConvexLoss
from .per_sample import check_per_sample_support
from .plan import Plan

NOISE_GENERATOR = "torch.Generator (Mersenne Twister, seeded); Opacus secure_mode off: not a CSPRNG"


class _Criterion:
    """``ConvexLoss`` with the ``reduction`` switch Opacus's ghost-clipping wrapper expects."""

    def __init__(self, loss: ConvexLoss, reduction: str = "mean") -> None:
        self.loss, self.reduction = loss, reduction

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_sample = self.loss.per_sample(logits, target)
        return {"none": per_sample, "mean": per_sample.mean(), "sum": per_sample.sum()}[self.reduction]


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

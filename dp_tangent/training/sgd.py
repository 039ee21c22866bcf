"""The DP-SGD loop: Opacus's per-sample machinery on a tangent model's deltas (or any Opacus-ready module).

Frozen-prefix features are computed once, then Opacus's parts run: a ``GradSampleModule`` (hooks)
or ghost clipping's module and loss wrapper, a ``DPOptimizer`` that clips each per-sample gradient
at C and adds Gaussian noise of std sigma·C to the sum, a Poisson data loader (each record joins
each batch with probability q), and ``BatchMemoryManager`` for physical batches. By default
(``noise="secure"``) the noise and the Poisson batches come from :class:`.secure_random.SecureRandom`
(ChaCha20 under a fresh OS key per run); ``noise="seeded"`` uses Opacus's own seeded draws, which
are reproducible and therefore not private.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from opacus import GradSampleModule
from opacus.data_loader import DPDataLoader, dtype_safe, shape_safe, wrap_collate_with_empty
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from opacus.validators import ModuleValidator
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data._utils.collate import default_collate

from ..data.records import RecordSet
from ..tangent import TangentModel
from . import grad_samplers  # noqa: F401 -- registers the twins' grad samplers
from .config import PrivacySpec, ProgressFn, TrainConfig, TrainingError, uses_seed
from .features import precompute_features
from .losses import ConvexLoss
from .per_sample import check_per_sample_support
from .plan import Plan
from .secure_random import GENERATOR_NAME, SecurePoissonSampler, SecureRandom

NOISE_GENERATOR = GENERATOR_NAME  # what private (noise="secure") runs draw from
SEEDED_NOISE_GENERATOR = ("torch.Generator (Mersenne Twister) seeded from the public config.seed, Poisson sampling "
                          "from torch's global generator seeded likewise: reproducible, not a CSPRNG")


def noise_generator_name(config: TrainConfig) -> str:
    """What a private run with ``config`` draws its noise and Poisson batches from."""
    return NOISE_GENERATOR if config.noise == "secure" else SEEDED_NOISE_GENERATOR


class _SecureNoise:
    """Replaces Opacus's ``add_noise``: p.grad = p.summed_grad + N(0, (sigma·C)²) from a SecureRandom.

    Same contract as Opacus's: every ``summed_grad`` is used once (checked, then marked), and the
    noise multiplier may be overridden by ``_adjusted_noise_multiplier`` (adaptive clipping)."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, rng: SecureRandom, **kwargs: object) -> None:
        # Opacus's generator and secure_mode are read only by the add_noise replaced below
        super().__init__(optimizer, generator=None, secure_mode=False, **kwargs)  # type: ignore[call-arg]
        self.rng = rng

    def add_noise(self) -> None:
        params = self.params
        for p in params:
            _check_processed_flag(p.summed_grad)
        sigma = getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier)
        noise = self.rng.noise_like([p.summed_grad for p in params], sigma * self.max_grad_norm)
        for p, n in zip(params, noise):
            p.grad = (p.summed_grad + n).view_as(p)
            _mark_as_processed(p.summed_grad)


class SecureDPOptimizer(_SecureNoise, DPOptimizer):
    """Opacus's ``DPOptimizer`` (per-sample clipping by hooks) with noise from a SecureRandom."""


class SecureDPOptimizerFastGradientClipping(_SecureNoise, DPOptimizerFastGradientClipping):
    """Opacus's ghost-clipping optimizer with noise from a SecureRandom."""


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


def _poisson_loader(dataset: TensorDataset, sample_rate: float, rng: SecureRandom | None) -> DataLoader:
    """Poisson batches at rate q, empty ones included: Opacus's ``DPDataLoader`` (global torch RNG) when
    ``rng`` is None, else the same loader around a :class:`SecurePoissonSampler`."""
    if rng is None:
        return DPDataLoader(dataset, sample_rate=sample_rate)
    first = dataset[0]
    collate = wrap_collate_with_empty(collate_fn=default_collate,
                                      sample_empty_shapes=[(0, *shape_safe(x)) for x in first],
                                      dtypes=[dtype_safe(x) for x in first])
    sampler = SecurePoissonSampler(num_samples=len(dataset), sample_rate=sample_rate, rng=rng)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)


def _dp_optimizer(optimizer: torch.optim.Optimizer, noise_multiplier: float, privacy: PrivacySpec,
                  config: TrainConfig, expected_batch_size: int, rng: SecureRandom | None) -> DPOptimizer:
    """Opacus's optimizer for the grad-sample mode; its noise from ``rng``, or seeded (``rng`` None)."""
    ghost = config.grad_sample_mode == "ghost"
    kwargs = {"noise_multiplier": noise_multiplier, "max_grad_norm": privacy.max_grad_norm,
              "expected_batch_size": expected_batch_size, "loss_reduction": "mean"}
    if rng is not None:
        cls = SecureDPOptimizerFastGradientClipping if ghost else SecureDPOptimizer
        return cls(optimizer, rng=rng, **kwargs)
    generator = torch.Generator(device=config.device).manual_seed(config.seed + 1)
    return (DPOptimizerFastGradientClipping if ghost else DPOptimizer)(optimizer, generator=generator, **kwargs)


def dp_parts(module: torch.nn.Module, params: list[torch.nn.Parameter], noise_multiplier: float,
             privacy: PrivacySpec, config: TrainConfig, expected_batch_size: int,
             rng: SecureRandom | None) -> tuple[torch.nn.Module, DPOptimizer, Callable]:
    """What a private run trains with: Opacus's per-sample module (hooks, or ghost clipping), a DP
    optimizer over ``params`` (clip at C, noise sigma·C from ``rng``, or seeded when ``rng`` is None,
    SGD with the config's lr, momentum and l2) and the loss to call on the module's output."""
    # Twins hold theta0 and pretraining statistics in buffers: public, frozen, never updated from
    # this data, so Opacus's buffer check (strict) does not apply.
    if config.grad_sample_mode == "ghost":
        gsm = GradSampleModuleFastGradientClipping(module, batch_first=True, loss_reduction="mean", strict=False,
                                                   max_grad_norm=privacy.max_grad_norm, use_ghost_clipping=True)
    else:
        gsm = GradSampleModule(module, batch_first=True, loss_reduction="mean", strict=False)
    ModuleValidator.validate(gsm, strict=True)  # what PrivacyEngine.make_private checks
    gsm.train()
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.loss.l2)
    dp_optimizer = _dp_optimizer(optimizer, noise_multiplier, privacy, config, expected_batch_size, rng)
    criterion = _Criterion(config.loss)
    if config.grad_sample_mode == "ghost":
        return gsm, dp_optimizer, DPLossFastGradientClipping(gsm, dp_optimizer, criterion, "mean")
    return gsm, dp_optimizer, criterion


def _fit_private(module: torch.nn.Module, params: list[torch.nn.Parameter], dataset: TensorDataset, plan: Plan,
                 privacy: PrivacySpec, config: TrainConfig, progress: ProgressFn | None) -> int:
    """Opacus DP-SGD; returns the number of optimizer steps taken."""
    rng = SecureRandom() if config.noise == "secure" else None
    loader = _poisson_loader(dataset, plan.sample_rate, rng)
    if abs(1.0 / len(loader) - plan.sample_rate) > 1e-12:
        raise TrainingError("the Poisson loader's sample rate differs from the planned one")
    # as Opacus's make_private: the "mean" of a Poisson batch divides by the expected size n·q
    expected_batch_size = int(len(dataset) * (1 / len(loader)))
    gsm, dp_optimizer, criterion = dp_parts(module, params, plan.noise_multiplier, privacy, config,
                                            expected_batch_size, rng)
    gsm.forbid_grad_accumulation()  # Poisson sampling: one logical batch per step
    steps = 0
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for _ in range(config.epochs):
                with BatchMemoryManager(data_loader=loader, max_physical_batch_size=config.physical_batch_size,
                                        optimizer=dp_optimizer) as physical:
                    for h, y in physical:
                        dp_optimizer.zero_grad(set_to_none=True)
                        criterion(gsm(h), y).backward()
                        dp_optimizer.step()
                        if not dp_optimizer._is_last_step_skipped:
                            steps += 1
                            if progress:
                                progress(steps, plan.steps)
    finally:
        if hasattr(gsm, "_close"):
            gsm._close()
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
    sigma·C (hooks or ghost clipping), noise and batches from a fresh :class:`SecureRandom`
    (``noise="secure"``) or from ``config.seed`` (``noise="seeded"``); else shuffled mini-batches
    seeded by ``config.seed``. Any module whose trainable layers Opacus supports will do (the
    benchmarks train non-linear baselines with it); :func:`fit` calls it on a tangent model.
    """
    with torch.random.fork_rng(devices=[]):
        if uses_seed(privacy, config):
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

    Runs on ``config.device`` (the model is moved there). A secure private run draws fresh noise
    every time; any other run depends only on the inputs and ``config.seed``, not on the process
    it runs in.
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
